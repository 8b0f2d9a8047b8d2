//! The job's internal states, as enums rather than independent flags, so that combinations
//! that cannot happen cannot be written: how far a cancel went, who holds the job paused, where
//! the job's task is in its life, and what it is doing right now. (The user-visible status
//! table is `status.rs`.)

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

/// Whether the user holds the job paused (`job-pause`, or an `on-error` policy's `stop`, which
/// the user lifts with `job-resume` as well).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum UserPause {
    /// Not paused by the user.
    #[default]
    Free,
    /// Paused until `job-resume` (or a cancel) lifts it.
    Held,
}

/// Who asks the job to pause: the user, and every drained section over the job's nodes. The job
/// parks at its pause points while any of them does. Changed only through the methods, so the
/// drain count cannot go below zero and a resume cannot lift a drain's pause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pause {
    user: UserPause,
    drains: u32,
}

impl Pause {
    /// Anything asks the job to pause.
    pub(crate) fn requested(self) -> bool {
        self.user == UserPause::Held || self.drains > 0
    }

    /// The user (or an error stop) holds the job paused.
    pub(crate) fn by_user(self) -> bool {
        self.user == UserPause::Held
    }

    /// This pause with the user's part set to `user`.
    pub(crate) fn with_user(self, user: UserPause) -> Pause {
        Pause { user, ..self }
    }

    /// One more drained section.
    pub(crate) fn drain_begin(self) -> Pause {
        Pause {
            drains: self.drains + 1,
            ..self
        }
    }

    /// One drained section ended.
    pub(crate) fn drain_end(self) -> Pause {
        let drains = self
            .drains
            .checked_sub(1)
            .expect("job drained_end without drained_begin");
        Pause { drains, ..self }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_lifts_the_users_pause_but_not_a_drains() {
        let p = Pause::default().drain_begin().with_user(UserPause::Held);
        assert!(p.requested() && p.by_user());
        let p = p.with_user(UserPause::Free);
        assert!(
            p.requested() && !p.by_user(),
            "the drain still holds the job"
        );
        assert!(!p.drain_end().requested());
    }

    #[test]
    #[should_panic(expected = "without drained_begin")]
    fn a_drain_end_without_a_begin_is_a_bug() {
        let _ = Pause::default().drain_end();
    }
}
