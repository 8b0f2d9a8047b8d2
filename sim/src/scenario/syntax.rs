//! The scenario language's vocabulary: what a parsed scenario is ([`Scenario`], [`Step`],
//! [`Action`], [`Expectation`], [`Arg`]) and how a parse error is placed ([`ParseError`],
//! `Cursor`). The parser (`parse`, `lex`) builds these, the runner's step families read them;
//! this file imports neither.

use std::fmt;

use serde_json::Value;

/// A parse error with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// A `bitmap` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapStep {
    /// `bitmap add DEVICE NAME [granularity=N] [disabled] [persistent]`: on the device's node.
    Add {
        /// The device whose node gets the bitmap (and whose writes it must record).
        device: String,
        /// Bitmap name.
        name: String,
        /// Bytes per bit (`None`: the engine's default).
        granularity: Option<u64>,
        /// Created not recording.
        disabled: bool,
        /// Stored in the image (kept by a clean `shutdown` + `restart`).
        persistent: bool,
    },
    /// `bitmap enable NAME`.
    Enable(String),
    /// `bitmap disable NAME`.
    Disable(String),
    /// `bitmap clear NAME`: must then be empty.
    Clear(String),
    /// `bitmap remove NAME`.
    Remove(String),
    /// `bitmap merge TARGET SOURCE...`: the target must become the union.
    Merge {
        /// Target bitmap.
        target: String,
        /// Source bitmaps (same device).
        sources: Vec<String>,
    },
    /// `bitmap check [NAME...]`: every write recorded while enabled is dirty (all if none).
    Check(Vec<String>),
}

/// One `key=value` argument or bare word of a directive, with its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    /// The key (or the bare word).
    pub key: String,
    /// The value, if `key=value`.
    pub value: Option<String>,
    /// 1-based column where the argument starts.
    pub column: usize,
}

/// What an `isnap` step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapVerb {
    /// `blockdev-snapshot-internal-sync`.
    Create,
    /// Revert the image to the snapshot (`qemu-img snapshot -a`).
    Apply,
    /// `blockdev-snapshot-delete-internal-sync` by name.
    Delete,
    /// A snapshot a QMP command (a transaction) just took: the runner checks it exists and
    /// keeps the device model as its data (no guest write may have come in between).
    Taken,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create an image on the virtual disk.
    ImageCreate {
        /// Path on the virtual disk.
        path: String,
        /// Format: `raw` (a sparse file of `size` bytes) or `qcow2`.
        format: String,
        /// Virtual size.
        size: u64,
        /// Format options (`cluster_size=`, `compat=`, `refcount_bits=`, `backing_file=`,
        /// `backing_fmt=`, `lazy_refcounts=` for qcow2).
        options: Vec<Arg>,
    },
    /// A QMP command; `expect` says how the reply must look (success if `None`).
    Qmp {
        /// The command object.
        command: Value,
        /// Required error class and message substring, if the command must fail.
        expect_error: Option<(String, String)>,
        /// JSON the successful reply's `return` must contain (objects by subset, the rest
        /// exactly).
        expect_return: Option<Value>,
    },
    /// Attach a device.
    DeviceAdd {
        /// Device name.
        name: String,
        /// Further arguments (node=, werror=, rerror=, cache=, read-only, share-rw).
        args: Vec<Arg>,
    },
    /// Detach a device (`device del NAME`).
    DeviceDel {
        /// Device name.
        name: String,
    },
    /// Declare content the device already shows (`model DEV fill PATTERN OFFSET LEN`): the
    /// reference model takes it as durable. For data put into lower layers of a chain through
    /// other devices; a `verify` right after checks the declaration.
    ModelFill {
        /// Device name.
        device: String,
        /// Byte pattern.
        pattern: u8,
        /// Offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A qemu-io command line on a device.
    Io {
        /// Device name.
        device: String,
        /// The command line.
        command: String,
        /// `io?`: the command may fail (check its output with `expect output`).
        may_fail: bool,
    },
    /// Start a seeded background workload.
    WorkloadStart {
        /// Workload name.
        name: String,
        /// Arguments (device=, mix=, bs=, iodepth=, range=, count=).
        args: Vec<Arg>,
    },
    /// Wait until a `count=` workload has issued all its requests.
    WorkloadWait {
        /// Workload name.
        name: String,
    },
    /// Stop a workload and wait for its requests.
    WorkloadStop {
        /// Workload name.
        name: String,
    },
    /// Inject a virtual-disk fault.
    FaultInject {
        /// Name to clear it by.
        name: String,
        /// Fault class.
        kind: String,
        /// Targeting and trigger arguments.
        args: Vec<Arg>,
    },
    /// Remove one fault, or all.
    FaultClear {
        /// The fault's name; `None` clears all.
        name: Option<String>,
    },
    /// Begin a drained section on a node.
    DrainBegin {
        /// Node name.
        node: String,
        /// Drain the whole subtree.
        subtree: bool,
    },
    /// End the innermost drained section on a node.
    DrainEnd {
        /// Node name.
        node: String,
    },
    /// Let virtual time pass.
    Advance {
        /// Nanoseconds.
        ns: u64,
    },
    /// Wait for a QMP event (matching fields) with a virtual-time timeout.
    WaitEvent {
        /// Event name.
        name: String,
        /// `key=value` fields the event's data must have.
        fields: Vec<Arg>,
        /// Timeout in virtual ns.
        timeout_ns: u64,
    },
    /// An expectation.
    Expect(Expectation),
    /// Compare a device's bytes with the reference model.
    Verify {
        /// Device name.
        device: String,
        /// `snapshot=NAME`: compare with the model a `model DEV snapshot NAME` step saved
        /// instead of the device's own (a backup target against the guest view at its start).
        snapshot: Option<String>,
    },
    /// `model DEV snapshot NAME`: save the device's model as it is now (a point in time).
    ModelSnapshot {
        /// Device name.
        device: String,
        /// Name of the saved model.
        name: String,
    },
    /// `check NODE`: the qcow2 consistency check of a node (read-only: no repair). Fails the
    /// run on corruptions or check errors; leaks (normal after a power loss) are reported.
    Check {
        /// Node name.
        node: String,
    },
    /// `isnap DEV create|apply|delete|taken NAME`: a qcow2 internal snapshot of the device's image;
    /// the runner keeps the device model of each (after `apply` the device must read the data
    /// of snapshot time).
    InternalSnapshot {
        /// Device name.
        device: String,
        /// What to do.
        verb: SnapVerb,
        /// Snapshot name.
        name: String,
    },
    /// `bitmap VERB ...`: a named dirty bitmap on a device's node, judged by the runner's
    /// own record of the guest writes since (see `bitmap_steps`).
    Bitmap(BitmapStep),
    /// A fault or setting of the simulator's network.
    Net(super::net_steps::NetStep),
    /// Power loss.
    Crash,
    /// A clean stop of the engine (jobs cancelled, devices flushed, every node closed), to be
    /// followed by `restart`.
    Shutdown,
    /// Reopen every image from its durable state and re-create the devices.
    Restart,
    /// `check-file PATH`: open a qcow2 image file on its own (read-only, no backing) and check
    /// it; corruptions or check errors fail the run, leaks are reported.
    CheckFile {
        /// Path on the virtual disk.
        path: String,
    },
    /// `amend PATH KEY=VALUE...`: `qemu-img amend` of a qcow2 image file while the engine is
    /// shut down (between `shutdown` and `restart`): compat, refcount_bits, lazy_refcounts.
    /// A refusal fails the run.
    Amend {
        /// Path on the virtual disk.
        path: String,
        /// The options, in order.
        opts: Vec<(String, String)>,
    },
}

