//! The job state machine as data: QEMU's job statuses, the verbs a user may apply, which status
//! may follow which, and which verb each status accepts.
//!
//! Pure tables; imports only `error`.

use crate::error::{Error, Result};

/// A job's status (QMP `JobStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobStatus {
    /// Not yet created (only before the first transition).
    Undefined,
    /// Created, not started.
    Created,
    /// Working.
    Running,
    /// Paused at a pause point (user pause, drain, or an error with `stop`).
    Paused,
    /// Converged: waiting for `job-complete` (mirror, active commit).
    Ready,
    /// Paused while ready.
    Standby,
    /// Work done; waiting for the other jobs of its transaction.
    Waiting,
    /// Waiting for `job-finalize` (`auto-finalize: false`).
    Pending,
    /// Failed or cancelled; cleaning up.
    Aborting,
    /// Finished; waiting for `job-dismiss` (`auto-dismiss: false`).
    Concluded,
    /// Gone.
    Null,
}

/// Every status, in the order of the tables below.
const ALL: [JobStatus; 11] = [
    JobStatus::Undefined,
    JobStatus::Created,
    JobStatus::Running,
    JobStatus::Paused,
    JobStatus::Ready,
    JobStatus::Standby,
    JobStatus::Waiting,
    JobStatus::Pending,
    JobStatus::Aborting,
    JobStatus::Concluded,
    JobStatus::Null,
];

impl JobStatus {
    /// The QMP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Undefined => "undefined",
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Ready => "ready",
            JobStatus::Standby => "standby",
            JobStatus::Waiting => "waiting",
            JobStatus::Pending => "pending",
            JobStatus::Aborting => "aborting",
            JobStatus::Concluded => "concluded",
            JobStatus::Null => "null",
        }
    }

    fn index(self) -> usize {
        ALL.iter().position(|s| *s == self).expect("listed")
    }

    /// True when `next` may follow `self`.
    pub fn may_become(self, next: JobStatus) -> bool {
        // Row: from; bit i (from the left, in `ALL` order): to.
        const U: u16 = 1 << 10;
        const C: u16 = 1 << 9;
        const R: u16 = 1 << 8;
        const P: u16 = 1 << 7;
        const Y: u16 = 1 << 6;
        const S: u16 = 1 << 5;
        const W: u16 = 1 << 4;
        const D: u16 = 1 << 3;
        const X: u16 = 1 << 2;
        const E: u16 = 1 << 1;
        const N: u16 = 1;
        let _ = U;
        const NEXT: [u16; 11] = [
            C,             // undefined
            R | X | N,     // created
            P | Y | W | X, // running
            R,             // paused
            S | W | X,     // ready
            Y,             // standby
            D | X,         // waiting
            X | E,         // pending
            X | E,         // aborting
            N,             // concluded
            0,             // null
        ];
        NEXT[self.index()] & (1 << (10 - next.index())) != 0
    }

    /// True once the job's work is over (it can no longer be paused or completed).
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            JobStatus::Waiting
                | JobStatus::Pending
                | JobStatus::Aborting
                | JobStatus::Concluded
                | JobStatus::Null
        )
    }
}

/// A user's request to a job (QMP `JobVerb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobVerb {
    /// `job-cancel`, `block-job-cancel`.
    Cancel,
    /// `job-pause`, `block-job-pause`.
    Pause,
    /// `job-resume`, `block-job-resume`.
    Resume,
    /// `block-job-set-speed`.
    SetSpeed,
    /// `job-complete`, `block-job-complete`.
    Complete,
    /// `job-finalize`, `block-job-finalize`.
    Finalize,
    /// `job-dismiss`, `block-job-dismiss`.
    Dismiss,
}

impl JobVerb {
    /// The QMP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobVerb::Cancel => "cancel",
            JobVerb::Pause => "pause",
            JobVerb::Resume => "resume",
            JobVerb::SetSpeed => "set-speed",
            JobVerb::Complete => "complete",
            JobVerb::Finalize => "finalize",
            JobVerb::Dismiss => "dismiss",
        }
    }

    /// True when a job in `status` accepts this verb.
    pub fn allowed_in(self, status: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            JobVerb::Cancel => matches!(
                status,
                Created | Running | Paused | Ready | Standby | Waiting | Pending
            ),
            JobVerb::Pause | JobVerb::Resume | JobVerb::SetSpeed => {
                matches!(status, Created | Running | Paused | Ready | Standby)
            }
            JobVerb::Complete => status == Ready,
            JobVerb::Finalize => status == Pending,
            JobVerb::Dismiss => status == Concluded,
        }
    }

    /// `Ok` when allowed, else QEMU's error naming the job, its status and the verb.
    pub fn check(self, id: &str, status: JobStatus) -> Result<()> {
        if self.allowed_in(status) {
            Ok(())
        } else {
            Err(Error::generic(format!(
                "Job '{id}' in state '{}' cannot accept command verb '{}'",
                status.as_str(),
                self.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn the_documented_lifecycle_is_allowed() {
        for (a, b) in [
            (Undefined, Created),
            (Created, Running),
            (Running, Paused),
            (Paused, Running),
            (Running, Ready),
            (Ready, Standby),
            (Standby, Ready),
            (Ready, Waiting),
            (Running, Waiting),
            (Waiting, Pending),
            (Pending, Concluded),
            (Concluded, Null),
            (Running, Aborting),
            (Pending, Aborting),
            (Aborting, Concluded),
            (Created, Null),
        ] {
            assert!(a.may_become(b), "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn shortcuts_are_refused() {
        for (a, b) in [
            (Running, Concluded),
            (Paused, Ready),
            (Standby, Running),
            (Concluded, Running),
            (Null, Created),
            (Waiting, Concluded),
            (Ready, Running),
        ] {
            assert!(!a.may_become(b), "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn verbs_follow_the_table() {
        assert!(JobVerb::Complete.allowed_in(Ready));
        assert!(!JobVerb::Complete.allowed_in(Running));
        assert!(JobVerb::Cancel.allowed_in(Pending));
        assert!(!JobVerb::Cancel.allowed_in(Concluded));
        assert!(!JobVerb::Pause.allowed_in(Waiting));
        assert!(JobVerb::Dismiss.allowed_in(Concluded));
        let e = JobVerb::Complete.check("j0", Running).unwrap_err();
        assert_eq!(
            e.message(),
            "Job 'j0' in state 'running' cannot accept command verb 'complete'"
        );
    }
}
