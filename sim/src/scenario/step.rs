//! One step: each [`Action`] goes to the method of its family, one line each (`graph_steps`:
//! image create, qmp, device add; `chain`: device del, model fill, check NODE; `guest_steps`:
//! io, workloads, advance; `drain_steps`; `fault_steps`; `restart`: crash and restart;
//! `checks`: wait, expect, verify; `pivot`: check-file).

use super::outcome::Failure;
use super::syntax::{Action, Step};
use super::world::World;

impl World<'_> {
    /// Run one step.
    pub(super) async fn step(&mut self, step: &Step) -> Result<(), Failure> {
        let line = step.line;
        match &step.action {
            Action::ImageCreate {
                path,
                format,
                size,
                options,
            } => self.image_create(line, path, format, *size, options).await,
            Action::Qmp {
                command,
                expect_error,
                expect_return,
            } => {
                self.qmp(line, command, expect_error.as_ref(), expect_return.as_ref())
                    .await
            }
            Action::DeviceAdd { name, args } => self.device_add_step(step, name, args),
            Action::DeviceDel { name } => self.device_del(line, name).await,
            Action::ModelFill {
                device,
                pattern,
                offset,
                len,
            } => self.model_fill(line, device, *pattern, *offset, *len),
            Action::Io {
                device,
                command,
                may_fail,
            } => self.io(line, device, command, *may_fail).await,
            Action::WorkloadStart { name, args } => self.workload_start(step, name, args),
            Action::WorkloadStop { name } => self.stop_workload(name, line).await,
            Action::WorkloadWait { name } => self.workload_wait(line, name).await,
            Action::FaultInject { name, kind, args } => self.fault_inject(step, name, kind, args),
            Action::FaultClear { name } => self.fault_clear(step, name.as_deref()),
            Action::DrainBegin { node, subtree } => self.drain_begin(step, node, *subtree).await,
            Action::DrainEnd { node } => self.drain_end(step, node),
            Action::Advance { ns } => self.advance(step, *ns).await,
            Action::WaitEvent {
                name,
                fields,
                timeout_ns,
            } => self.wait_event(line, name, fields, *timeout_ns).await,
            Action::Expect(e) => self.expect(line, e),
            Action::Verify { device, snapshot } => {
                self.verify(line, device, snapshot.as_deref()).await
            }
            Action::ModelSnapshot { device, name } => self.model_snapshot(line, device, name),
            Action::Crash => {
                self.power_loss();
                Ok(())
            }
            Action::Restart => self.restart(line).await,
            Action::Shutdown => self.shutdown(line).await,
            Action::Check { node } => self.check_image(line, node).await,
            Action::Bitmap(b) => self.bitmap_step(line, b).await,
            Action::InternalSnapshot { device, verb, name } => {
                self.isnap_step(line, device, *verb, name).await
            }
            Action::CheckFile { path } => self.check_file(line, path).await,
            Action::Amend { path, opts } => self.amend_file(line, path, opts).await,
            Action::Net(n) => self.net_step(step, n),
        }
    }
}
