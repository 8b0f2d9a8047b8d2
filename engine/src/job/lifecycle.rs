//! A job's life after `start`: the task that runs the driver, and completion of the job's
//! transaction — wait for every member, prepare all, then commit all or abort all; events;
//! conclude and dismiss.
//!
//! The order of events follows QEMU's: the status changes (waiting, pending, aborting), then
//! `BLOCK_JOB_COMPLETED` or `BLOCK_JOB_CANCELLED`, then concluded and (auto-dismiss) null.

use std::rc::Rc;

use serde_json::json;

use crate::error::{Errno, Error, Result};

use super::state::{Activity, Cancel, RunState, UserPause};
use super::{Job, JobStatus, JobTxn};

impl Job {
    /// Start a created job: status running, and its task on the env's executor.
    pub fn start(self: &Rc<Self>) {
        assert_eq!(self.status(), JobStatus::Created, "job started twice");
        self.run.set(RunState::Running);
        self.activity.set(Activity::Busy);
        self.transition(JobStatus::Running);
        let job = self.clone();
        let name = format!("job {}", self.id());
        self.ctx.env().clone().spawn(
            &name,
            Box::pin(async move {
                let r = job.driver.clone().run(job.clone()).await;
                job.finish_run(r).await;
            }),
        );
    }

    fn txn(&self) -> Rc<JobTxn> {
        self.txn
            .borrow()
            .clone()
            .expect("a live job belongs to a transaction")
    }

    /// The driver's `run` returned `r`.
    pub(crate) async fn finish_run(self: &Rc<Self>, r: Result<()>) {
        self.run.set(RunState::Finished);
        self.activity.set(Activity::Idle);
        self.ctx.notify_progress();
        self.changed.notify_all();
        if let Err(e) = r {
            *self.ret.borrow_mut() = Some(e);
        }
        self.update_rc();
        if self.ret.borrow().is_some() {
            self.txn_abort().await;
        } else {
            self.txn_success().await;
        }
    }

    /// A cancelled job that has no error of its own ends with ECANCELED; any error moves the
    /// job to aborting.
    fn update_rc(&self) {
        if self.is_cancelled() && self.ret.borrow().is_none() {
            *self.ret.borrow_mut() = Some(Error::io(Errno::ECANCELED));
        }
        if self.ret.borrow().is_some() && self.status() != JobStatus::Aborting {
            self.transition(JobStatus::Aborting);
        }
    }

    async fn txn_success(self: &Rc<Self>) {
        self.transition(JobStatus::Waiting);
        let txn = self.txn();
        let members = txn.members();
        if members.iter().any(|j| !j.status().is_completed()) {
            // The last member to finish completes the transaction.
            return;
        }
        for j in &members {
            j.transition(JobStatus::Pending);
            if !j.auto_finalize && !j.internal {
                j.ctx.emit(
                    "BLOCK_JOB_PENDING",
                    json!({"type": j.job_type(), "id": j.id()}),
                );
            }
        }
        if members.iter().all(|j| j.auto_finalize) {
            self.do_finalize().await;
        }
    }

    /// Prepare every member, then finalize each; a failed prepare aborts the transaction.
    pub(crate) async fn do_finalize(self: &Rc<Self>) {
        let members = self.txn().members();
        for j in &members {
            if j.ret.borrow().is_none()
                && let Err(e) = j.driver.clone().prepare(j.clone()).await
            {
                *j.ret.borrow_mut() = Some(e);
                j.update_rc();
                j.txn_abort().await;
                return;
            }
        }
        for j in &members {
            j.finalize_single().await;
        }
    }

    /// Cancel every other member, wait for each to stop working, then finalize all (they abort).
    pub(crate) async fn txn_abort(self: &Rc<Self>) {
        let txn = self.txn();
        if txn.aborting.replace(true) {
            // Another member is already aborting the transaction and will finalize this one.
            return;
        }
        let members = txn.members();
        for j in &members {
            if !Rc::ptr_eq(j, self) {
                j.cancel_async(true);
            }
        }
        for j in &members {
            if j.run.get() == RunState::NotStarted {
                // Never started: nothing runs that could finish it.
                j.run.set(RunState::NeverRan);
                j.update_rc();
            }
            while !j.run.get().done() {
                j.wake.notify_all();
                j.changed.wait().await;
            }
        }
        for j in &members {
            if j.txn.borrow().is_some() {
                j.finalize_single().await;
            }
        }
    }

    async fn finalize_single(self: &Rc<Self>) {
        assert!(self.run.get().done(), "finalizing a job that still runs");
        self.update_rc();
        let driver = self.driver.clone();
        if self.ret.borrow().is_none() {
            driver.clone().commit(self.clone()).await;
        } else {
            driver.clone().abort(self.clone()).await;
        }
        driver.clean(self.clone()).await;
        self.release_nodes().await;
        if self.run.get().started() && !self.internal {
            if self.is_cancelled() {
                self.ctx.emit("BLOCK_JOB_CANCELLED", self.event_fields());
            } else {
                let mut data = self.event_fields();
                if let Some(e) = self.ret.borrow().as_ref() {
                    data["error"] = json!(e.message());
                }
                self.ctx.emit("BLOCK_JOB_COMPLETED", data);
            }
        }
        if let Some(txn) = self.txn.borrow_mut().take() {
            txn.remove(self);
        }
        self.transition(JobStatus::Concluded);
        if self.auto_dismiss || !self.run.get().started() {
            self.do_dismiss();
        }
    }

    /// Drop a job whose setup failed after it was created (never started): release what it
    /// holds and go straight to null, as QEMU's early failure does. No block job events.
    pub async fn abandon(self: &Rc<Self>) {
        assert_eq!(
            self.status(),
            JobStatus::Created,
            "abandoning a started job"
        );
        self.release_nodes().await;
        if let Some(txn) = self.txn.borrow_mut().take() {
            txn.remove(self);
        }
        self.do_dismiss();
    }

    pub(crate) fn do_dismiss(&self) {
        self.transition(JobStatus::Null);
        if let Some(reg) = self.registry.upgrade() {
            reg.remove(self);
        }
    }

    /// Mark cancelled (the user's pause is lifted so the job can reach its exit).
    pub(crate) fn cancel_async(&self, force: bool) {
        self.set_user_pause(UserPause::Free);
        let level = if force { Cancel::Forced } else { Cancel::Hard };
        self.cancel.set(self.cancel.get().max(level));
        self.wake.notify_all();
    }
}