/// What `expect` checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Expectation {
    /// An event of this name with these fields was emitted (and not yet matched).
    Event {
        /// Event name.
        name: String,
        /// Required fields.
        fields: Vec<Arg>,
    },
    /// No event of this name (with these fields, if any) is pending.
    NoEvent {
        /// Event name.
        name: String,
        /// Fields that select the events that must not be pending.
        fields: Vec<Arg>,
    },
    /// A device's I/O status.
    Iostatus {
        /// Device.
        device: String,
        /// ok, failed or nospace.
        status: String,
    },
    /// Whether the machine runs.
    Running(bool),
    /// The last qemu-io command's output contains this text.
    Output(String),
    /// `rate WORKLOAD group=GROUP`: the ended workload moved no more than the throttle group's
    /// limits let through over its run (`rate_check`).
    Rate {
        /// The workload (ended by `workload wait` or `stop`).
        workload: String,
        /// The throttle group (an object, or the implicit group of a device's limits).
        group: String,
        /// `drained`: a drain during the run released the queued requests at once.
        drained: bool,
    },
}

/// One parsed step with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// 1-based line of the step's first line.
    pub line: usize,
    /// The source text (joined if it spanned lines).
    pub text: String,
    /// What to do.
    pub action: Action,
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// File name (for messages).
    pub file: String,
    /// The purpose line.
    pub purpose: String,
    /// `expect-failure CHECK`: this scenario must fail with this check.
    pub expect_failure: Option<String>,
    /// Default seed.
    pub seed: u64,
    /// FIFO scheduling instead of random.
    pub fifo: bool,
    /// Disk latency range in ns.
    pub latency: Option<(u64, u64)>,
    /// Virtual-time limit (livelock detection).
    pub time_limit_ns: u64,
    /// Scheduling-step limit (livelock detection).
    pub step_limit: u64,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Where the parser is: file and line, for errors.
pub(super) struct Cursor<'a> {
    pub(super) file: &'a str,
    pub(super) line: usize,
}

impl Cursor<'_> {
    pub(super) fn err(&self, column: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line: self.line,
            column,
            message: message.into(),
        }
    }
}
