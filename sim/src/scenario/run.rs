//! Running a scenario: the world (engine, devices, models, workloads, drains, faults) driven by
//! the steps, on a fresh simulator seeded for this run.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::env::{Env, LocalBoxFuture};
use engine::event::{DebugEvent, Event};
use engine::graph::{DebugListener, DrainedSection, Node};
use engine::types::OnError;
use engine::{Engine, qmp};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::Value;

use super::checks::{json_contains, within};
use super::faults::fault_spec;
use super::model::DeviceModel;
use super::parse::{Action, Arg, Scenario, Step};
use super::transcript::{FNV_OFFSET, Transcript, fnv1a};
use super::workload::{DeviceActivity, Workload, WorkloadSpec};
use crate::{Latency, SchedulerMode, Sim, SimConfig};

/// A drain that has not completed after this much virtual time is a failure (QEMU would hang).
pub(super) const DRAIN_TIMEOUT_NS: u64 = 10_000_000_000;

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The check that failed: qmp, io, verify, read-check, expect, wait, setup, deadlock,
    /// livelock.
    pub check: String,
    /// Scenario line of the failing step (0 when not tied to one).
    pub line: usize,
    /// What went wrong.
    pub message: String,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The seed used.
    pub seed: u64,
    /// The transcript.
    pub transcript: String,
    /// Fixed hash over the simulator's trace, every debug event and the transcript.
    pub trace_hash: u64,
    /// The failure, if any.
    pub failure: Option<Failure>,
    /// Virtual time at the end.
    pub virtual_ns: u64,
    /// Disk flushes and side-effecting operations of the run (crash points to enumerate).
    pub disk: crate::DiskCounts,
    /// A scheduled crash ([`RunOptions::crash_at`]) struck, and the run recovered from it.
    pub crash_struck: bool,
    /// Disk events when the first step that is not image creation or graph setup began:
    /// crash points before it only break an image being created.
    pub setup_disk: crate::DiskCounts,
}

impl RunOutcome {
    /// Passing means: no failure, or exactly the failure the scenario declares it must have.
    pub fn passed(&self, expect_failure: Option<&str>) -> bool {
        match (&self.failure, expect_failure) {
            (None, None) => true,
            (Some(f), Some(check)) => f.check == check,
            _ => false,
        }
    }
}

/// Every check a run can fail, the names `expect-failure CHECK` accepts.
pub const CHECKS: &[&str] = &[
    "setup",
    "qmp",
    "io",
    "drain",
    "wait",
    "expect",
    "verify",
    "read-check",
    "image-check",
    "check",
    "restart",
    "deadlock",
    "livelock",
];

pub(super) fn fail(check: &str, line: usize, message: impl Into<String>) -> Failure {
    Failure {
        check: check.to_string(),
        line,
        message: message.into(),
    }
}

/// Records every debug event into the run's hash (and, when tracing, the transcript).
pub(super) struct DebugRecorder {
    pub(super) env: Rc<dyn Env>,
    pub(super) hash: Cell<u64>,
    pub(super) trace: Option<Rc<RefCell<Transcript>>>,
    /// Nodes inside a drained section opened by the scenario (after the drain returned).
    pub(super) drained: RefCell<Vec<String>>,
    /// The first request seen at a drained node.
    pub(super) drain_violation: RefCell<Option<String>>,
}

/// Events raised by a request entering a node's driver.
fn is_request_event(e: DebugEvent) -> bool {
    matches!(
        e,
        DebugEvent::Preadv
            | DebugEvent::Pwritev
            | DebugEvent::PwritevZero
            | DebugEvent::FlushToDisk
    )
}

