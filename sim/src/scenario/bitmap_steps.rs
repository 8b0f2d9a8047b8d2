//! `bitmap` steps: named dirty bitmaps on a device's node through QMP, judged by an oracle that
//! lives here, outside the engine.
//!
//! The oracle keeps, per bitmap, the granules it must hold: those of every guest write the
//! device started since the bitmap was created (or last cleared) while it was recording, from
//! the device model's log of started writes. Writes are taken into account at each `bitmap`
//! step, so a scenario changes a bitmap's state only while no guest write is in flight (the
//! swarm issues bitmap steps between rounds, after stopping the workload). Checks:
//! * `check`: every granule the oracle holds is dirty in the engine's bitmap (more may be:
//!   jobs and copy-on-read write to the node too, and a write marks whole granules);
//! * `add`: the new bitmap is empty, with the granularity asked for;
//! * `clear`: the bitmap is empty right after;
//! * `merge`: the target is exactly the union of its bits and the sources' before the merge,
//!   the sources' granules mapped onto the target's granularity here, not by the engine;
//! * `remove`: the bitmap is gone.
//!
//! A bitmap is on the node the device writes to when it is added; the device must stay there
//! (a check fails as `bitmap` if a job moved it). Bitmaps are not persistent: `restart` forgets
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use engine::bitmap::Bitmap;
use engine::qmp;
use serde_json::{Value, json};

use super::outcome::{Failure, fail};
use super::syntax::BitmapStep;
use super::world::World;

/// What one watched bitmap must hold.
struct Shadow {
    device: String,
    node: String,
    granularity: u64,
    recording: bool,
    /// Granules written while recording (since creation or the last clear).
    must: BTreeSet<u64>,
}

/// Every watched bitmap, by name.
#[derive(Default)]
pub(super) struct BitmapOracle {
    shadows: BTreeMap<String, Shadow>,
}

/// Granules of `granularity` bytes that `[offset, offset + len)` touches.
fn granules(offset: u64, len: u64, granularity: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / granularity..(offset + len).div_ceil(granularity)
}

/// The dirty granules of an engine bitmap.
fn dirty_set(b: &Bitmap) -> BTreeSet<u64> {
    let bits = b.bits();
    let mut out = BTreeSet::new();
    let mut at = 0;
    while let Some(g) = bits.next_dirty(at) {
        out.insert(g);
        at = g + 1;
    }
    out
}

/// `set` (granules of `from` bytes) mapped onto granules of `to` bytes, clipped to `len`.
fn regrain(set: &BTreeSet<u64>, from: u64, to: u64, len: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for &g in set {
        let start = g * from;
        let end = ((g + 1) * from).min(len);
        out.extend(granules(start, end.saturating_sub(start), to));
    }
    out
}

