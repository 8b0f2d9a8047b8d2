//! `crash` (power loss: what dies with the machine, what the models must now allow), `shutdown`
//! (a clean stop of the engine) and `restart` after either: a fresh engine on the same virtual disk, and the recorded setup
//! replayed in order (node commands with their backing references following the chains as
//! they were, devices, pivoted devices, device deletions), so the scenario continues on the
//! images as the power loss left them.
//!
//! Must not import the engine's internals: only what a management tool would replay (QMP
//! commands, device attachment).

use engine::qmp;

use super::outcome::{Failure, fail};
use super::world::{Setup, World, new_engine};

impl World<'_> {
    /// `crash`: power loss now; what the disk kept, lost and tore is noted.
    pub(super) fn power_loss(&mut self) {
        self.bitmaps_at_power_loss();
        self.before_power_loss();
        let report = self.sim.crash();
        self.after_power_loss();
        self.note(&format!(
            "crash: {} cached writes kept, {} lost, {} torn{}",
            report.kept,
            report.lost,
            report.torn,
            if report.clean { " (clean)" } else { "" }
        ));
    }

    /// Workloads, drains and in-flight qemu-io die with the machine; devices that jobs moved
    /// are noted for the restart.
    pub(super) fn before_power_loss(&mut self) {
        self.workloads.clear();
        self.drains.clear();
        self.recorder.drained.borrow_mut().clear();
        self.io = Default::default();
        self.record_pivots();
    }

    /// The models learn that unflushed writes may be gone.
    pub(super) fn after_power_loss(&mut self) {
        for dev in self.devices.values() {
            dev.model.borrow_mut().crash();
            dev.activity.busy.borrow_mut().clear();
        }
    }

    pub(super) async fn restart(&mut self, line: usize) -> Result<(), Failure> {
        self.follow_chains(true);
        self.engine = new_engine(&self.env, &self.recorder);
        *self.engine_slot.borrow_mut() = Some(self.engine.clone());
        self.pending.clear();
        let setup = std::mem::take(&mut self.setup);
        let (mut nodes, mut devices) = (0, 0);
        for s in &setup {
            match s {
                Setup::Qmp(cmd) => {
                    let reply = qmp::execute(&self.engine, cmd).await;
                    if let Some(e) = reply.get("error") {
                        return Err(fail(
                            "restart",
                            line,
                            format!("reopening with {cmd} failed: {e}"),
                        ));
                    }
                    nodes += 1;
                }
                Setup::Device(name, args) => {
                    self.device_add(name, args)
                        .map_err(|e| fail("restart", line, e))?;
                    devices += 1;
                }
                Setup::Pivoted(p) => {
                    self.reattach_pivoted(p)
                        .await
                        .map_err(|e| fail("restart", line, e))?;
                    devices += 1;
                }
                Setup::DeviceDel(name) => {
                    self.engine
                        .device_del(name)
                        .await
                        .map_err(|e| fail("restart", line, e.to_string()))?;
                    self.devices.remove(name);
                    devices += 1;
                }
            }
        }
        self.setup = setup;
        self.note(&format!(
            "restart: replayed {nodes} node commands and {devices} devices"
        ));
        self.bitmaps_after_restart(line)
    }

    /// `shutdown`: a clean stop, as a management tool quits the daemon: jobs cancelled,
    /// devices flushed, every node closed (persistent bitmaps stored). The graph is noted as
    /// at a crash, for the `restart` that follows.
    pub(super) async fn shutdown(&mut self, line: usize) -> Result<(), Failure> {
        if let Some(w) = self.workloads.keys().next() {
            let msg = format!("workload '{w}' still runs: stop it before shutdown");
            return Err(fail("setup", line, msg));
        }
        self.follow_chains(true);
        self.bitmaps_before_shutdown();
        self.before_power_loss();
        let closed = self.engine.shutdown().await;
        self.collect_events();
        self.note(&match closed {
            Ok(()) => "shutdown: every node closed".to_string(),
            Err(e) => format!("shutdown: every node closed, a flush failed: {e}"),
        });
        Ok(())
    }
}
