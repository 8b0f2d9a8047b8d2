//! The production environment: a single-threaded reactor with real time, local tasks, and host
//! file I/O through io_uring (or a worker pool where io_uring is unavailable).
//!
//! Owns everything in the engine that touches the host: `std::fs`, `std::time`, `std::thread`,
//! libc syscalls and io_uring live here and nowhere else. Imports only `crate::env`, `crate::io`
//! and `crate::error`.
//!
//! Shape: [`RealEnv::block_on`] runs the loop on the calling thread. One turn polls the
//! `block_on` future if woken, polls every ready task, hands the turn's I/O to the backend in one
//! go (one `io_uring_enter`, or one lock of the pool queue), blocks there only when nothing is
//! runnable (until a completion, a cross-thread wake or the next timer), reaps completions and
//! fires due timers. Wakers are `Send + Sync` and name tasks by key, so the loop never busy-spins.
//!
//! Submodules, in import order (each imports only those above it): `sys` (blocking syscalls),
//! `op` (the vocabulary: operation kinds, operations, completions), `slab` (operations in
//! flight), `shared` (inbox and eventfd shared with other threads); the backends `uring` and
//! `pool`; `dispatch` (the backend enum and the future a caller awaits); `executor` (tasks,
//! wakers); then this module's reactor, with `timer` and `file` (`HostFs`/`HostFile`) on it.

mod dispatch;
mod executor;
mod file;
mod op;
mod pool;
mod shared;
mod slab;
mod sys;
mod timer;
mod uring;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bench;
#[cfg(test)]
mod tests_io;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dispatch::Io;
use executor::{MAIN_KEY, TaskWaker, Tasks};
use file::RealFs;
use op::Done;
use shared::Shared;
use timer::{Sleep, Timers};

use crate::env::{Env, HostFs, LocalBoxFuture};

/// Which mechanism performs host file I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: requests are submitted in batches and completed by the kernel.
    Uring,
    /// Blocking syscalls on a small pool of worker threads.
    ThreadPool,
}

impl Backend {
    /// The backend asked for by a value of `BLK_IO_BACKEND`: `threads` (or `pool`) selects the
    /// worker pool; anything else, or nothing, io_uring where the host allows it.
    pub fn from_env_value(value: Option<&str>) -> Backend {
        match value.map(str::trim) {
            Some("threads" | "thread" | "pool" | "threadpool") => Backend::ThreadPool,
            _ => Backend::Uring,
        }
    }
}

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
struct Core {
    /// The I/O backend. First, so it is dropped first: the ring polls the inbox's eventfd.
    io: Io,
    /// Zero of the monotonic clock.
    start: Instant,
    /// Inbox shared with wakers and workers.
    shared: Arc<Shared>,
    /// Local tasks.
    tasks: RefCell<Tasks>,
    /// Timers.
    timers: RefCell<Timers>,
    /// Scratch vectors, taken by the running loop.
    scratch: Cell<Option<Scratch>>,
    /// True while `block_on` runs (it is not re-entrant).
    running: Cell<bool>,
}

impl Core {
    /// A reactor on `backend`, or on the worker pool if io_uring cannot be set up.
    fn new(backend: Backend) -> Rc<Core> {
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
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Run the loop until `fut` completes.
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
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
    fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>) {
        let key = self.tasks.borrow_mut().insert(name, fut, &self.shared);
        self.shared.deliver(|inbox| inbox.ready.push(key));
    }

    /// Drop every task and timer (the environment goes away; breaks `Rc` cycles through tasks).
    fn shutdown(&self) {
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

/// The production [`Env`]: real clocks, a local executor and host files.
pub struct RealEnv {
    /// The reactor.
    core: Rc<Core>,
    /// The host file system on this reactor.
    fs: RealFs,
    /// The backend actually in use.
    backend: Backend,
}

impl RealEnv {
    /// A new environment on io_uring when the host allows it, else on the worker pool.
    /// `BLK_IO_BACKEND=threads` forces the pool, `BLK_IO_BACKEND=uring` asks for io_uring.
    pub fn new() -> Rc<RealEnv> {
        RealEnv::with_backend(Backend::from_env_value(
            std::env::var("BLK_IO_BACKEND").ok().as_deref(),
        ))
    }

    /// A new environment on `backend`. `Backend::Uring` falls back to the worker pool when the
    /// host refuses io_uring; [`RealEnv::backend`] says which one runs.
    pub fn with_backend(backend: Backend) -> Rc<RealEnv> {
        let core = Core::new(backend);
        let backend = match core.io {
            Io::Uring(_) => Backend::Uring,
            Io::Pool(_) => Backend::ThreadPool,
        };
        Rc::new(RealEnv {
            fs: RealFs::new(core.clone()),
            core,
            backend,
        })
    }

    /// The I/O backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Run the event loop on this thread until `fut` completes, and return its output. Spawned
    /// tasks run meanwhile; those still pending when `fut` completes continue at the next call.
    ///
    /// Panics when called from inside the loop (a task or the future of another `block_on`).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.core.block_on(fut)
    }

    /// Number of spawned tasks that have not finished.
    pub fn live_tasks(&self) -> usize {
        self.core.tasks.borrow().live()
    }

    /// Names of the spawned tasks that have not finished (for stall reports).
    pub fn live_task_names(&self) -> Vec<String> {
        self.core.tasks.borrow().names()
    }

    /// Host operations started and not yet completed, including those whose futures were
    /// dropped (their buffers live until the completion arrives).
    pub fn in_flight(&self) -> usize {
        self.core.io.in_flight()
    }

    /// Armed timers.
    pub fn armed_timers(&self) -> usize {
        self.core.timers.borrow().armed()
    }

    /// Drop every pending task and timer. Dropping the last handle does this too, but a task
    /// that holds the environment (through an `Rc`) keeps it alive: call this to break such
    /// cycles at the end of a program or test.
    pub fn shutdown(&self) {
        assert!(
            !self.core.running.get(),
            "RealEnv::shutdown called from inside the loop"
        );
        self.core.shutdown();
    }
}

impl Drop for RealEnv {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

impl Env for RealEnv {
    fn kind(&self) -> &'static str {
        "real"
    }

    fn now_ns(&self) -> u64 {
        self.core.now_ns()
    }

    fn wall_clock_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn sleep_until(&self, deadline_ns: u64) -> LocalBoxFuture<'static, ()> {
        Box::pin(Sleep::new(self.core.clone(), deadline_ns))
    }

    fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>) {
        self.core.spawn(name, fut);
    }

    fn fs(&self) -> &dyn HostFs {
        &self.fs
    }
}