impl World<'_> {
    /// One `bitmap` step.
    pub(super) async fn bitmap_step(
        &mut self,
        line: usize,
        step: &BitmapStep,
    ) -> Result<(), Failure> {
        self.absorb_writes();
        match step {
            BitmapStep::Add {
                device,
                name,
                granularity,
                disabled,
            } => {
                self.bitmap_add(line, device, name, *granularity, *disabled)
                    .await
            }
            BitmapStep::Enable(name) => self.bitmap_recording(line, name, true).await,
            BitmapStep::Disable(name) => self.bitmap_recording(line, name, false).await,
            BitmapStep::Clear(name) => self.bitmap_clear(line, name).await,
            BitmapStep::Remove(name) => self.bitmap_remove(line, name).await,
            BitmapStep::Merge { target, sources } => self.bitmap_merge(line, target, sources).await,
            BitmapStep::Check(names) => self.bitmap_check(line, names),
        }
    }

    /// `restart`: the bitmaps died with the engine.
    pub(super) fn forget_bitmaps(&mut self) {
        self.bitmaps.shadows.clear();
        for dev in self.devices.values() {
            let mut m = dev.model.borrow_mut();
            m.track_submitted = false;
            m.take_submitted();
        }
    }

    /// Fold the writes the devices started since the last step into the recording shadows.
    fn absorb_writes(&mut self) {
        for (name, dev) in &self.devices {
            let writes = dev.model.borrow_mut().take_submitted();
            for s in self.bitmaps.shadows.values_mut() {
                if s.device == *name && s.recording {
                    for &(offset, len) in &writes {
                        s.must.extend(granules(offset, len, s.granularity));
                    }
                }
            }
        }
    }

    /// Run a bitmap QMP command; an error reply fails the step.
    async fn bitmap_qmp(&mut self, line: usize, execute: &str, args: Value) -> Result<(), Failure> {
        let cmd = json!({"execute": execute, "arguments": args});
        let reply = qmp::execute(&self.engine, &cmd).await;
        self.collect_events();
        if let Some(e) = reply.get("error") {
            return Err(fail("bitmap", line, format!("{execute} failed: {e}")));
        }
        Ok(())
    }

    /// The watched bitmap `name` and its engine bitmap (the device must still be on its node).
    fn watched(&self, line: usize, name: &str) -> Result<(&Shadow, Rc<Bitmap>), Failure> {
        let s = self
            .bitmaps
            .shadows
            .get(name)
            .ok_or_else(|| fail("setup", line, format!("no bitmap '{name}' was added")))?;
        let root = self
            .engine
            .backend(&s.device)
            .ok()
            .and_then(|bb| bb.root_node())
            .map(|n| n.name().to_string());
        if root.as_deref() != Some(s.node.as_str()) {
            let msg = format!(
                "device '{}' left node '{}' (now {root:?})",
                s.device, s.node
            );
            return Err(fail("bitmap", line, msg));
        }
        let b = self
            .engine
            .node(&s.node)
            .ok()
            .and_then(|n| n.bitmaps().find(name));
        let b = b.ok_or_else(|| fail("bitmap", line, format!("bitmap '{name}' is gone")))?;
        Ok((s, b))
    }

    async fn bitmap_add(
        &mut self,
        line: usize,
        device: &str,
        name: &str,
        granularity: Option<u64>,
        disabled: bool,
    ) -> Result<(), Failure> {
        let node = match (self.engine.backend(device), self.devices.get(device)) {
            (Ok(bb), Some(dev)) => {
                dev.model.borrow_mut().track_submitted = true;
                bb.root_node().map(|n| n.name().to_string())
            }
            _ => None,
        };
        let node =
            node.ok_or_else(|| fail("setup", line, format!("no device '{device}' with a node")))?;
        let mut args = json!({"node": node, "name": name, "disabled": disabled});
        if let Some(g) = granularity {
            args["granularity"] = json!(g);
        }
        self.bitmap_qmp(line, "block-dirty-bitmap-add", args)
            .await?;
        let b = self
            .engine
            .node(&node)
            .ok()
            .and_then(|n| n.bitmaps().find(name));
        let b = b.ok_or_else(|| fail("bitmap", line, format!("bitmap '{name}' was not added")))?;
        if b.count() != 0 || granularity.is_some_and(|g| g != b.granularity()) {
            let msg = format!(
                "new bitmap '{name}': count {}, granularity {}",
                b.count(),
                b.granularity()
            );
            return Err(fail("bitmap", line, msg));
        }
        let shadow = Shadow {
            device: device.to_string(),
            node: node.clone(),
            granularity: b.granularity(),
            recording: !disabled,
            must: BTreeSet::new(),
        };
        self.bitmaps.shadows.insert(name.to_string(), shadow);
        self.note(&format!(
            "bitmap add {name} on node {node}: granularity {}{}",
            b.granularity(),
            if disabled { ", disabled" } else { "" }
        ));
        Ok(())
    }

    async fn bitmap_recording(&mut self, line: usize, name: &str, on: bool) -> Result<(), Failure> {
        let node = self.watched(line, name)?.0.node.clone();
        let verb = if on { "enable" } else { "disable" };
        let cmd = format!("block-dirty-bitmap-{verb}");
        self.bitmap_qmp(line, &cmd, json!({"node": node, "name": name}))
            .await?;
        if let Some(s) = self.bitmaps.shadows.get_mut(name) {
            s.recording = on;
        }
        self.note(&format!("bitmap {verb} {name}"));
        Ok(())
    }

    async fn bitmap_clear(&mut self, line: usize, name: &str) -> Result<(), Failure> {
        let node = self.watched(line, name)?.0.node.clone();
        self.bitmap_qmp(
            line,
            "block-dirty-bitmap-clear",
            json!({"node": node, "name": name}),
        )
        .await?;
        let (_, b) = self.watched(line, name)?;
        if b.count() != 0 {
            let msg = format!("bitmap '{name}' holds {} bytes after clear", b.count());
            return Err(fail("bitmap", line, msg));
        }
        if let Some(s) = self.bitmaps.shadows.get_mut(name) {
            s.must.clear();
        }
        self.note(&format!("bitmap clear {name}: empty"));
        Ok(())
    }

    async fn bitmap_remove(&mut self, line: usize, name: &str) -> Result<(), Failure> {
        let node = self.watched(line, name)?.0.node.clone();
        self.bitmap_qmp(
            line,
            "block-dirty-bitmap-remove",
            json!({"node": node, "name": name}),
        )
        .await?;
        if self
            .engine
            .node(&node)
            .ok()
            .and_then(|n| n.bitmaps().find(name))
            .is_some()
        {
            return Err(fail(
                "bitmap",
                line,
                format!("bitmap '{name}' still there after remove"),
            ));
        }
        self.bitmaps.shadows.remove(name);
        self.note(&format!("bitmap remove {name}"));
        Ok(())
    }

    async fn bitmap_merge(
        &mut self,
        line: usize,
        target: &str,
        sources: &[String],
    ) -> Result<(), Failure> {
        let (t, tb) = self.watched(line, target)?;
        let (node, gran, len) = (t.node.clone(), t.granularity, tb.len());
        let mut want = dirty_set(&tb);
        let mut must = BTreeSet::new();
        let mut refs = Vec::new();
        for src in sources {
            let (s, sb) = self.watched(line, src)?;
            want.extend(regrain(&dirty_set(&sb), s.granularity, gran, len));
            must.extend(regrain(&s.must, s.granularity, gran, len));
            refs.push(json!({"node": s.node, "name": src}));
        }
        let args = json!({"node": node, "target": target, "bitmaps": refs});
        self.bitmap_qmp(line, "block-dirty-bitmap-merge", args)
            .await?;
        let (_, tb) = self.watched(line, target)?;
        let got = dirty_set(&tb);
        if got != want {
            let extra = got.difference(&want).next();
            let missing = want.difference(&got).next();
            let msg = format!(
                "merge into '{target}' is not the union: first extra granule {extra:?}, first \
                 missing {missing:?}"
            );
            return Err(fail("bitmap", line, msg));
        }
        if let Some(s) = self.bitmaps.shadows.get_mut(target) {
            s.must.extend(must);
        }
        self.note(&format!(
            "bitmap merge {target} <- {}: union, {} granules dirty",
            sources.join(" "),
            got.len()
        ));
        Ok(())
    }

    fn bitmap_check(&mut self, line: usize, names: &[String]) -> Result<(), Failure> {
        let names: Vec<String> = if names.is_empty() {
            self.bitmaps.shadows.keys().cloned().collect()
        } else {
            names.to_vec()
        };
        for name in &names {
            let (s, b) = self.watched(line, name)?;
            let bits = b.bits();
            if let Some(g) = s.must.iter().find(|&&g| !bits.get(g)) {
                let msg = format!(
                    "bitmap '{name}': granule {g} (offset {}) was written while it recorded, \
                     but is clean",
                    g * s.granularity
                );
                return Err(fail("bitmap", line, msg));
            }
            let text = format!(
                "bitmap check {name}: ok ({} granules written, {} dirty)",
                s.must.len(),
                b.bits().count()
            );
            drop(bits);
            self.note(&text);
        }
        Ok(())
    }
}
