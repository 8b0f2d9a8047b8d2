//! The jobs of one engine by id, job creation (id rules), and job transactions.
//!
//! Jobs are listed newest first, as QEMU's `query-jobs` lists them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::GraphCtx;

use super::{Job, JobDriver};

/// How a job is created.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// The job id (for block jobs, defaults to the device name before it gets here).
    pub id: String,
    /// Internal jobs (offline tools) have no events and are not listed.
    pub internal: bool,
    /// Finalize as soon as the transaction's jobs are done (else wait for `job-finalize`).
    pub auto_finalize: bool,
    /// Dismiss once concluded (else wait for `job-dismiss`).
    pub auto_dismiss: bool,
    /// Bytes per second (0 = unlimited).
    pub speed: u64,
}

impl JobOptions {
    /// A user job with QEMU's defaults (auto-finalize, auto-dismiss, unlimited).
    pub fn new(id: impl Into<String>) -> JobOptions {
        JobOptions {
            id: id.into(),
            internal: false,
            auto_finalize: true,
            auto_dismiss: true,
            speed: 0,
        }
    }
}

/// Jobs that finish together: if one fails or is cancelled, every other is cancelled and all
/// abort; otherwise all are prepared, then all commit.
#[derive(Default)]
pub struct JobTxn {
    pub(crate) jobs: RefCell<Vec<Rc<Job>>>,
    pub(crate) aborting: Cell<bool>,
}

impl JobTxn {
    /// An empty transaction.
    pub fn new() -> Rc<JobTxn> {
        Rc::new(JobTxn::default())
    }

    pub(crate) fn members(&self) -> Vec<Rc<Job>> {
        self.jobs.borrow().clone()
    }

    pub(crate) fn remove(&self, job: &Job) {
        self.jobs.borrow_mut().retain(|j| !std::ptr::eq(&**j, job));
    }
}

/// Every job of an engine.
pub struct JobRegistry {
    ctx: Rc<GraphCtx>,
    jobs: RefCell<Vec<Rc<Job>>>,
}

impl JobRegistry {
    /// An empty registry on `ctx`.
    pub fn new(ctx: &Rc<GraphCtx>) -> Rc<JobRegistry> {
        Rc::new(JobRegistry {
            ctx: ctx.clone(),
            jobs: RefCell::new(Vec::new()),
        })
    }

    /// Create a job (status created, not started) in `txn`, or in a transaction of its own.
    /// Fails on a malformed or duplicate id.
    pub fn create(
        self: &Rc<Self>,
        opts: &JobOptions,
        driver: Rc<dyn JobDriver>,
        txn: Option<Rc<JobTxn>>,
    ) -> Result<Rc<Job>> {
        if opts.id.is_empty() {
            return Err(Error::generic("An explicit job ID is required"));
        }
        if crate::types::validate_node_name(&opts.id).is_err() {
            return Err(Error::generic(format!("Invalid job ID '{}'", opts.id)));
        }
        if self.get(&opts.id).is_some() {
            return Err(Error::generic(format!(
                "Job ID '{}' already in use",
                opts.id
            )));
        }
        let job = Job::new(opts, driver, &self.ctx, Rc::downgrade(self));
        let txn = txn.unwrap_or_default();
        txn.jobs.borrow_mut().push(job.clone());
        *job.txn.borrow_mut() = Some(txn);
        self.jobs.borrow_mut().insert(0, job.clone());
        job.transition(super::JobStatus::Created);
        Ok(job)
    }

    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Rc<Job>> {
        self.jobs.borrow().iter().find(|j| j.id() == id).cloned()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<Rc<Job>> {
        self.jobs.borrow().clone()
    }

    pub(crate) fn remove(&self, job: &Job) {
        self.jobs.borrow_mut().retain(|j| !std::ptr::eq(&**j, job));
    }

    /// `query-jobs`.
    pub fn query_jobs(&self) -> Value {
        Value::Array(
            self.list()
                .iter()
                .filter(|j| !j.is_internal())
                .map(|j| j.query_job())
                .collect(),
        )
    }

    /// `query-block-jobs`.
    pub fn query_block_jobs(&self) -> Value {
        Value::Array(
            self.list()
                .iter()
                .filter(|j| !j.is_internal())
                .map(|j| j.query_block_job())
                .collect(),
        )
    }

    /// Drop every job and break the job/transaction reference cycles (engine teardown without
    /// shutdown).
    pub fn forget_all(&self) {
        for job in std::mem::take(&mut *self.jobs.borrow_mut()) {
            if let Some(txn) = job.txn.borrow_mut().take() {
                txn.jobs.borrow_mut().clear();
            }
        }
    }

    /// Cancel every job and wait until all are gone or concluded (engine shutdown).
    pub async fn cancel_all(&self) {
        for job in self.list() {
            if !job.status().is_completed() && job.status() != super::JobStatus::Null {
                let _ = job.cancel(true).await;
            }
            job.wait_concluded().await;
        }
    }
}