impl DebugListener for DebugRecorder {
    fn on_event(&self, node: &Rc<Node>, event: DebugEvent) -> Option<LocalBoxFuture<'static, ()>> {
        let h = fnv1a(self.hash.get(), node.name().as_bytes());
        self.hash.set(fnv1a(h, event.name().as_bytes()));
        if let Some(t) = &self.trace {
            t.borrow_mut().line(
                self.env.now_ns(),
                &format!("trace {} {}", node.name(), event.name()),
            );
        }
        if is_request_event(event) && self.drained.borrow().iter().any(|n| n == node.name()) {
            let mut v = self.drain_violation.borrow_mut();
            if v.is_none() {
                *v = Some(format!(
                    "a {} request reached drained node '{}'",
                    event.name(),
                    node.name()
                ));
            }
        }
        None
    }
}

pub(super) enum Setup {
    Qmp(Value),
    Device(String, Vec<Arg>),
    /// A device whose root a job moved (mirror pivot, active commit): see `pivot.rs`.
    Pivoted(super::pivot::PivotedDevice),
    DeviceDel(String),
}

pub(super) struct DeviceState {
    pub(super) model: Rc<RefCell<DeviceModel>>,
    pub(super) activity: Rc<DeviceActivity>,
}

pub(super) struct World<'s> {
    pub(super) sim: &'s Sim,
    pub(super) env: Rc<dyn Env>,
    pub(super) seed: u64,
    pub(super) engine: Rc<Engine>,
    pub(super) recorder: Rc<DebugRecorder>,
    pub(super) setup: Vec<Setup>,
    pub(super) devices: BTreeMap<String, DeviceState>,
    pub(super) workloads: BTreeMap<String, Workload>,
    pub(super) drains: BTreeMap<String, Vec<DrainedSection>>,
    pub(super) pending: VecDeque<Event>,
    pub(super) transcript: Rc<RefCell<Transcript>>,
    pub(super) line: Rc<Cell<usize>>,
    pub(super) last_output: Vec<String>,
    /// The engine now, reachable after a deadlock drops the world (to list its last events).
    pub(super) engine_slot: Rc<RefCell<Option<Rc<Engine>>>>,
    pub(super) faults: BTreeMap<String, crate::FaultId>,
    pub(super) io: super::io::IoSessions,
    /// Watch for a scheduled crash (see `crash_point.rs`).
    pub(super) crash_probe: bool,
    /// The scheduled crash struck.
    pub(super) crash_struck: bool,
    /// Disk events at the end of setup (see [`RunOutcome::setup_disk`]).
    pub(super) setup_done: Rc<Cell<Option<crate::DiskCounts>>>,
}

/// Options of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Put every debug event into the transcript.
    pub trace: bool,
    /// Power loss at this disk event; the run then restarts, checks every device and qcow2
    /// image, and ends (`blk sim crashes`).
    pub crash_at: Option<crate::CrashAt>,
}

