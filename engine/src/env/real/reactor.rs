//! The reactor: one loop turn polls the `block_on` future and the ready tasks, hands the turn's
//! I/O to the backend, blocks only when nothing is runnable, then reaps completions and fires
//! timers. Also the `sleep_until` future, which arms the reactor's timers.
//!
//! Sits on every other piece of `env::real` but `file` (which runs its operations on the
//! reactor) and `mod.rs` (`RealEnv`, the `Env` on it).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::dispatch::{Backend, Io};
use super::executor::{self, MAIN_KEY, TaskWaker, Tasks};
use super::op::Done;
use super::shared::Shared;
use super::timer::Timers;
use super::{pool, uring};
use crate::env::LocalBoxFuture;

/// Scratch vectors of the loop, kept so that a turn allocates nothing.
#[derive(Default)]
struct Scratch {
    /// Ready task keys of this turn.
    ready: Vec<u64>,
    /// Worker-pool completions of this turn.
    done: Vec<Done>,
    /// Wakers of fired timers.
    wakers: Vec<Waker>,
}

/// The reactor state shared by the environment, its files and its sleep futures.
pub(super) struct Core {
    /// The I/O backend. First, so it is dropped first: the ring polls the inbox's eventfd.
    pub(super) io: Io,
    /// Zero of the monotonic clock.
    start: Instant,
    /// Inbox shared with wakers and workers.
    shared: Arc<Shared>,
    /// Local tasks.
    pub(super) tasks: RefCell<Tasks>,
    /// Timers.
    pub(super) timers: RefCell<Timers>,
    /// Scratch vectors, taken by the running loop.
    scratch: Cell<Option<Scratch>>,
    /// True while `block_on` runs (it is not re-entrant).
    pub(super) running: Cell<bool>,
}

impl Core {
    /// A reactor on `backend`, or on the worker pool if io_uring cannot be set up.
    pub(super) fn new(backend: Backend) -> Rc<Core> {
        let shared = Shared::new();
        let io = match backend {
            Backend::Uring => uring::Uring::new(&shared.efd)
                .ok()
                .map(|u| Io::Uring(RefCell::new(u))),
            Backend::ThreadPool => None,
        };
        let io = io.unwrap_or_else(|| Io::Pool(RefCell::new(pool::PoolIo::new(shared.clone()))));
        Rc::new(Core {
            io,
            start: Instant::now(),
            shared,
            tasks: RefCell::default(),
            timers: RefCell::default(),
            scratch: Cell::new(Some(Scratch::default())),
            running: Cell::new(false),
        })
    }

    /// Monotonic nanoseconds since the reactor started.
    pub(super) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Run the loop until `fut` completes.
    pub(super) fn block_on<F: Future>(&self, fut: F) -> F::Output {
        assert!(
            !self.running.replace(true),
            "RealEnv::block_on called re-entrantly"
        );
        struct Running<'a>(&'a Cell<bool>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _running = Running(&self.running);
        let mut fut = pin!(fut);
        let waker = Waker::from(TaskWaker::new(MAIN_KEY, self.shared.clone()));
        let mut cx = Context::from_waker(&waker);
        let mut s = self.scratch.take().unwrap_or_default();
        let mut main_woken = true;
        loop {
            if main_woken && let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                self.scratch.set(Some(s));
                return v;
            }
            for key in s.ready.drain(..) {
                executor::poll_task(&self.tasks, key);
            }
            self.turn(&mut s);
            main_woken = self.shared.collect(&mut s.ready, &mut s.done);
            if !s.done.is_empty() {
                // Worker completions wake their futures: pick those up in this same turn.
                if let Io::Pool(p) = &self.io {
                    p.borrow_mut().reap(&mut s.done);
                }
                main_woken |= self.shared.collect(&mut s.ready, &mut s.done);
            }
        }
    }

    /// The I/O and timer half of a loop turn.
    fn turn(&self, s: &mut Scratch) {
        let next = self.timers.borrow_mut().next_deadline();
        let now = next.map(|_| self.now_ns());
        let timeout = next.zip(now).map(|(d, n)| d.saturating_sub(n));
        let block = timeout != Some(0) && self.shared.try_sleep();
        self.io.turn(block.then_some(timeout), &self.shared);
        if next.is_some() {
            self.timers.borrow_mut().fire(self.now_ns(), &mut s.wakers);
            for w in s.wakers.drain(..) {
                w.wake();
            }
        }
    }

    /// Queue a new task.
    pub(super) fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>) {
        let key = self.tasks.borrow_mut().insert(name, fut, &self.shared);
        self.shared.deliver(|inbox| inbox.ready.push(key));
    }

    /// Drop every task and timer (the environment goes away; breaks `Rc` cycles through tasks).
    pub(super) fn shutdown(&self) {
        let futs = self.tasks.borrow_mut().drain();
        drop(futs);
        self.timers.borrow_mut().clear();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The kernel may still write into buffers owned by orphaned slots: wait for it.
        if let Io::Uring(u) = &self.io {
            u.borrow_mut().quiesce();
        }
    }
}

/// The future of `Env::sleep_until`.
pub(super) struct Sleep {
    /// The reactor whose clock and heap are used.
    core: Rc<Core>,
    /// Deadline in ns of the reactor's clock; 0 once completed.
    deadline: u64,
    /// `(slot, seq)` once armed.
    armed: Option<(u32, u64)>,
}

impl Sleep {
    /// A sleep until `deadline` ns on `core`'s clock.
    pub(super) fn new(core: Rc<Core>, deadline: u64) -> Sleep {
        Sleep {
            core,
            deadline,
            armed: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut timers = this.core.timers.borrow_mut();
        match this.armed {
            None => {
                if this.core.now_ns() >= this.deadline {
                    return Poll::Ready(());
                }
                this.armed = Some(timers.arm(this.deadline, cx.waker().clone()));
                Poll::Pending
            }
            Some((index, seq)) => {
                if !timers.poll_fired(index, seq, cx.waker()) {
                    return Poll::Pending;
                }
                this.armed = None;
                this.deadline = 0;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((index, seq)) = self.armed.take()
            && let Ok(mut timers) = self.core.timers.try_borrow_mut()
        {
            timers.release(index, seq);
        }
    }
}
