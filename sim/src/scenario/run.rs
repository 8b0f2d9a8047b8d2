//! Running a scenario: a fresh simulator seeded for this run, the world built on it, and the
//! loop that takes the steps in order (each through `step`, or raced against a scheduled
//! crash), collects what they printed and emitted, and ends the run with its outcome.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::outcome::{Failure, RunOptions, RunOutcome, fail};
use super::recorder::DebugRecorder;
use super::syntax::{Scenario, Step};
use super::transcript::{FNV_OFFSET, Transcript, fnv1a};
use engine::Engine;

use super::world::World;
use crate::{Latency, SchedulerMode, Sim, SimConfig};

/// Run a parsed scenario with `seed`.
pub fn run(sc: &Scenario, seed: u64, opts: RunOptions) -> RunOutcome {
    let sim = Sim::new(seed, sim_config(sc));
    if let Some(at) = opts.crash_at {
        sim.fs().schedule_crash(at);
    }
    let transcript = Rc::new(RefCell::new(Transcript::default()));
    transcript.borrow_mut().raw(&format!("# {}", sc.purpose));
    transcript.borrow_mut().raw(&format!("# seed {seed}"));
    let env = sim.env().as_env();
    let recorder = Rc::new(DebugRecorder {
        env: env.clone(),
        hash: Cell::new(FNV_OFFSET),
        trace: opts.trace.then(|| transcript.clone()),
        drained: RefCell::new(Vec::new()),
        drain_violation: RefCell::new(None),
    });
    let world = World::new(&sim, seed, &recorder, &transcript, opts.crash_at.is_some());
    // What outlives the world (a deadlock drops it inside the executor).
    let (line, engine_slot, setup_done) = (
        world.line.clone(),
        world.engine_slot.clone(),
        world.setup_done.clone(),
    );
    let steps = sc.steps.clone();
    let crash_flag = Rc::new(Cell::new(false));
    let flag = crash_flag.clone();
    let shut_down = opts.export_to.is_some();
    let result = sim.block_on(async move {
        let mut world = world;
        let r = world.run_steps(&steps).await;
        let r = match r {
            Ok(()) => world.finish().await,
            Err(e) => Err(e),
        };
        let r = match r {
            Ok(()) if shut_down => world.shut_down().await,
            r => r,
        };
        flag.set(world.crash_struck);
        drop(world);
        r
    });
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f),
        Err(e) => {
            let check = match e {
                crate::SimError::Deadlock { .. } => "deadlock",
                crate::SimError::Livelock { .. } => "livelock",
            };
            Some(fail(check, line.get(), e.to_string()))
        }
    };
    let failure = match (&opts.export_to, failure) {
        (Some(dir), None) => export_files(&sim, dir),
        (_, failure) => failure,
    };
    let now = sim.now_ns();
    let engine = engine_slot.borrow_mut().take();
    let text = close_transcript(&transcript, engine, failure.as_ref(), now);
    let mut hash = fnv1a(FNV_OFFSET, &sim.trace_hash().to_le_bytes());
    hash = fnv1a(hash, &recorder.hash.get().to_le_bytes());
    hash = fnv1a(hash, text.as_bytes());
    RunOutcome {
        seed,
        transcript: text,
        trace_hash: hash,
        failure,
        virtual_ns: now,
        steps: sim.steps(),
        disk: sim.fs().disk_counts(),
        crash_struck: crash_flag.get(),
        setup_disk: setup_done.get().unwrap_or(sim.fs().disk_counts()),
    }
}

/// Every file of the virtual disk into `dir` (as a read sees it: the engine was shut down, so
/// that is what is durable too).
fn export_files(sim: &Sim, dir: &std::path::Path) -> Option<Failure> {
    sim.fs()
        .export_all(crate::View::Current, dir)
        .err()
        .map(|e| fail("setup", 0, format!("export for qemu-img check: {e}")))
}

/// The simulator configuration the scenario's header asks for.
fn sim_config(sc: &Scenario) -> SimConfig {
    let mut cfg = SimConfig {
        max_virtual_ns: sc.time_limit_ns,
        max_steps: sc.step_limit,
        ..SimConfig::default()
    };
    if sc.fifo {
        cfg.scheduler = SchedulerMode::Fifo;
    }
    if let Some((min_ns, max_ns)) = sc.latency {
        cfg.disk.latency = if min_ns == max_ns {
            Latency::Fixed(min_ns)
        } else {
            Latency::Uniform { min_ns, max_ns }
        };
    }
    cfg
}

/// The transcript's last lines: events no step collected (the engine is still there after a
/// deadlock or livelock), then the result. Returns the whole text.
fn close_transcript(
    transcript: &RefCell<Transcript>,
    engine: Option<Rc<Engine>>,
    failure: Option<&Failure>,
    now: u64,
) -> String {
    let mut t = transcript.borrow_mut();
    if let Some(engine) = engine {
        // Events emitted before a deadlock or livelock that no step got to collect.
        for ev in engine.take_events() {
            t.line(ev.time_ns, &format!("event {} {}", ev.name, ev.data));
        }
    }
    match failure {
        None => t.line(now, "result: pass"),
        Some(f) => t.line(
            now,
            &format!(
                "result: FAILED {} at line {}: {}",
                f.check, f.line, f.message
            ),
        ),
    }
    t.text().to_string()
}

impl World<'_> {
    /// The steps in order; the first failure ends the run.
    async fn run_steps(&mut self, steps: &[Step]) -> Result<(), Failure> {
        for step in steps {
            self.line.set(step.line);
            if self.setup_done.get().is_none() && !super::crash_point::is_setup(step) {
                self.setup_done.set(Some(self.sim.fs().disk_counts()));
            }
            let r = if self.crash_probe {
                match self.step_or_crash(step).await {
                    Some(r) if !self.sim.fs().has_struck() => r,
                    _ => return self.recover_struck(step.line, steps).await,
                }
            } else {
                self.step(step).await
            };
            self.collect_io_output();
            self.collect_events();
            r?;
            if let Some(v) = self.recorder.drain_violation.borrow().clone() {
                return Err(fail("drain", step.line, v));
            }
            if let Some(f) = self.workload_failure() {
                return Err(fail("read-check", step.line, f));
            }
        }
        Ok(())
    }

    fn workload_failure(&self) -> Option<String> {
        self.workloads
            .values()
            .find_map(|w| w.failure.borrow().clone())
    }

    /// End of the scenario: stop what is still running, end open drained sections.
    /// Shut the engine down as a clean exit does (jobs cancelled, devices flushed and
    /// detached, every node closed), so the images on the disk are what a tool opens next.
    async fn shut_down(&mut self) -> Result<(), Failure> {
        let r = self.engine.shutdown().await;
        self.collect_events();
        r.map_err(|e| fail("setup", 0, format!("engine shutdown: {e}")))
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        let names: Vec<String> = self.workloads.keys().cloned().collect();
        for name in names {
            self.stop_workload(&name, 0).await?;
        }
        self.drains.clear();
        self.recorder.drained.borrow_mut().clear();
        self.collect_events();
        Ok(())
    }
}
