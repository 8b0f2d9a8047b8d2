//! The Engine's job verbs and queries: QMP's `job-*` and `block-job-*` families.
//!
//! Lookup differs by family as in QEMU: `job-*` fails with "Job not found" (GenericError),
//! `block-job-*` with "Block job '<id>' not found" (DeviceNotActive).

use std::rc::Rc;

use serde_json::Value;

use crate::error::{Error, ErrorClass, Result};
use crate::job::{Job, JobRegistry};

use super::Engine;

impl Engine {
    /// The engine's jobs.
    pub fn jobs(&self) -> &Rc<JobRegistry> {
        &self.jobs
    }

    /// A job by id, for the `job-*` commands.
    pub fn find_job(&self, id: &str) -> Result<Rc<Job>> {
        self.jobs
            .get(id)
            .ok_or_else(|| Error::generic("Job not found"))
    }

    /// A block job by id, for the `block-job-*` commands (internal jobs are invisible).
    pub fn find_block_job(&self, id: &str) -> Result<Rc<Job>> {
        self.jobs
            .get(id)
            .filter(|j| !j.is_internal())
            .ok_or_else(|| {
                Error::with_class(
                    ErrorClass::DeviceNotActive,
                    format!("Block job '{id}' not found"),
                )
            })
    }

    /// `block-job-cancel`: a user-paused job is only cancelled with force.
    pub async fn block_job_cancel(&self, device: &str, force: bool) -> Result<()> {
        let job = self.find_block_job(device)?;
        if job.is_user_paused() && !force {
            return Err(Error::generic(format!(
                "The block job for device '{device}' is currently paused"
            )));
        }
        job.cancel(force).await
    }

    /// `block-job-set-speed` (a negative speed is refused before it gets here as well).
    pub fn block_job_set_speed(&self, device: &str, speed: i64) -> Result<()> {
        let job = self.find_block_job(device)?;
        let speed =
            u64::try_from(speed).map_err(|_| Error::generic("Invalid parameter 'speed'"))?;
        job.set_speed(speed)
    }

    /// `query-jobs`.
    pub fn query_jobs(&self) -> Value {
        self.jobs.query_jobs()
    }

    /// `query-block-jobs`.
    pub fn query_block_jobs(&self) -> Value {
        self.jobs.query_block_jobs()
    }
}
