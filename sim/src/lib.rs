//! # sim — the deterministic simulator for the blk engine
//!
//! The engine reaches the world only through `engine::env::Env`; this crate implements that seam
//! with a world that replays byte-for-byte from a seed:
//!
//! * a single-threaded **executor** ([`executor`]) whose scheduler picks among ready tasks with a
//!   seeded RNG (or FIFO), with deadlock and livelock detection ([`SimError`]);
//! * a **virtual clock** (`clock.rs`) that stands still while anything is runnable and jumps to the
//!   next timer when nothing is;
//! * a **virtual disk** ([`vdisk`]): sparse durable bytes, a volatile write cache, seeded
//!   latencies, [`fault`] injection and power-loss [`SimFs::crash`]es resolved per sector, now or
//!   when a chosen flush or write reaches the disk ([`SimFs::schedule_crash`]);
//! * a **trace hash** ([`trace`]) over every scheduling decision and disk operation, so two runs
//!   of one seed can be compared by one number.
//!
//! All randomness comes from ChaCha8 streams derived from the seed, one per subsystem
//! ([`rng::Stream`]). Nothing here reads real time, spawns threads or iterates a hash map; the one
//! real-world access is [`SimFs::export_to`] ([`export`]).
//!
//! ```
//! use engine::env::{Env, OpenOptions};
//! use engine::io::IoBuf;
//! use sim::{Sim, SimConfig};
//!
//! let sim = Sim::new(42, SimConfig::default());
//! let env = sim.env().as_env();
//! let bytes = sim
//!     .block_on(async move {
//!         let opts = OpenOptions { write: true, create: true, ..Default::default() };
//!         let f = env.fs().open("disk.img", opts).unwrap();
//!         let (_, res) = f.write_at(IoBuf::filled(512, 0xab), 0, false).await;
//!         res.unwrap();
//!         f.flush().await.unwrap();
//!         env.now_ns()
//!     })
//!     .unwrap();
//! assert!(bytes > 0); // the I/O took virtual time
//! assert_eq!(sim.fs().durable_bytes("disk.img").unwrap(), vec![0xab; 512]);
//! ```
#![deny(missing_docs)]

mod clock;
pub mod config;
pub mod env;
pub mod error;
pub mod executor;
pub mod export;
pub mod fault;
pub mod net;
pub mod rng;
pub mod scenario;
pub mod swarm;
pub mod trace;
pub mod vdisk;

use std::future::Future;
use std::rc::Rc;

pub use config::{CrashModel, DiskConfig, Latency, SchedulerMode, SimConfig};
pub use env::SimEnv;
pub use error::{LivelockReason, ParkedTask, SimError};
pub use executor::{MAIN_TASK, TaskId};
pub use export::View;
pub use fault::{FAULT_KINDS, Family, FaultId, FaultKind, FaultSpec, FaultState, OpKind, Trigger};
pub use net::SimNet;
pub use rng::Stream;
pub use vdisk::{CrashAt, CrashReport, DiskCounts, SimFs, VOLATILE_CACHE_BYTES};

use clock::Clock;
use env::Shared;
use executor::Executor;
use rng::stream_rng;
use trace::Trace;

/// One simulated world: executor, virtual clock, virtual disk and trace, all from one seed.
///
/// `Sim` owns the world; [`SimEnv`] handles (given to the engine) share it. Dropping the `Sim`
/// drops every task.
pub struct Sim {
    env: SimEnv,
}

impl Sim {
    /// A new world for `seed`.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let clock = Rc::new(Clock::default());
        let trace = Rc::new(Trace::default());
        let exec = Rc::new(Executor::new(seed, &config, clock.clone(), trace.clone()));
        let fs = SimFs::new(
            config.disk.clone(),
            stream_rng(seed, Stream::Disk),
            stream_rng(seed, Stream::Faults),
            stream_rng(seed, Stream::Crash),
            clock.clone(),
            Rc::downgrade(&exec),
            trace.clone(),
        );
        let net = SimNet::new(clock.clone(), trace.clone(), stream_rng(seed, Stream::Net));
        let shared = Rc::new(Shared {
            exec,
            clock,
            trace,
            fs,
            net,
            crypto: std::cell::RefCell::new(stream_rng(seed, Stream::Crypto)),
        });
        Sim {
            env: SimEnv { shared },
        }
    }

    /// The master seed.
    pub fn seed(&self) -> u64 {
        self.env.seed()
    }

    /// A handle on this world, for the engine (`sim.env().as_env()` gives `Rc<dyn Env>`).
    pub fn env(&self) -> SimEnv {
        self.env.clone()
    }

    /// The virtual file system.
    pub fn fs(&self) -> &SimFs {
        &self.env.shared.fs
    }

    /// The virtual network.
    pub fn net(&self) -> &SimNet {
        &self.env.shared.net
    }

    /// Run until `fut` completes, polling spawned tasks as the scheduler picks them. Fails on
    /// deadlock or when a livelock limit is hit. Panics if called from inside a simulated task.
    pub fn block_on<F: Future>(&self, fut: F) -> Result<F::Output, SimError> {
        self.env.shared.exec.block_on(fut)
    }

    /// Same as [`Sim::block_on`].
    pub fn run_until<F: Future>(&self, fut: F) -> Result<F::Output, SimError> {
        self.block_on(fut)
    }

    /// Run spawned tasks until nothing is runnable and no timer is pending. Tasks parked forever
    /// are not an error here (there is no main future to deadlock).
    pub fn run_until_idle(&self) -> Result<(), SimError> {
        self.env.shared.exec.run_until_idle()
    }

    /// Advance virtual time by `ns`, running whatever becomes due.
    pub fn advance(&self, ns: u64) -> Result<(), SimError> {
        self.block_on(self.env.sleep(ns))
    }

    /// Virtual time in ns.
    pub fn now_ns(&self) -> u64 {
        self.env.shared.clock.now()
    }

    /// Task polls so far.
    pub fn steps(&self) -> u64 {
        self.env.shared.exec.steps()
    }

    /// Pending timers (sleeps and in-flight disk operations).
    pub fn pending_timers(&self) -> usize {
        self.env.shared.clock.pending()
    }

    /// The trace hash so far: equal for equal seeds and inputs.
    pub fn trace_hash(&self) -> u64 {
        self.env.shared.trace.hash()
    }

    /// Number of records folded into the trace.
    pub fn trace_records(&self) -> u64 {
        self.env.shared.trace.records()
    }

    /// Power loss: resolve every unflushed write with the crash stream of the seed
    /// ([`SimFs::crash`]) and kill every spawned task (the main future of a running `block_on`
    /// survives: it plays the operator who restarts the machine). Handles opened before are stale.
    /// To crash at an exact disk event instead (the Nth flush, the Nth write), see
    /// [`SimFs::schedule_crash`].
    pub fn crash(&self) -> CrashReport {
        self.net().power_loss();
        self.fs().power_loss()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.env.shared.exec.shutdown();
    }
}
