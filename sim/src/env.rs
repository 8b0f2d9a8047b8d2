//! [`SimEnv`]: the simulator's implementation of the engine's [`Env`] seam.
//!
//! A cheap `Rc` handle onto the executor, the virtual clock, the virtual file system and the
//! trace. Hand it to the engine as `Rc<dyn Env>` ([`SimEnv::as_env`]); keep a typed clone for the
//! simulator-only extras (wait labels, the trace hash, seeded streams).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use engine::env::net::HostNet;
use engine::env::{Env, HostFs, LocalBoxFuture};
use rand_chacha::ChaCha8Rng;

use crate::clock::{Clock, Sleep};
use crate::executor::{Executor, TaskId};
use crate::net::SimNet;
use crate::rng::{Stream, stream_rng};
use crate::trace::Trace;
use crate::vdisk::SimFs;

/// Wall-clock time at virtual time zero: 2020-01-01T00:00:00Z, in ns since the Unix epoch.
pub const VIRTUAL_EPOCH_NS: u64 = 1_577_836_800 * 1_000_000_000;

pub(crate) struct Shared {
    pub(crate) exec: Rc<Executor>,
    pub(crate) clock: Rc<Clock>,
    pub(crate) trace: Rc<Trace>,
    pub(crate) fs: SimFs,
    pub(crate) net: SimNet,
    /// The stream behind [`Env::random_bytes`].
    pub(crate) crypto: std::cell::RefCell<ChaCha8Rng>,
}

/// The simulated world as the engine sees it. Cloning is cheap (an `Rc`).
#[derive(Clone)]
pub struct SimEnv {
    pub(crate) shared: Rc<Shared>,
}

impl SimEnv {
    /// This handle as the engine's `Rc<dyn Env>`.
    pub fn as_env(&self) -> Rc<dyn Env> {
        Rc::new(self.clone())
    }

    /// The master seed.
    pub fn seed(&self) -> u64 {
        self.shared.exec.seed()
    }

    /// The virtual file system.
    pub fn sim_fs(&self) -> &SimFs {
        &self.shared.fs
    }

    /// The virtual network (for fault injection).
    pub fn sim_net(&self) -> &SimNet {
        &self.shared.net
    }

    /// Spawn a task and get its id.
    pub fn spawn_task(&self, name: &str, fut: LocalBoxFuture<'static, ()>) -> TaskId {
        self.shared.exec.spawn(name, fut)
    }

    /// True while task `id` has neither finished nor been aborted.
    pub fn is_alive(&self, id: TaskId) -> bool {
        self.shared.exec.is_alive(id)
    }

    /// Number of live spawned tasks.
    pub fn task_count(&self) -> usize {
        self.shared.exec.task_count()
    }

    /// The task being polled right now, if any.
    pub fn current_task(&self) -> Option<TaskId> {
        self.shared.exec.current()
    }

    /// Say what the current task is about to wait on; shown in deadlock reports. The label holds
    /// until the task is next polled.
    pub fn set_waiting_on(&self, label: impl Into<String>) {
        self.shared.exec.set_waiting_on(label.into());
    }

    /// Await `fut`, labelling the current task with `label` whenever `fut` is pending.
    pub async fn waiting_on<F: Future>(&self, label: &str, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(v),
            Poll::Pending => {
                self.set_waiting_on(label);
                Poll::Pending
            }
        })
        .await
    }

    /// Sleep for `ns` of virtual time.
    pub fn sleep(&self, ns: u64) -> LocalBoxFuture<'static, ()> {
        self.sleep_until(self.now_ns().saturating_add(ns))
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.shared.trace.hash()
    }

    /// A fresh generator for one of the seed's streams (for example [`Stream::Workload`]).
    /// Every call starts the stream from its beginning.
    pub fn stream_rng(&self, stream: Stream) -> ChaCha8Rng {
        stream_rng(self.seed(), stream)
    }
}

impl Env for SimEnv {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn now_ns(&self) -> u64 {
        self.shared.clock.now()
    }

    fn wall_clock_ns(&self) -> u64 {
        VIRTUAL_EPOCH_NS + self.shared.clock.now()
    }

    fn sleep_until(&self, deadline_ns: u64) -> LocalBoxFuture<'static, ()> {
        Box::pin(Sleep::new(self.shared.clock.clone(), deadline_ns))
    }

    fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>) {
        self.shared.exec.spawn(name, fut);
    }

    fn fs(&self) -> &dyn HostFs {
        &self.shared.fs
    }

    fn net(&self) -> &dyn HostNet {
        &self.shared.net
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        rand_core::RngCore::fill_bytes(&mut *self.shared.crypto.borrow_mut(), buf);
    }

    fn rounds_in(&self, _budget_ms: u64, _work: &mut dyn FnMut(u32)) -> u64 {
        // No real time here: a fixed count, small so that simulated LUKS volumes open fast
        // (the engine raises it to QEMU's minimum).
        SIM_KDF_ROUNDS
    }
}

/// The PBKDF2 rounds a simulated `iter-time` buys, whatever it is.
pub const SIM_KDF_ROUNDS: u64 = 1000;
