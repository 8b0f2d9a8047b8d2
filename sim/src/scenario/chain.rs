//! Runner support for jobs that change backing chains (stream, commit): `device del`, `model
//! DEV fill` (declaring content put into lower layers through other devices), `check NODE`
//! (the qcow2 consistency check, as `qemu-img check` would judge the image), and keeping the
//! recorded `blockdev-add` commands in step with the graph so that `restart` reopens the chain
//! the graph points to.
//!
//! Why the last one: a `blockdev-add` that names its backing node explicitly
//! (`"backing": "mid"`) overrides the backing file recorded in the image header. After a stream
//! or commit dropped `mid` from the chain, replaying that command verbatim would put `mid` back.
//! Before a restart, every recorded `blockdev-add` whose `backing` is a node reference is
//! rewritten to the node's backing child as the graph has it at the crash (a job's filter is
//! looked through). Both possible chains hold the same guest data at every crash point (the jobs
//! make the copied data durable before they change header or graph), and this is the one the
//! graph points to. Inline backing objects are left as they are.

use serde_json::Value;

use super::model::{SECTOR, WriteData};
use super::outcome::{Failure, fail};
use super::world::{Setup, World};

impl World<'_> {
    /// `device del NAME`.
    pub(super) async fn device_del(&mut self, line: usize, name: &str) -> Result<(), Failure> {
        self.engine
            .device_del(name)
            .await
            .map_err(|e| fail("setup", line, e.to_string()))?;
        self.devices.remove(name);
        self.setup.push(Setup::DeviceDel(name.to_string()));
        self.note(&format!("device del {name}"));
        Ok(())
    }

    /// `model DEV fill PATTERN OFFSET LEN`: the model takes the content as durable.
    pub(super) fn model_fill(
        &mut self,
        line: usize,
        device: &str,
        pattern: u8,
        offset: u64,
        len: u64,
    ) -> Result<(), Failure> {
        let dev = self
            .devices
            .get(device)
            .ok_or_else(|| fail("setup", line, format!("no device '{device}'")))?;
        debug_assert!(offset.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR));
        let mut model = dev.model.borrow_mut();
        let ticket = model.begin_write(offset, len, &WriteData::Fill(pattern));
        if model.track_submitted {
            model.unsubmit_last();
        }
        model.complete_write(ticket, true);
        let start = model.flush_start();
        model.flush_done(start);
        drop(model);
        self.note(&format!(
            "model {device}: 0x{pattern:02x} at {offset}+{len}"
        ));
        Ok(())
    }

    /// `model DEV snapshot NAME`: keep the device's model as it is now, for a later
    /// `verify OTHER snapshot=NAME` (what a backup started now must hold when it is done).
    pub(super) fn model_snapshot(
        &mut self,
        line: usize,
        device: &str,
        name: &str,
    ) -> Result<(), Failure> {
        let dev = self
            .devices
            .get(device)
            .ok_or_else(|| fail("setup", line, format!("no device '{device}'")))?;
        let model = dev.model.borrow().clone();
        self.snapshots
            .insert(name.to_string(), std::cell::RefCell::new(model));
        self.note(&format!("model {device}: snapshot {name}"));
        Ok(())
    }

    /// `check NODE`: corruptions or check errors fail the run (check `image-check`).
    pub(super) async fn check_image(&mut self, line: usize, node: &str) -> Result<(), Failure> {
        let n = self
            .engine
            .node(node)
            .map_err(|e| fail("setup", line, e.to_string()))?;
        let r = engine::drivers::qcow2::check_node(&n, None)
            .await
            .map_err(|e| {
                fail(
                    "image-check",
                    line,
                    format!("check of '{node}' failed: {e}"),
                )
            })?;
        self.note(&format!(
            "check {node}: {} corruptions, {} leaks, {} check errors",
            r.corruptions, r.leaks, r.check_errors
        ));
        if r.corruptions > 0 || r.check_errors > 0 {
            return Err(fail(
                "image-check",
                line,
                format!("'{node}' is not consistent: {}", r.messages.join(" / ")),
            ));
        }
        Ok(())
    }

    /// Rewrite recorded `blockdev-add` backing references to the graph's current chains;
    /// `announce`: note each change in the transcript (at a restart).
    pub(super) fn follow_chains(&mut self, announce: bool) {
        let mut notes = Vec::new();
        for s in &mut self.setup {
            let Setup::Qmp(cmd) = s else { continue };
            if cmd.get("execute").and_then(Value::as_str) != Some("blockdev-add") {
                continue;
            }
            let args = &mut cmd["arguments"];
            let Some(name) = args.get("node-name").and_then(Value::as_str) else {
                continue;
            };
            let Some(Value::String(recorded)) = args.get("backing") else {
                continue;
            };
            let Ok(node) = self.engine.node(name) else {
                continue;
            };
            // Look through a job's filter (implicit, not openable by blockdev-add).
            let mut below = node.backing().map(|e| e.child_node());
            while let Some(b) = below.clone() {
                if b.driver().caps().kind == engine::driver::DriverKind::Filter && b.is_implicit() {
                    below = b.backing().map(|e| e.child_node());
                } else {
                    break;
                }
            }
            let now = below.map(|b| b.name().to_string());
            if now.as_deref() == Some(recorded.as_str()) {
                continue;
            }
            notes.push(format!(
                "restart: node '{name}' now has backing {}",
                now.as_deref().unwrap_or("none")
            ));
            args["backing"] = match now {
                Some(n) => Value::String(n),
                None => Value::Null,
            };
        }
        for n in notes.into_iter().filter(|_| announce) {
            self.note(&n);
        }
    }
}
