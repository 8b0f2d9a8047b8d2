//! The world a scenario runs in: the simulator, the engine, the devices with their reference
//! models, workloads, drained sections, faults, qemu-io sessions, the transcript, and the setup
//! recorded for a restart. The state only, with the transcript and event plumbing every step
//! uses; the steps themselves live in one file per family (`graph_steps`, `guest_steps`,
//! `drain_steps`, `fault_steps`, `restart`, `checks`, `chain`, `pivot`), dispatched by `step`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use engine::Engine;
use engine::env::Env;
use engine::event::Event;
use engine::graph::DrainedSection;
use serde_json::Value;

use super::model::DeviceModel;
use super::recorder::DebugRecorder;
use super::syntax::Arg;
use super::transcript::Transcript;
use super::workload::{DeviceActivity, Workload};
use crate::Sim;

/// What `restart` replays, in order.
pub(super) enum Setup {
    /// A `blockdev-add` or `blockdev-del`.
    Qmp(Value),
    /// `device add NAME args`.
    Device(String, Vec<Arg>),
    /// A device whose root a job moved (mirror pivot, active commit): see `pivot.rs`.
    Pivoted(PivotedDevice),
    /// `device del NAME`.
    DeviceDel(String),
}

/// A device to re-attach to the node a job moved it to.
#[derive(Clone, Debug)]
pub(super) struct PivotedDevice {
    /// Device name.
    pub(super) name: String,
    /// The device's other arguments (node= is replaced).
    pub(super) args: Vec<Arg>,
    /// The node it is on now.
    pub(super) node: String,
    /// That node's name was made up by the engine (it will differ after a replay).
    pub(super) implicit: bool,
    /// Its image file and format, to open it when the replay did not.
    pub(super) filename: String,
    pub(super) format: String,
}

/// A device and what the run knows about it.
pub(super) struct DeviceState {
    pub(super) model: Rc<RefCell<DeviceModel>>,
    pub(super) activity: Rc<DeviceActivity>,
}

/// Everything a run's steps act on.
pub(super) struct World<'s> {
    pub(super) sim: &'s Sim,
    pub(super) env: Rc<dyn Env>,
    pub(super) seed: u64,
    pub(super) engine: Rc<Engine>,
    pub(super) recorder: Rc<DebugRecorder>,
    /// What a `restart` replays.
    pub(super) setup: Vec<Setup>,
    pub(super) devices: BTreeMap<String, DeviceState>,
    /// Device models saved by `model DEV snapshot NAME`.
    pub(super) snapshots: BTreeMap<String, RefCell<DeviceModel>>,
    pub(super) workloads: BTreeMap<String, Workload>,
    /// Workloads that ended, for `expect rate`.
    pub(super) ended: BTreeMap<String, super::rate_check::EndedWorkload>,
    /// Drained sections the scenario holds open, innermost last, by node.
    pub(super) drains: BTreeMap<String, Vec<DrainedSection>>,
    /// Events not yet matched by `wait event` / `expect event`.
    pub(super) pending: VecDeque<Event>,
    pub(super) transcript: Rc<RefCell<Transcript>>,
    /// Line of the step running now (a deadlock's failure names it).
    pub(super) line: Rc<Cell<usize>>,
    /// What the last qemu-io command (and aio completions since) printed, for `expect output`.
    pub(super) last_output: Vec<String>,
    /// The engine now, reachable after a deadlock drops the world (to list its last events).
    pub(super) engine_slot: Rc<RefCell<Option<Rc<Engine>>>>,
    /// Injected faults by name.
    pub(super) faults: BTreeMap<String, crate::FaultId>,
    /// One qemu-io session per device.
    pub(super) io: super::io::IoSessions,
    /// Watch for a scheduled crash (see `crash_point.rs`).
    pub(super) crash_probe: bool,
    /// The scheduled crash struck.
    pub(super) crash_struck: bool,
    /// Named dirty bitmaps under watch and what each must hold (see `bitmap_steps`).
    pub(super) bitmaps: super::bitmap_steps::BitmapOracle,
    /// Disk events at the end of setup (see [`RunOutcome::setup_disk`](super::outcome::RunOutcome::setup_disk)).
    pub(super) setup_done: Rc<Cell<Option<crate::DiskCounts>>>,
}

/// A fresh engine whose debug events go to `recorder`.
pub(super) fn new_engine(env: &Rc<dyn Env>, recorder: &Rc<DebugRecorder>) -> Rc<Engine> {
    let engine = Rc::new(Engine::new(env.clone()));
    engine.graph().add_debug_listener(recorder.clone());
    engine
}

/// Most events a run keeps for later `wait event` / `expect event` steps.
const MAX_PENDING_EVENTS: usize = 10_000;

impl<'s> World<'s> {
    /// The world at the start of a run: a fresh engine on `sim`, nothing else yet.
    pub(super) fn new(
        sim: &'s Sim,
        seed: u64,
        recorder: &Rc<DebugRecorder>,
        transcript: &Rc<RefCell<Transcript>>,
        crash_probe: bool,
    ) -> World<'s> {
        let env = sim.env().as_env();
        let engine = new_engine(&env, recorder);
        World {
            sim,
            env,
            seed,
            engine_slot: Rc::new(RefCell::new(Some(engine.clone()))),
            engine,
            recorder: recorder.clone(),
            setup: Vec::new(),
            devices: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            workloads: BTreeMap::new(),
            ended: BTreeMap::new(),
            drains: BTreeMap::new(),
            pending: VecDeque::new(),
            transcript: transcript.clone(),
            line: Rc::new(Cell::new(0)),
            last_output: Vec::new(),
            faults: BTreeMap::new(),
            io: Default::default(),
            crash_probe,
            setup_done: Rc::new(Cell::new(None)),
            crash_struck: false,
            bitmaps: Default::default(),
        }
    }
}

impl World<'_> {
    /// A transcript line stamped with the virtual time now.
    pub(super) fn note(&self, text: &str) {
        self.transcript.borrow_mut().line(self.env.now_ns(), text);
    }

    /// Move the engine's new events into the transcript and the pending list.
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
}
