//! The user's verbs on a job (pause, resume, cancel, complete, finalize, dismiss, set-speed),
//! each first checked against the verb table, with QEMU's errors.

use std::rc::Rc;

use crate::backend::IoStatus;
use crate::error::{Error, Result};

use super::state::{Cancel, RunState, UserPause};
use super::{Job, JobStatus, JobVerb};

impl Job {
    /// `job-pause`: the job parks at its next pause point.
    pub fn user_pause(&self) -> Result<()> {
        JobVerb::Pause.check(self.id(), self.status())?;
        if self.is_user_paused() {
            return Err(Error::generic("Job is already paused"));
        }
        self.set_user_pause(UserPause::Held);
        self.wake.notify_all();
        Ok(())
    }

    /// `job-resume`: lift the user's pause (or an error policy's stop).
    pub fn user_resume(&self) -> Result<()> {
        JobVerb::Resume.check(self.id(), self.status())?;
        if !self.is_user_paused() {
            return Err(Error::generic("Can't resume a job that was not paused"));
        }
        self.set_user_pause(UserPause::Free);
        self.iostatus.set(IoStatus::Ok);
        self.wake.notify_all();
        Ok(())
    }

    /// `block-job-set-speed`.
    pub fn set_speed(&self, speed: u64) -> Result<()> {
        JobVerb::SetSpeed.check(self.id(), self.status())?;
        self.limit.borrow_mut().set_speed(speed);
        self.wake.notify_all();
        Ok(())
    }

    /// `job-complete`: ask a ready job to finish (mirror and active commit cut over).
    pub fn user_complete(&self) -> Result<()> {
        JobVerb::Complete.check(self.id(), self.status())?;
        if self.should_pause() || self.is_cancelled() || !self.driver.can_complete() {
            return Err(Error::generic(format!(
                "The active block job '{}' cannot be completed",
                self.id()
            )));
        }
        self.driver.complete(&self.rc())?;
        self.wake.notify_all();
        Ok(())
    }

    /// `job-cancel`. Without `force`, a ready job that can complete finishes without completing
    /// (its target is a consistent copy; reported as completed); otherwise the job stops and
    /// aborts (reported as cancelled). Returns once the request is registered, except for a job
    /// whose work is already over: then the transaction is aborted before returning.
    pub async fn cancel(self: &Rc<Self>, force: bool) -> Result<()> {
        JobVerb::Cancel.check(self.id(), self.status())?;
        if self.is_ready() && !force && self.driver.can_complete() {
            self.set_user_pause(UserPause::Free);
            self.cancel.set(self.cancel.get().max(Cancel::Soft));
            self.wake.notify_all();
            return Ok(());
        }
        self.cancel_async(force);
        if !self.run.get().started() {
            self.run.set(RunState::NeverRan);
            self.update_rc_for_cancel();
            self.txn_abort().await;
        } else if self.status().is_completed() {
            self.txn_abort().await;
        }
        Ok(())
    }

    fn update_rc_for_cancel(&self) {
        // A never-started job aborts straight from created.
        if self.status() == JobStatus::Created {
            *self.ret.borrow_mut() = Some(Error::io(crate::error::Errno::ECANCELED));
            self.transition(JobStatus::Aborting);
        }
    }

    /// `job-finalize`: run the transaction's prepare/commit for a pending job.
    pub async fn user_finalize(self: &Rc<Self>) -> Result<()> {
        JobVerb::Finalize.check(self.id(), self.status())?;
        self.do_finalize().await;
        Ok(())
    }

    /// `job-dismiss`: forget a concluded job.
    pub fn user_dismiss(&self) -> Result<()> {
        JobVerb::Dismiss.check(self.id(), self.status())?;
        self.do_dismiss();
        Ok(())
    }
}
