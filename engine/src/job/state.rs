//! The job's internal states, as enums rather than independent flags, so that combinations
//! that cannot happen cannot be written: how far a cancel went, where the job's task is in its
//! life, and what it is doing right now. (The user-visible status table is `status.rs`.)

/// How far a cancel request went. Requests only ever raise it (`Ord`): a later, weaker cancel
/// does not undo a stronger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cancel {
    /// Not cancelled.
    None,
    /// `cancel` without force on a ready job that can complete: finish without completing (no
    /// cutover); reported as completed because the target is consistent.
    Soft,
    /// Cancelled: stop working as soon as possible, then abort.
    Hard,
    /// Cancelled with force: do not even wait for in-flight work to settle.
    Forced,
}

/// Where the job's task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Created, not started.
    NotStarted,
    /// Started; `run` has not returned.
    Running,
    /// Started, and `run` returned.
    Finished,
    /// Aborted before it started: nothing ran, nothing will.
    NeverRan,
}

impl RunState {
    /// The job was started (its events are sent, it is not dismissed automatically).
    pub(crate) fn started(self) -> bool {
        matches!(self, RunState::Running | RunState::Finished)
    }

    /// No task runs for the job any more (or never will).
    pub(crate) fn done(self) -> bool {
        matches!(self, RunState::Finished | RunState::NeverRan)
    }
}

/// What the job's task is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Not running: not started, sleeping, or finished.
    Idle,
    /// Executing (not parked, not sleeping, not finished): drain waits for it.
    Busy,
    /// Parked at a pause point.
    Parked,
}
