//! The single-threaded seeded executor.
//!
//! Tasks are named `LocalBoxFuture<'static, ()>`s in an id-ordered arena. Wakers are `Arc`s that
//! push the task id onto a shared ready queue (`Send + Sync`, as std requires, though everything
//! runs on one thread). Each step picks one ready task, with the scheduler stream of the seed
//! ([`SchedulerMode::Random`]) or first-come-first-served ([`SchedulerMode::Fifo`]), and polls it.
//! When nothing is ready, the virtual clock jumps to the earliest timer. When there is no timer
//! either and the main future is not done, the run has deadlocked: [`SimError::Deadlock`] lists
//! every live task with its name and what it said it was waiting on. A virtual time limit and a
//! step budget turn livelocks into [`SimError::Livelock`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use engine::env::LocalBoxFuture;
use rand_chacha::ChaCha8Rng;

use crate::clock::Clock;
use crate::config::{SchedulerMode, SimConfig};
use crate::error::{LivelockReason, ParkedTask, SimError};
use crate::rng::{Stream, below, stream_rng};
use crate::trace::{Trace, fnv1a, tag};

/// Identifies a task. Ids are never reused; 0 is the future driven by `block_on`.
pub type TaskId = usize;

/// The id of the future passed to `block_on`.
pub const MAIN_TASK: TaskId = 0;

/// Ready task ids in wake order, each at most once.
#[derive(Default)]
struct ReadyQueue {
    order: VecDeque<TaskId>,
    queued: BTreeSet<TaskId>,
}

impl ReadyQueue {
    fn push(&mut self, id: TaskId) {
        if self.queued.insert(id) {
            self.order.push_back(id);
        }
    }
}

type SharedReady = Arc<Mutex<ReadyQueue>>;

fn lock(ready: &SharedReady) -> std::sync::MutexGuard<'_, ReadyQueue> {
    ready
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The waker of one task: marks it ready.
struct TaskWaker {
    id: TaskId,
    ready: SharedReady,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready).push(self.id);
    }
}

struct TaskSlot {
    name: String,
    /// `None` while the task is being polled.
    fut: Option<LocalBoxFuture<'static, ()>>,
    waker: Waker,
    waiting_on: Option<String>,
}

/// The executor: task arena, ready queue, scheduler RNG, clock and limits.
pub(crate) struct Executor {
    seed: u64,
    mode: SchedulerMode,
    max_virtual_ns: u64,
    max_steps: u64,
    rng: RefCell<ChaCha8Rng>,
    ready: SharedReady,
    tasks: RefCell<BTreeMap<TaskId, TaskSlot>>,
    main_waker: Waker,
    main_waiting_on: RefCell<Option<String>>,
    next_id: Cell<TaskId>,
    current: Cell<Option<TaskId>>,
    running: Cell<bool>,
    closed: Cell<bool>,
    steps: Cell<u64>,
    clock: Rc<Clock>,
    trace: Rc<Trace>,
}

