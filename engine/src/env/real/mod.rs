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
//! `pool`; `dispatch` (the backend choice, the backend enum and the future a caller awaits);
//! `executor` (tasks, wakers) and `timer` (the deadline heap); `reactor` (the loop and the
//! sleep future); `file` (`HostFs`/`HostFile` on the reactor) and `lock` (its image locks); `sock` (non-blocking socket
//! syscalls) and `net` (`HostNet` on the reactor); `signal` (termination signals as a future);
//! then this module's `RealEnv`.

mod dispatch;
mod executor;
mod file;
mod lock;
mod net;
mod op;
mod pool;
mod reactor;
mod shared;
mod signal;
mod slab;
mod sock;
mod sys;
mod timer;
mod uring;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bench;
#[cfg(test)]
mod tests_io;
#[cfg(test)]
mod tests_net;

use std::future::Future;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use dispatch::Io;
use file::RealFs;
use net::RealNet;
use reactor::{Core, Sleep};

pub use dispatch::Backend;
pub use signal::TERMINATION_SIGNALS;
pub use sys::host_error;

use crate::env::{Env, HostFs, LocalBoxFuture};

/// The production [`Env`]: real clocks, a local executor and host files.
pub struct RealEnv {
    /// The reactor.
    core: Rc<Core>,
    /// The host file system on this reactor.
    fs: RealFs,
    /// The host network on this reactor.
    net: RealNet,
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
            net: RealNet::new(core.clone()),
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

    /// The next termination signal (`SIGTERM`, `SIGINT`, `SIGHUP`): the first call installs a
    /// process-wide handler, after which those signals no longer kill the process but complete
    /// this future (with the signal's number) on the loop.
    pub fn termination_signal(&self) -> LocalBoxFuture<'static, std::io::Result<i32>> {
        let core = self.core.clone();
        Box::pin(async move { signal::next(&core).await })
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

    fn net(&self) -> &dyn crate::env::net::HostNet {
        &self.net
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        sys::random_bytes(buf);
    }

    fn rounds_in(&self, budget_ms: u64, work: &mut dyn FnMut(u32)) -> u64 {
        // Double the batch until one takes long enough to time well, then scale its rate.
        // CPU time of this thread, as QEMU measures it: a busy host must not shrink the count.
        let mut rounds: u32 = 1 << 10;
        loop {
            let start = sys::thread_cpu_ns();
            work(rounds);
            let ns = sys::thread_cpu_ns().saturating_sub(start).max(1);
            if ns >= 50_000_000 || rounds >= 1 << 30 {
                let per_ms = (rounds as u128 * 1_000_000 / ns as u128) as u64;
                return per_ms.saturating_mul(budget_ms);
            }
            rounds *= 2;
        }
    }
}