/// Run a parsed scenario with `seed`.
pub fn run(sc: &Scenario, seed: u64, opts: RunOptions) -> RunOutcome {
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
    let sim = Sim::new(seed, cfg);
    if let Some(at) = opts.crash_at {
        sim.fs().schedule_crash(at);
    }
    let transcript = Rc::new(RefCell::new(Transcript::default()));
    transcript.borrow_mut().raw(&format!("# {}", sc.purpose));
    transcript.borrow_mut().raw(&format!("# seed {seed}"));
    let line = Rc::new(Cell::new(0));
    let env = sim.env().as_env();
    let recorder = Rc::new(DebugRecorder {
        env: env.clone(),
        hash: Cell::new(FNV_OFFSET),
        trace: opts.trace.then(|| transcript.clone()),
        drained: RefCell::new(Vec::new()),
        drain_violation: RefCell::new(None),
    });
    let engine = new_engine(&env, &recorder);
    let engine_slot = Rc::new(RefCell::new(Some(engine.clone())));
    let setup_flag = Rc::new(Cell::new(None));
    let setup_out = setup_flag.clone();
    let world = World {
        sim: &sim,
        env: env.clone(),
        seed,
        engine,
        engine_slot: engine_slot.clone(),
        recorder: recorder.clone(),
        setup: Vec::new(),
        devices: BTreeMap::new(),
        workloads: BTreeMap::new(),
        drains: BTreeMap::new(),
        pending: VecDeque::new(),
        transcript: transcript.clone(),
        line: line.clone(),
        last_output: Vec::new(),
        faults: BTreeMap::new(),
        io: Default::default(),
        crash_probe: opts.crash_at.is_some(),
        setup_done: setup_out,
        crash_struck: false,
    };
    let steps = sc.steps.clone();
    let crash_flag = Rc::new(Cell::new(false));
    let flag = crash_flag.clone();
    let result = sim.block_on(async move {
        let mut world = world;
        let r = world.run_steps(&steps).await;
        let r = match r {
            Ok(()) => world.finish().await,
            Err(e) => Err(e),
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
    let now = sim.now_ns();
    let crash_struck = crash_flag.get();
    if let Some(engine) = engine_slot.borrow_mut().take() {
        // Events emitted before a deadlock or livelock that no step got to collect.
        for ev in engine.take_events() {
            transcript
                .borrow_mut()
                .line(ev.time_ns, &format!("event {} {}", ev.name, ev.data));
        }
    }
    {
        let mut t = transcript.borrow_mut();
        match &failure {
            None => t.line(now, "result: pass"),
            Some(f) => t.line(
                now,
                &format!(
                    "result: FAILED {} at line {}: {}",
                    f.check, f.line, f.message
                ),
            ),
        }
    }
    let text = transcript.borrow().text().to_string();
    let mut hash = fnv1a(FNV_OFFSET, &sim.trace_hash().to_le_bytes());
    hash = fnv1a(hash, &recorder.hash.get().to_le_bytes());
    hash = fnv1a(hash, text.as_bytes());
    RunOutcome {
        seed,
        transcript: text,
        trace_hash: hash,
        failure,
        virtual_ns: now,
        disk: sim.fs().disk_counts(),
        crash_struck,
        setup_disk: setup_flag.get().unwrap_or(sim.fs().disk_counts()),
    }
}

pub(super) fn new_engine(env: &Rc<dyn Env>, recorder: &Rc<DebugRecorder>) -> Rc<Engine> {
    let engine = Rc::new(Engine::new(env.clone()));
    engine.graph().add_debug_listener(recorder.clone());
    engine
}

/// Most events a run keeps for later `wait event` / `expect event` steps.
const MAX_PENDING_EVENTS: usize = 10_000;

impl World<'_> {
    pub(super) fn note(&self, text: &str) {
        self.transcript.borrow_mut().line(self.env.now_ns(), text);
    }

    pub(super) fn collect_events(&mut self) {
        for ev in self.engine.take_events() {
            self.transcript
                .borrow_mut()
                .line(ev.time_ns, &format!("event {} {}", ev.name, ev.data));
            self.pending.push_back(ev);
            if self.pending.len() > MAX_PENDING_EVENTS {
                // Never waited for nor expected: the oldest go (a long run with a workload
                // emits without end).
                self.pending.pop_front();
            }
        }
    }

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

    pub(super) async fn step(&mut self, step: &Step) -> Result<(), Failure> {
        let line = step.line;
        match &step.action {
            Action::ImageCreate {
                path,
                format,
                size,
                options,
            } => {
                super::image::create_image(&self.engine, &self.env, path, format, *size, options)
                    .await
                    .map_err(|e| fail("setup", line, e))?;
                self.note(&format!("image create {path} {format} {size}"));
            }
            Action::Qmp {
                command,
                expect_error,
                expect_return,
            } => {
                self.qmp(line, command, expect_error.as_ref(), expect_return.as_ref())
                    .await?
            }
            Action::DeviceAdd { name, args } => {
                self.device_add(name, args)
                    .map_err(|e| fail("setup", line, e))?;
                self.setup.push(Setup::Device(name.clone(), args.clone()));
                self.note(&step.text);
            }
            Action::DeviceDel { name } => self.device_del(line, name).await?,
            Action::ModelFill {
                device,
                pattern,
                offset,
                len,
            } => self.model_fill(line, device, *pattern, *offset, *len)?,
            Action::Io {
                device,
                command,
                may_fail,
            } => self.io(line, device, command, *may_fail).await?,
            Action::WorkloadStart { name, args } => {
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
                self.workloads.insert(name.clone(), w);
                self.note(&step.text);
            }
            Action::WorkloadStop { name } => self.stop_workload(name, line).await?,
            Action::WorkloadWait { name } => {
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
                self.stop_workload(name, line).await?;
            }
            Action::FaultInject { name, kind, args } => {
                let spec = fault_spec(kind, args).map_err(|e| fail("setup", line, e))?;
                if spec.kind.class().family == crate::fault::Family::LostFlush {
                    for dev in self.devices.values() {
                        dev.model.borrow_mut().lossy_flush = true;
                    }
                }
                let id = self
                    .sim
                    .fs()
                    .inject(spec)
                    .map_err(|e| fail("setup", line, e.to_string()))?;
                self.faults.insert(name.clone(), id);
                self.note(&step.text);
            }
            Action::FaultClear { name } => {
                match name {
                    None => {
                        self.sim.fs().clear_faults();
                        self.faults.clear();
                    }
                    Some(n) => {
                        let id = self
                            .faults
                            .remove(n)
                            .ok_or_else(|| fail("setup", line, format!("no fault named '{n}'")))?;
                        self.sim.fs().remove_fault(id);
                    }
                }
                self.note(&step.text);
            }
            Action::DrainBegin { node, subtree } => {
                let n = self
                    .engine
                    .node(node)
                    .map_err(|e| fail("setup", line, e.to_string()))?;
                self.note(&format!(
                    "{} ({} requests in flight)",
                    step.text,
                    n.in_flight()
                ));
                let drain = async {
                    if *subtree {
                        n.subtree_drained_begin().await
                    } else {
                        n.drained_begin().await
                    }
                };
                let section = within(&self.env, DRAIN_TIMEOUT_NS, drain)
                    .await
                    .ok_or_else(|| {
                        fail(
                            "drain",
                            line,
                            format!(
                                "'{node}' still busy after {} s of draining",
                                DRAIN_TIMEOUT_NS / 1_000_000_000
                            ),
                        )
                    })?;
                self.note(&format!(
                    "drained {node}: {} requests in flight",
                    n.in_flight()
                ));
                let names: Vec<String> = section
                    .nodes()
                    .iter()
                    .map(|n| n.name().to_string())
                    .collect();
                self.recorder.drained.borrow_mut().extend(names);
                self.drains.entry(node.clone()).or_default().push(section);
            }
            Action::DrainEnd { node } => {
                let section = self.drains.get_mut(node).and_then(|v| v.pop());
                let section = section.ok_or_else(|| {
                    fail("setup", line, format!("no drained section on '{node}'"))
                })?;
                {
                    let mut drained = self.recorder.drained.borrow_mut();
                    for n in section.nodes() {
                        if let Some(pos) = drained.iter().position(|d| d == n.name()) {
                            drained.remove(pos);
                        }
                    }
                }
                section.end();
                self.note(&step.text);
            }
            Action::Advance { ns } => {
                self.env.sleep_until(self.env.now_ns() + ns).await;
                self.note(&step.text);
            }
            Action::WaitEvent {
                name,
                fields,
                timeout_ns,
            } => self.wait_event(line, name, fields, *timeout_ns).await?,
            Action::Expect(e) => self.expect(line, e)?,
            Action::Verify { device } => self.verify(line, device).await?,
            Action::Crash => {
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
            Action::Restart => self.restart(line).await?,
            Action::Check { node } => self.check_image(line, node).await?,
            Action::CheckFile { path } => self.check_file(line, path).await?,
        }
        Ok(())
    }

    async fn qmp(
        &mut self,
        line: usize,
        command: &Value,
        expect_error: Option<&(String, String)>,
        expect_return: Option<&Value>,
    ) -> Result<(), Failure> {
        self.note(&format!("qmp {command}"));
        let reply = qmp::execute(&self.engine, command).await;
        self.note(&format!("<- {reply}"));
        let err = reply.get("error");
        match (err, expect_error) {
            (None, None) => {
                if let Some(want) = expect_return {
                    if !json_contains(&reply["return"], want) {
                        return Err(fail(
                            "qmp",
                            line,
                            format!("reply {} does not contain {want}", reply["return"]),
                        ));
                    }
                    self.note("expect return ok");
                }
                let execute = command.get("execute").and_then(Value::as_str);
                if execute == Some("blockdev-del") {
                    // Nodes deleted later lose their chance to be followed at the restart:
                    // record every current chain now (a job may have moved them off the
                    // deleted node), so the replayed blockdev-del finds it unused again.
                    self.follow_chains(false);
                }
                if matches!(execute, Some("blockdev-add" | "blockdev-del")) {
                    self.setup.push(Setup::Qmp(command.clone()));
                }
                Ok(())
            }
            (Some(e), None) => Err(fail("qmp", line, format!("unexpected error reply {e}"))),
            (None, Some((class, _))) => Err(fail(
                "qmp",
                line,
                format!("expected a {class} error, got success"),
            )),
            (Some(e), Some((class, text))) => {
                let got_class = e["class"].as_str().unwrap_or("");
                let desc = e["desc"].as_str().unwrap_or("");
                if got_class != class || !desc.contains(text.as_str()) {
                    return Err(fail(
                        "qmp",
                        line,
                        format!("expected {class} containing '{text}', got {e}"),
                    ));
                }
                Ok(())
            }
        }
    }

    pub(super) fn device_add(&mut self, name: &str, args: &[Arg]) -> Result<(), String> {
        let (node, opts) = device_options(args)?;
        self.engine
            .device_add(name, &node, opts)
            .map_err(|e| e.to_string())?;
        self.devices
            .entry(name.to_string())
            .or_insert_with(|| DeviceState {
                model: Rc::new(RefCell::new(DeviceModel::new())),
                activity: Rc::default(),
            });
        Ok(())
    }

    async fn stop_workload(&mut self, name: &str, line: usize) -> Result<(), Failure> {
        let w = self
            .workloads
            .remove(name)
            .ok_or_else(|| fail("setup", line, format!("no workload named '{name}'")))?;
        w.stop().await;
        let s = w.stats.borrow().clone();
        self.note(&format!(
            "workload {name} stopped: {} reads, {} writes, {} flushes, {} discards, {} errors",
            s.ops[0], s.ops[1], s.ops[2], s.ops[3], s.errors
        ));
        if let Some(f) = w.failure.borrow().clone() {
            return Err(fail("read-check", line, f));
        }
        Ok(())
    }
}

impl World<'_> {
    async fn io(
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
}

/// `device add` arguments onto the node name and backend options (also run at parse time, so a
/// misspelt option is refused before the run starts).
pub(super) fn device_options(args: &[Arg]) -> Result<(String, BackendOptions), String> {
    let mut node = None;
    let (mut read_only, mut share_rw) = (false, false);
    let (mut rerror, mut werror, mut cache) = (OnError::Report, OnError::Enospc, true);
    for a in args {
        match (a.key.as_str(), a.value.as_deref()) {
            ("node", Some(v)) => node = Some(v.to_string()),
            ("read-only", None) => read_only = true,
            ("share-rw", None) => share_rw = true,
            ("rerror", Some(v)) => rerror = OnError::parse(v, "read").map_err(|e| e.to_string())?,
            ("werror", Some(v)) => {
                werror = OnError::parse(v, "write").map_err(|e| e.to_string())?
            }
            ("cache", Some("writeback")) => cache = true,
            ("cache", Some("writethrough")) => cache = false,
            (k, v) => {
                return Err(format!(
                    "unknown device argument '{k}{}'",
                    v.map(|v| format!("={v}")).unwrap_or_default()
                ));
            }
        }
    }
    let node = node.ok_or("device add needs node=NODE")?;
    let mut opts = BackendOptions::guest_device(read_only, share_rw);
    opts.rerror = rerror;
    opts.werror = werror;
    opts.write_cache = cache;
    Ok((node, opts))
}