/// Clears the "running" flag even if a task panics.
struct RunningGuard<'a>(&'a Cell<bool>);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Executor {
    pub(crate) fn new(seed: u64, config: &SimConfig, clock: Rc<Clock>, trace: Rc<Trace>) -> Self {
        let ready = SharedReady::default();
        let main_waker = Waker::from(Arc::new(TaskWaker {
            id: MAIN_TASK,
            ready: ready.clone(),
        }));
        Executor {
            seed,
            mode: config.scheduler,
            max_virtual_ns: config.max_virtual_ns,
            max_steps: config.max_steps,
            rng: RefCell::new(stream_rng(seed, Stream::Scheduler)),
            ready,
            tasks: RefCell::new(BTreeMap::new()),
            main_waker,
            main_waiting_on: RefCell::new(None),
            next_id: Cell::new(MAIN_TASK + 1),
            current: Cell::new(None),
            running: Cell::new(false),
            closed: Cell::new(false),
            steps: Cell::new(0),
            clock,
            trace,
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn steps(&self) -> u64 {
        self.steps.get()
    }

    /// Add a task; it becomes ready at once. After shutdown the future is dropped unpolled.
    pub(crate) fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>) -> TaskId {
        if self.closed.get() {
            drop(fut);
            return usize::MAX;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.ready.clone(),
        }));
        let slot = TaskSlot {
            name: name.to_string(),
            fut: Some(fut),
            waker,
            waiting_on: None,
        };
        self.tasks.borrow_mut().insert(id, slot);
        self.trace
            .record(tag::SPAWN, &[id as u64, fnv1a(name.as_bytes())]);
        lock(&self.ready).push(id);
        id
    }

    /// The task being polled, if any.
    pub(crate) fn current(&self) -> Option<TaskId> {
        self.current.get()
    }

    /// Number of live spawned tasks (the main future not included).
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// True while task `id` has not finished (and was not aborted).
    pub(crate) fn is_alive(&self, id: TaskId) -> bool {
        self.tasks.borrow().contains_key(&id)
    }

    /// Label what the current task waits on, for deadlock reports. Cleared before its next poll.
    pub(crate) fn set_waiting_on(&self, label: String) {
        match self.current.get() {
            Some(MAIN_TASK) => *self.main_waiting_on.borrow_mut() = Some(label),
            Some(id) => {
                if let Some(slot) = self.tasks.borrow_mut().get_mut(&id) {
                    slot.waiting_on = Some(label);
                }
            }
            None => {}
        }
    }

    /// Drop every spawned task (a power loss kills them all). A task that is being polled right
    /// now is dropped when its poll returns.
    pub(crate) fn abort_all(&self) {
        loop {
            let taken = std::mem::take(&mut *self.tasks.borrow_mut());
            if taken.is_empty() {
                break;
            }
            // Dropping futures may cancel timers or even spawn: no borrow is held here.
            drop(taken);
        }
    }

    /// Refuse new tasks and drop all existing ones (breaks `Rc` cycles through task futures).
    pub(crate) fn shutdown(&self) {
        self.closed.set(true);
        self.abort_all();
    }

    /// Drive `fut` to completion.
    pub(crate) fn block_on<F: Future>(&self, fut: F) -> Result<F::Output, SimError> {
        let mut fut = pin!(fut);
        let mut out = None;
        let mut poll_main = |cx: &mut Context<'_>| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                out = Some(v);
                true
            } else {
                false
            }
        };
        self.run(Some(&mut poll_main))?;
        Ok(out.expect("main future finished"))
    }

    /// Run spawned tasks until nothing is runnable and no timer is pending.
    pub(crate) fn run_until_idle(&self) -> Result<(), SimError> {
        self.run(None)
    }

    fn run(
        &self,
        mut main: Option<&mut dyn FnMut(&mut Context<'_>) -> bool>,
    ) -> Result<(), SimError> {
        assert!(
            !self.running.replace(true),
            "Sim::block_on called from inside a simulated task"
        );
        let _guard = RunningGuard(&self.running);
        if main.is_some() {
            lock(&self.ready).push(MAIN_TASK);
        }
        let result = loop {
            if self.steps.get() >= self.max_steps {
                break Err(self.livelock(LivelockReason::StepLimit, main.is_some()));
            }
            let Some(id) = self.pick(main.is_some()) else {
                match self.clock.next_deadline() {
                    Some(t) if t > self.max_virtual_ns => {
                        break Err(self.livelock(LivelockReason::TimeLimit, main.is_some()));
                    }
                    Some(t) => {
                        self.trace.record(tag::CLOCK, &[t]);
                        self.clock.advance_to(t);
                        continue;
                    }
                    None if main.is_some() => break Err(self.deadlock()),
                    None => break Ok(()),
                }
            };
            self.steps.set(self.steps.get() + 1);
            self.trace
                .record(tag::SCHED, &[id as u64, self.clock.now()]);
            if id == MAIN_TASK {
                let poll = main.as_mut().expect("main is only queued while running");
                *self.main_waiting_on.borrow_mut() = None;
                self.current.set(Some(MAIN_TASK));
                let done = poll(&mut Context::from_waker(&self.main_waker));
                self.current.set(None);
                if done {
                    break Ok(());
                }
            } else {
                self.poll_task(id);
            }
        };
        let mut ready = lock(&self.ready);
        if ready.queued.remove(&MAIN_TASK) {
            ready.order.retain(|&id| id != MAIN_TASK);
        }
        result
    }

    /// Take the next ready task that is still alive.
    fn pick(&self, with_main: bool) -> Option<TaskId> {
        let mut ready = lock(&self.ready);
        loop {
            let n = ready.order.len();
            if n == 0 {
                return None;
            }
            let idx = match self.mode {
                SchedulerMode::Fifo => 0,
                SchedulerMode::Random if n == 1 => 0,
                SchedulerMode::Random => below(&mut self.rng.borrow_mut(), n as u64) as usize,
            };
            let id = ready.order.remove(idx).expect("index in range");
            ready.queued.remove(&id);
            let alive = if id == MAIN_TASK {
                with_main
            } else {
                self.is_alive(id)
            };
            if alive {
                return Some(id);
            }
        }
    }

    fn poll_task(&self, id: TaskId) {
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            tasks.get_mut(&id).map(|slot| {
                slot.waiting_on = None;
                (
                    slot.fut.take().expect("task polled while already running"),
                    slot.waker.clone(),
                )
            })
        };
        let Some((mut fut, waker)) = taken else {
            return;
        };
        self.current.set(Some(id));
        let poll = fut.as_mut().poll(&mut Context::from_waker(&waker));
        self.current.set(None);
        if poll.is_ready() {
            let slot = self.tasks.borrow_mut().remove(&id);
            drop(slot);
            drop(fut);
            return;
        }
        let mut tasks = self.tasks.borrow_mut();
        match tasks.get_mut(&id) {
            Some(slot) => slot.fut = Some(fut),
            None => {
                // Aborted while it ran: drop it outside the borrow.
                drop(tasks);
                drop(fut);
            }
        }
    }

    /// Every live task, the main future first (when `with_main`).
    fn live_tasks(&self, with_main: bool) -> Vec<ParkedTask> {
        let mut out = Vec::new();
        if with_main {
            out.push(ParkedTask {
                id: MAIN_TASK,
                name: "main".to_string(),
                waiting_on: self.main_waiting_on.borrow().clone(),
            });
        }
        for (&id, slot) in self.tasks.borrow().iter() {
            out.push(ParkedTask {
                id,
                name: slot.name.clone(),
                waiting_on: slot.waiting_on.clone(),
            });
        }
        out
    }

    fn deadlock(&self) -> SimError {
        SimError::Deadlock {
            seed: self.seed,
            now_ns: self.clock.now(),
            parked: self.live_tasks(true),
        }
    }

    fn livelock(&self, reason: LivelockReason, with_main: bool) -> SimError {
        SimError::Livelock {
            seed: self.seed,
            now_ns: self.clock.now(),
            steps: self.steps.get(),
            reason,
            tasks: self.live_tasks(with_main),
        }
    }
}
