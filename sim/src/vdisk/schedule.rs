//! Crashes scheduled at disk events, and the counters they are keyed on.
//!
//! A crash test first runs a workload once to count its disk events ([`SimFs::disk_counts`]),
//! then re-runs the same seed once per point with [`SimFs::schedule_crash`]: the power fails
//! exactly when the chosen event reaches the disk, with no task running in between. Because the
//! counters and the trigger draw nothing from any random stream, the re-run replays the counted
//! run event for event up to the crash.
//!
//! "Reaches the disk" means the operation completes on a live handle (a handle opened before an
//! earlier crash does not count); operations failed by an injected fault count too, reads never.
//! The crash itself is [`SimFs::power_loss`]: unflushed writes are resolved with the seed's crash
//! stream and every spawned task is killed. The future driven by `Sim::block_on` survives (it is
//! the operator who restarts the machine); if it issued the operation that triggered the crash,
//! that operation returns a stale-handle error (or, for a flush crashed after it landed, `Ok`).

use super::{CrashReport, FsInner, SimFs};
use crate::fault::OpKind;

/// Disk events counted since the world was created, over every file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounts {
    /// Flushes that reached the disk.
    pub flushes: u64,
    /// Side-effecting operations that reached the disk: writes, write-zeroes, discards, size
    /// changes, preallocations and flushes.
    pub ops: u64,
}

/// Where a scheduled power loss strikes (see [`SimFs::schedule_crash`]). Counts are 1-based and
/// include every event since the world was created, over every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashAt {
    /// When the `nth` flush reaches the disk. With `after == false` the power fails just before
    /// the flush takes effect: what it covered is resolved like any unflushed write. With
    /// `after == true` the flush lands (everything it covered is durable) and the power fails
    /// before its caller learns that it completed.
    Flush {
        /// Which flush (1-based).
        nth: u64,
        /// Crash after the flush landed instead of before.
        after: bool,
    },
    /// When the `nth` side-effecting operation reaches the disk, instead of taking effect (the
    /// "seeded point in between flushes" of a crash test).
    Op {
        /// Which operation (1-based).
        nth: u64,
    },
}

/// What the trigger decided for one completing operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strike {
    /// Crash instead of completing the operation.
    Before,
    /// Complete the operation, then crash.
    After,
}

impl FsInner {
    /// Count a side-effecting operation that reached the disk and say whether a scheduled crash
    /// strikes at it (the schedule is spent when it does).
    pub(crate) fn count_op(&self, op: OpKind) -> Option<Strike> {
        let mut c = self.counts.get();
        c.ops += 1;
        if op == OpKind::Flush {
            c.flushes += 1;
        }
        self.counts.set(c);
        let strike =
            match self.scheduled.get()? {
                CrashAt::Flush { nth, after } if op == OpKind::Flush && c.flushes == nth => {
                    if after { Strike::After } else { Strike::Before }
                }
                CrashAt::Op { nth } if c.ops == nth => Strike::Before,
                _ => return None,
            };
        self.scheduled.set(None);
        Some(strike)
    }

    /// Power loss now: resolve the caches with the crash stream, kill every spawned task.
    pub(crate) fn power_loss(&self) -> CrashReport {
        let report = self.crash_with(&mut self.crash_rng.borrow_mut());
        if let Some(exec) = self.exec.upgrade() {
            exec.abort_all();
        }
        report
    }

    /// A scheduled crash struck: do it and remember its report.
    pub(crate) fn strike(&self) {
        let report = self.power_loss();
        self.struck.set(Some(report));
    }
}

impl SimFs {
    /// The disk events counted so far.
    pub fn disk_counts(&self) -> DiskCounts {
        self.inner.counts.get()
    }

    /// Schedule a power loss at a disk event (replacing any earlier schedule). It strikes at most
    /// once; [`SimFs::take_struck`] tells whether it did.
    pub fn schedule_crash(&self, at: CrashAt) {
        self.inner.scheduled.set(Some(at));
    }

    /// True when a scheduled crash struck and its report was not taken yet.
    pub fn has_struck(&self) -> bool {
        self.inner.struck.get().is_some()
    }

    /// Cancel a scheduled crash that has not struck.
    pub fn cancel_crash(&self) {
        self.inner.scheduled.set(None);
    }

    /// The report of the scheduled crash, once it struck (taken: later calls return `None`).
    pub fn take_struck(&self) -> Option<CrashReport> {
        self.inner.struck.take()
    }

    /// Power loss now, with the crash stream of the seed: unflushed writes are resolved (see
    /// [`SimFs::crash`]) and every spawned task is killed. `Sim::crash` is this.
    pub fn power_loss(&self) -> CrashReport {
        self.inner.power_loss()
    }
}
