//! Steps of the guest: `io` / `io?` (qemu-io command lines, with the output of aio requests
//! collected after every step), `workload start` / `wait` / `stop`, and `advance` (virtual time
//! passes while the guest's requests run).

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::outcome::{Failure, fail};
use super::syntax::{Arg, Step};
use super::transcript::fnv1a;
use super::workload::{Workload, WorkloadSpec};
use super::world::World;

impl World<'_> {
    /// `io DEVICE COMMAND` / `io? ...`: one qemu-io command line on the device's session.
    pub(super) async fn io(
        &mut self,
        line: usize,
        device: &str,
        command: &str,
        may_fail: bool,
    ) -> Result<(), Failure> {
        let bb = self
            .engine
            .backend(device)
            .map_err(|e| fail("io", line, e.to_string()))?;
        let model = self
            .devices
            .get(device)
            .ok_or_else(|| fail("io", line, format!("no device '{device}'")))?
            .model
            .clone();
        self.note(&format!("io {device}: {command}"));
        let out = self
            .io
            .run(&self.engine, bb, &model, device, command)
            .await
            .map_err(|e| fail("io", line, e))?;
        for l in &out.lines {
            self.note(&format!("  {l}"));
        }
        self.last_output = out.lines;
        if !out.ok && !may_fail {
            return Err(fail(
                "io",
                line,
                format!("'{command}' failed: {}", self.last_output.join(" / ")),
            ));
        }
        Ok(())
    }

    /// Output of aio requests that completed since the last step.
    pub(super) fn collect_io_output(&mut self) {
        for device in self.io.devices() {
            let Some(dev) = self.devices.get(&device) else {
                continue;
            };
            let model = dev.model.clone();
            for l in self.io.take_output(&device, &model, None) {
                self.note(&format!("  [{device}] {l}"));
                self.last_output.push(l);
            }
        }
    }

    /// `workload start NAME device=DEV ...`: a seeded background workload on the device.
    pub(super) fn workload_start(
        &mut self,
        step: &Step,
        name: &str,
        args: &[Arg],
    ) -> Result<(), Failure> {
        let line = step.line;
        let spec = WorkloadSpec::parse(args).map_err(|e| fail("setup", line, e))?;
        let bb = self
            .engine
            .backend(&spec.device)
            .map_err(|e| fail("setup", line, e.to_string()))?;
        let dev = self
            .devices
            .get(&spec.device)
            .ok_or_else(|| fail("setup", line, "no such device"))?;
        let rng_seed = fnv1a(self.seed, name.as_bytes());
        let w = Workload::start(
            &self.env,
            name,
            bb,
            dev.model.clone(),
            dev.activity.clone(),
            spec,
            ChaCha8Rng::seed_from_u64(rng_seed),
        );
        self.workloads.insert(name.to_string(), w);
        self.note(&step.text);
        Ok(())
    }

    /// `workload wait NAME`: until a `count=` workload has issued everything, then stop it.
    pub(super) async fn workload_wait(&mut self, line: usize, name: &str) -> Result<(), Failure> {
        let w = self
            .workloads
            .get(name)
            .ok_or_else(|| fail("setup", line, format!("no workload named '{name}'")))?;
        if w.is_endless() {
            return Err(fail(
                "setup",
                line,
                format!("workload '{name}' has no count= and would never end"),
            ));
        }
        w.wait().await;
        self.stop_workload(name, line).await
    }

    /// `workload stop NAME` (and the end of `workload wait`, and of the run): stop it, wait for
    /// its requests, report its counts.
    pub(super) async fn stop_workload(&mut self, name: &str, line: usize) -> Result<(), Failure> {
        let w = self
            .workloads
            .remove(name)
            .ok_or_else(|| fail("setup", line, format!("no workload named '{name}'")))?;
        w.stop().await;
        let s = w.stats.borrow().clone();
        let ended = super::rate_check::EndedWorkload {
            spec: w.spec.clone(),
            stats: s.clone(),
            started_ns: w.started_ns,
            ended_ns: self.env.now_ns(),
        };
        self.ended.insert(name.to_string(), ended);
        self.note(&format!(
            "workload {name} stopped: {} reads, {} writes, {} flushes, {} discards, {} errors",
            s.ops[0], s.ops[1], s.ops[2], s.ops[3], s.errors
        ));
        if let Some(f) = w.failure.borrow().clone() {
            return Err(fail("read-check", line, f));
        }
        Ok(())
    }

    /// `advance DURATION`: let virtual time pass.
    pub(super) async fn advance(&mut self, step: &Step, ns: u64) -> Result<(), Failure> {
        self.env.sleep_until(self.env.now_ns() + ns).await;
        self.note(&step.text);
        Ok(())
    }
}
