//! What a run reports: its options ([`RunOptions`]), its result ([`RunOutcome`]) and why it
//! failed ([`Failure`], one of the [`CHECKS`] that `expect-failure` may name).

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Put every debug event into the transcript.
    pub trace: bool,
    /// Power loss at this disk event; the run then restarts, checks every device and qcow2
    /// image, and ends (`blk sim crashes`).
    pub crash_at: Option<crate::CrashAt>,
    /// After a passing run, shut the engine down (every image closed cleanly) and export every
    /// file of the virtual disk into this host directory, for `qemu-img check` to judge
    /// (`blk sim swarm --qemu-check`).
    pub export_to: Option<std::path::PathBuf>,
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
    /// Scheduler steps (task polls) the run took.
    pub steps: u64,
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
    "bitmap",
    "isnap",
    "restart",
    "amend",
    "deadlock",
    "livelock",
];

/// A failure of `check` at scenario line `line`.
pub(super) fn fail(check: &str, line: usize, message: impl Into<String>) -> Failure {
    Failure {
        check: check.to_string(),
        line,
        message: message.into(),
    }
}
