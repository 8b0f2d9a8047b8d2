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
//! (a check fails as `bitmap` if a job moved it).
//!
//! Across a restart (`persist` below): after a clean `shutdown`, a persistent bitmap must come
//! back with the very bits it had (the same SHA-256) and keeps its shadow; every other bitmap
//! must be gone. After a crash, a persistent bitmap that the image held (it came through a
//! clean restart) must be back inconsistent, one never stored must be gone, and no shadow is
//! kept (an inconsistent bitmap cannot be checked: a scenario removes it through QMP).

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
    /// Added with persistent=true.
    persistent: bool,
    /// Stored in the image by a clean shutdown (so a crash leaves it there, in use).
    in_image: bool,
    /// Its SHA-256 at the last clean shutdown.
    sha: Option<String>,
}

/// Every watched bitmap, by name.
#[derive(Default)]
pub(super) struct BitmapOracle {
    shadows: BTreeMap<String, Shadow>,
    /// The engine was stopped by `shutdown` (not a crash) since the last start.
    clean_stop: bool,
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
                persistent,
            } => {
                let opts = (*granularity, *disabled, *persistent);
                self.bitmap_add(line, device, name, opts).await
            }
            BitmapStep::Enable(name) => self.bitmap_recording(line, name, true).await,
            BitmapStep::Disable(name) => self.bitmap_recording(line, name, false).await,
            BitmapStep::Clear(name) => self.bitmap_clear(line, name).await,
            BitmapStep::Remove(name) => self.bitmap_remove(line, name).await,
            BitmapStep::Merge { target, sources } => self.bitmap_merge(line, target, sources).await,
            BitmapStep::Check(names) => self.bitmap_check(line, names),
        }
    }

    /// `restart`: no bitmap is watched any more (the devices stop logging their writes).
    fn forget_bitmaps(&mut self) {
        self.bitmaps.shadows.clear();
        for dev in self.devices.values() {
            let mut m = dev.model.borrow_mut();
            m.track_submitted = false;
            m.take_submitted();
        }
    }

    /// Before a clean `shutdown`: the persistent bitmaps are about to be stored; note their
    /// hashes for the restart.
    pub(super) fn bitmaps_before_shutdown(&mut self) {
        self.absorb_writes();
        for (name, s) in self.bitmaps.shadows.iter_mut() {
            let b = self
                .engine
                .node(&s.node)
                .ok()
                .and_then(|n| n.bitmaps().find(name));
            if let (true, Some(b)) = (s.persistent, b) {
                s.sha = Some(b.sha256_hex());
                s.in_image = true;
            }
        }
        self.bitmaps.clean_stop = true;
    }

    /// A power loss: whatever the last stop was, this one is not clean.
    pub(super) fn bitmaps_at_power_loss(&mut self) {
        self.absorb_writes();
        self.bitmaps.clean_stop = false;
    }

    /// After `restart` reopened the images: judge every watched bitmap (see the module doc).
    pub(super) fn bitmaps_after_restart(&mut self, line: usize) -> Result<(), Failure> {
        let clean = std::mem::take(&mut self.bitmaps.clean_stop);
        let mut notes = Vec::new();
        for (name, s) in &self.bitmaps.shadows {
            let b = self
                .engine
                .node(&s.node)
                .ok()
                .and_then(|n| n.bitmaps().find(name));
            let verdict = match (b, clean, s.persistent) {
                (None, true, true) => Err("is gone after a clean restart".to_string()),
                (Some(b), true, true) if b.inconsistent() => {
                    Err("is inconsistent after a clean restart".to_string())
                }
                (Some(b), true, true) => match &s.sha {
                    Some(sha) if *sha == b.sha256_hex() => Ok("kept, same sha256"),
                    _ => Err(format!("came back with other bits ({})", b.sha256_hex())),
                },
                (Some(_), _, false) => Err("outlived the engine, not persistent".to_string()),
                (None, _, false) => Ok("gone (not persistent)"),
                (None, false, true) if !s.in_image => Ok("gone (never stored)"),
                (None, false, true) => Err("is gone after a crash".to_string()),
                // Not only a clean shutdown stores it: a switch to read-only does too.
                (Some(b), false, true) if b.inconsistent() => {
                    Ok("inconsistent (in use at the crash)")
                }
                (Some(_), false, true) => Err("came back consistent after a crash".to_string()),
            };
            match verdict {
                Ok(v) => notes.push(format!("restart: bitmap {name} {v}")),
                Err(e) => return Err(fail("bitmap", line, format!("bitmap '{name}' {e}"))),
            }
        }
        for n in notes {
            self.note(&n);
        }
        // A restart, clean or not, ends every bitmap that was not persistent; a persistent one
        // never stored is gone too. Only those the engine still has stay watched.
        let engine = self.engine.clone();
        self.bitmaps.shadows.retain(|name, s| {
            s.persistent
                && engine
                    .node(&s.node)
                    .ok()
                    .and_then(|n| n.bitmaps().find(name))
                    .is_some()
        });
        if self.bitmaps.shadows.is_empty() {
            self.forget_bitmaps();
        }
        Ok(())
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

    /// `bitmap add`; `opts`: granularity, disabled, persistent.
    async fn bitmap_add(
        &mut self,
        line: usize,
        device: &str,
        name: &str,
        opts: (Option<u64>, bool, bool),
    ) -> Result<(), Failure> {
        let (granularity, disabled, persistent) = opts;
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
        if persistent {
            args["persistent"] = json!(true);
        }
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
            persistent,
            in_image: false,
            sha: None,
        };
        self.bitmaps.shadows.insert(name.to_string(), shadow);
        self.note(&format!(
            "bitmap add {name} on node {node}: granularity {}{}{}",
            b.granularity(),
            if disabled { ", disabled" } else { "" },
            if persistent { ", persistent" } else { "" }
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
