//! Block jobs: the job core (QEMU's status and verb tables, pause points, rate limits, error
//! policies, grouped completion) and the jobs built on it.
//!
//! A [`Job`] is a long-running task on the env's executor with a [`JobDriver`] doing the work
//! (stream, commit, mirror, ...). The core owns everything the driver must not get wrong by
//! itself: which status may follow which (every transition is a `JOB_STATUS_CHANGE`), when the
//! user may pause, resume, cancel, complete, finalize or dismiss, parking at pause points while a
//! node is drained or the user paused the job, sleeping for the rate limit on the env clock, the
//! `on-error` policies with `BLOCK_JOB_ERROR`, and completing a transaction of jobs together
//! (all commit or all abort).
//!
//! A job uses nodes through edges of its own ([`Job::add_node`]): the edges carry the job's
//! permissions (conflicts name "<type> job '<id>'") and make the job a drain parent, and each
//! node gets an op blocker so a second job or a conflicting command is refused with QEMU's
//! "Node '...' is busy" error.
//!
//! May import `graph`, `request`, `backend` (for `IoStatus`), `env`, `util`, `error`, `types`,
//! `event`. Never names a concrete driver type: job-private filters live here and implement
//! `BlockDriver`. Must not import `engine` or `qmp`.

pub mod active_commit;
pub mod backup;
mod chunks;
pub mod commit;
mod commit_filter;
mod lifecycle;
pub mod mirror;
pub mod rebase;
mod registry;
mod state;
mod status;
pub mod stream;
mod verbs;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use serde_json::{Value, json};

use crate::backend::IoStatus;
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Child, GraphCtx, Node, ParentOps, attach_external};
use crate::types::{OnError, Perms};
use crate::util::{Notify, RateLimit, race, yield_now};

use state::{Activity, Cancel, Pause, RunState, UserPause};

pub use chunks::{ChunkResult, IgnoredChunk};
pub use registry::{JobOptions, JobRegistry, JobTxn};
pub use status::{JobStatus, JobVerb};

/// The work of one kind of job. The core calls `run` once; when it returns (and the other jobs
/// of the transaction are done too) it calls `prepare`, then `commit` or `abort`, then `clean`.
pub trait JobDriver {
    /// The job type as QMP shows it ("stream", "commit", "mirror").
    fn job_type(&self) -> &'static str;

    /// The main loop. Call [`Job::pause_point`] (or [`Job::rate_limit`] / [`Job::sleep_ns`],
    /// which include one) between units of work, and stop early once [`Job::is_cancelled`].
    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>>;

    /// True when the job can be completed by the user once ready (mirror, active commit).
    fn can_complete(&self) -> bool {
        false
    }

    /// The user asked to complete a ready job (only called when `can_complete`).
    fn complete(&self, _job: &Rc<Job>) -> Result<()> {
        Ok(())
    }

    /// After every job of the transaction succeeded: make the result visible (graph changes
    /// that may still fail). An error aborts the whole transaction.
    fn prepare(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The transaction succeeded.
    fn commit(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// The transaction failed or was cancelled: undo what `run`/`prepare` left behind.
    fn abort(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Always last: release what the job holds.
    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// True while work the driver started on its own tasks (mirror's copy operations) is still
    /// in flight: a drain of the job's nodes waits for it even when the job itself is parked.
    fn drained_poll(&self) -> bool {
        false
    }

    /// (done, total) when the driver counts its own work (backup: the bytes of its copy
    /// bitmap, whoever copied them); `None` leaves it to the job core's counters.
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The edges from nodes to `node`, to keep in place when a job's filter takes `node`'s place
/// for its users outside the graph (the guest device).
pub(crate) fn keep_node_parents(node: &Node) -> crate::graph::ReplaceOptions {
    crate::graph::ReplaceOptions {
        keep: node
            .parents()
            .iter()
            .filter(|e| e.parent().node().is_some())
            .map(|e| e.id())
            .collect(),
    }
}

/// What to do about a failed request, by the job's `on-error` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the job with the error.
    Report,
    /// Carry on as if it had succeeded.
    Ignore,
    /// The job is now paused (status paused, `BLOCK_JOB_ERROR` sent): after the user resumes it,
    /// retry the request.
    Stop,
}

/// A block job.
pub struct Job {
    id: String,
    internal: bool,
    driver: Rc<dyn JobDriver>,
    ctx: Rc<GraphCtx>,
    registry: Weak<JobRegistry>,
    me: Weak<Job>,
    status: Cell<JobStatus>,
    auto_finalize: bool,
    auto_dismiss: bool,
    /// Who asks the job to pause (the user, drained sections over its nodes).
    pause: Cell<Pause>,
    /// Where the job's task is in its life.
    run: Cell<RunState>,
    /// What the job's task is doing now.
    activity: Cell<Activity>,
    /// How far a cancel request went.
    cancel: Cell<Cancel>,
    limit: RefCell<RateLimit>,
    progress_current: Cell<u64>,
    progress_total: Cell<u64>,
    ret: RefCell<Option<Error>>,
    iostatus: Cell<IoStatus>,
    /// Pause, resume, cancel, complete and speed changes wake the job's waits.
    wake: Notify,
    /// Status changes wake waiters of [`Job::wait_status`] / [`Job::wait_concluded`].
    changed: Notify,
    txn: RefCell<Option<Rc<JobTxn>>>,
    edges: RefCell<Vec<Child>>,
    blockers: RefCell<Vec<(Rc<Node>, u64)>>,
}

impl Job {
    pub(crate) fn new(
        opts: &JobOptions,
        driver: Rc<dyn JobDriver>,
        ctx: &Rc<GraphCtx>,
        registry: Weak<JobRegistry>,
    ) -> Rc<Job> {
        let mut limit = RateLimit::new();
        limit.set_speed(opts.speed);
        Rc::new_cyclic(|me| Job {
            id: opts.id.clone(),
            internal: opts.internal,
            driver,
            ctx: ctx.clone(),
            registry,
            me: me.clone(),
            status: Cell::new(JobStatus::Undefined),
            auto_finalize: opts.auto_finalize,
            auto_dismiss: opts.auto_dismiss,
            pause: Cell::new(Pause::default()),
            run: Cell::new(RunState::NotStarted),
            activity: Cell::new(Activity::Idle),
            cancel: Cell::new(Cancel::None),
            limit: RefCell::new(limit),
            progress_current: Cell::new(0),
            progress_total: Cell::new(0),
            ret: RefCell::new(None),
            iostatus: Cell::new(IoStatus::Ok),
            wake: Notify::new(),
            changed: Notify::new(),
            txn: RefCell::new(None),
            edges: RefCell::new(Vec::new()),
            blockers: RefCell::new(Vec::new()),
        })
    }

    fn rc(&self) -> Rc<Job> {
        self.me.upgrade().expect("a job in use is alive")
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job type ("stream", "commit", "mirror").
    pub fn job_type(&self) -> &'static str {
        self.driver.job_type()
    }

    /// Internal jobs (offline tools) send no events and are not listed.
    pub fn is_internal(&self) -> bool {
        self.internal
    }

    /// The current status.
    pub fn status(&self) -> JobStatus {
        self.status.get()
    }

    /// The graph context (env, events).
    pub fn ctx(&self) -> &Rc<GraphCtx> {
        &self.ctx
    }

    /// The driver, for callers that know its concrete type.
    pub fn driver(&self) -> &Rc<dyn JobDriver> {
        &self.driver
    }

    /// Cancelled by the user (or by an aborting transaction): stop working as soon as possible.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.get() >= Cancel::Hard
    }

    /// Cancelled with force: do not even wait for in-flight work to settle.
    pub fn is_force_cancelled(&self) -> bool {
        self.cancel.get() == Cancel::Forced
    }

    /// Cancelled without force while ready: finish without completing (the target stays a
    /// consistent copy; no cutover).
    pub fn is_soft_cancelled(&self) -> bool {
        self.cancel.get() == Cancel::Soft
    }

    /// True while any pause is requested (user, drain, error stop).
    pub fn should_pause(&self) -> bool {
        self.pause.get().requested()
    }

    /// True while the user paused the job (or an error policy stopped it).
    pub fn is_user_paused(&self) -> bool {
        self.pause.get().by_user()
    }

    /// Set or lift the user's pause (drains keep theirs).
    fn set_user_pause(&self, user: UserPause) {
        self.pause.set(self.pause.get().with_user(user));
    }

    /// True when the job is ready to be completed.
    pub fn is_ready(&self) -> bool {
        matches!(self.status(), JobStatus::Ready | JobStatus::Standby)
    }

    /// The error the job ended with, if any.
    pub fn error(&self) -> Option<Error> {
        self.ret.borrow().clone()
    }

    /// Bytes per second (0 = unlimited).
    pub fn speed(&self) -> u64 {
        self.limit.borrow().speed()
    }

    /// Progress: (done, total) in bytes of work.
    pub fn progress(&self) -> (u64, u64) {
        self.driver
            .progress()
            .unwrap_or((self.progress_current.get(), self.progress_total.get()))
    }

    /// Set how much work there is in all (it may change while the job runs).
    pub fn set_progress_total(&self, total: u64) {
        self.progress_total.set(total);
    }

    /// Add to the total (new work appeared, e.g. guest writes to mirror).
    pub fn add_progress_total(&self, more: u64) {
        self.progress_total.set(self.progress_total.get() + more);
    }

    /// Record work done.
    pub fn add_progress(&self, done: u64) {
        self.progress_current
            .set(self.progress_current.get() + done);
    }

    /// The device's I/O status as `query-block-jobs` shows it.
    pub fn iostatus(&self) -> IoStatus {
        self.iostatus.get()
    }

    /// Wake the job's waits (a driver's own state changed, e.g. a completion was requested).
    pub fn kick(&self) {
        self.wake.notify_all();
    }

    /// Wait until something may have changed for the job (pause, resume, cancel, complete,
    /// speed, or a [`Job::kick`]). Returns at once if the job is cancelled.
    pub async fn wait_kick(&self) {
        if self.is_cancelled() {
            return;
        }
        self.wake.wait().await
    }

    fn set_activity(&self, activity: Activity) {
        self.activity.set(activity);
        if activity != Activity::Busy {
            // A drain may be waiting for this job to go quiet.
            self.ctx.notify_progress();
        }
    }

    /// Move to `next`, announcing it. Panics on a transition the table forbids: that is a bug in
    /// the core, never a user error (users are stopped by the verb table first).
    pub(crate) fn transition(&self, next: JobStatus) {
        let from = self.status.get();
        assert!(
            from.may_become(next),
            "job '{}': illegal transition {} -> {}",
            self.id,
            from.as_str(),
            next.as_str()
        );
        self.status.set(next);
        if from != next && !self.internal {
            self.ctx.emit(
                "JOB_STATUS_CHANGE",
                json!({"id": self.id, "status": next.as_str()}),
            );
        }
        self.changed.notify_all();
    }

    /// Wait until the job's status satisfies `pred` (tests and tools).
    pub async fn wait_status(&self, pred: impl Fn(JobStatus) -> bool) {
        while !pred(self.status()) {
            self.changed.wait().await;
        }
    }

    /// Wait until the job has concluded (or is gone).
    pub async fn wait_concluded(&self) {
        self.wait_status(|s| matches!(s, JobStatus::Concluded | JobStatus::Null))
            .await
    }

    /// Park here while a pause is requested (status paused, or standby when ready). Returns
    /// at once when nothing is requested or the job is cancelled.
    pub async fn pause_point(&self) {
        if self.is_cancelled() || !self.should_pause() {
            return;
        }
        let (parked, resumed) = match self.status() {
            JobStatus::Ready => (JobStatus::Standby, JobStatus::Ready),
            JobStatus::Running => (JobStatus::Paused, JobStatus::Running),
            // Pausing only applies while the job works; later phases finish regardless.
            _ => return,
        };
        self.transition(parked);
        self.set_activity(Activity::Parked);
        while self.should_pause() && !self.is_cancelled() {
            self.wake.wait().await;
        }
        self.set_activity(Activity::Busy);
        self.transition(resumed);
    }

    /// Sleep `ns` of env time (ended early by pause, resume, cancel or a speed change), then
    /// pass a pause point. A zero sleep still lets other tasks run.
    pub async fn sleep_ns(&self, ns: u64) {
        if self.is_cancelled() {
            return;
        }
        if !self.should_pause() {
            if ns == 0 {
                yield_now().await;
            } else {
                let env = self.ctx.env().clone();
                let deadline = env.now_ns().saturating_add(ns);
                self.set_activity(Activity::Idle);
                let _ = race(env.sleep_until(deadline), self.wake.wait()).await;
                self.set_activity(Activity::Busy);
            }
        }
        self.pause_point().await;
    }

    /// Account `bytes` of work against the speed limit and sleep as long as the limit asks
    /// (always passing a pause point). Call before each unit of work with the previous unit's
    /// size, as QEMU's jobs do.
    pub async fn rate_limit(&self, bytes: u64) {
        self.raise_at_main_node(DebugEvent::JobIteration).await;
        let now = self.ctx.env().now_ns();
        let delay = self.limit.borrow_mut().dispatch(now, bytes);
        self.sleep_ns(delay).await;
    }

    /// Apply an `on-error` policy to a failed request: sends `BLOCK_JOB_ERROR`, and for `stop`
    /// pauses the job as if the user had (status paused once it reaches its pause point; the
    /// caller retries after [`Job::pause_point`]).
    pub fn error_action(&self, policy: OnError, err: &Error, is_read: bool) -> ErrorAction {
        let nospace = err.errno() == Some(Errno::ENOSPC);
        let action = match policy {
            OnError::Report => ErrorAction::Report,
            OnError::Ignore => ErrorAction::Ignore,
            OnError::Stop => ErrorAction::Stop,
            OnError::Enospc if nospace => ErrorAction::Stop,
            OnError::Enospc => ErrorAction::Report,
        };
        if !self.internal {
            let name = match action {
                ErrorAction::Report => "report",
                ErrorAction::Ignore => "ignore",
                ErrorAction::Stop => "stop",
            };
            self.ctx.emit(
                "BLOCK_JOB_ERROR",
                json!({"device": self.id, "operation": if is_read { "read" } else { "write" },
                       "action": name}),
            );
        }
        if action == ErrorAction::Stop {
            self.set_user_pause(UserPause::Held);
            self.iostatus.set(if nospace {
                IoStatus::Nospace
            } else {
                IoStatus::Failed
            });
        }
        action
    }

    /// Mark the job ready (mirror converged): status ready and `BLOCK_JOB_READY`.
    pub fn set_ready(&self) {
        if self.status() != JobStatus::Running {
            return;
        }
        self.transition(JobStatus::Ready);
        if !self.internal {
            self.ctx.emit("BLOCK_JOB_READY", self.event_fields());
        }
    }

    /// Use `node` through an edge owned by the job, taking `perm` and sharing `shared`, and block
    /// other operations on it. Released when the job finishes (or by [`Job::release_nodes`]).
    pub fn add_node(
        &self,
        node: &Rc<Node>,
        name: &str,
        perm: Perms,
        shared: Perms,
    ) -> Result<Child> {
        let me: Rc<dyn ParentOps> = self.rc();
        let child = attach_external(Rc::downgrade(&me), node, name, perm, shared)?;
        self.edges.borrow_mut().push(child.clone());
        self.block_node(node);
        Ok(child)
    }

    /// Raise `event` at the job's main node (the first it blocks), so that breakpoints and
    /// traces see the job's progress as they see requests.
    pub(crate) async fn raise_at_main_node(&self, event: DebugEvent) {
        let main = self.blockers.borrow().first().map(|(n, _)| n.clone());
        if let Some(node) = main {
            crate::request::raise_debug_event(&node, event).await;
        }
    }

    /// Block other operations on `node` (without using it) until the job finishes.
    pub fn block_node(&self, node: &Rc<Node>) {
        let token = node.add_op_blocker(format!(
            "block device is in use by block job: {}",
            self.job_type()
        ));
        self.blockers.borrow_mut().push((node.clone(), token));
    }

    /// Release every edge and blocker the job holds.
    pub async fn release_nodes(&self) {
        let edges = std::mem::take(&mut *self.edges.borrow_mut());
        for child in edges.into_iter().rev() {
            // Edges of a job are never frozen; a failure here would be a graph bug.
            let _ = crate::graph::detach(child.edge()).await;
        }
        let blockers = std::mem::take(&mut *self.blockers.borrow_mut());
        for (node, token) in blockers {
            node.remove_op_blocker(token);
        }
    }

    /// The fields shared by `BLOCK_JOB_READY`, `_COMPLETED` and `_CANCELLED`.
    pub(crate) fn event_fields(&self) -> Value {
        let (cur, total) = self.progress();
        json!({"type": self.job_type(), "device": self.id, "len": total, "offset": cur,
               "speed": self.speed()})
    }

    /// `query-jobs` entry.
    pub fn query_job(&self) -> Value {
        let (cur, total) = self.progress();
        let mut v = json!({"id": self.id, "type": self.job_type(), "status": self.status().as_str(),
                           "current-progress": cur, "total-progress": total});
        if let Some(e) = self.ret.borrow().as_ref()
            && !(self.is_cancelled() && e.errno() == Some(Errno::ECANCELED))
        {
            v["error"] = json!(e.message());
        }
        v
    }

    /// Run `op` until it succeeds, applying the `on-error` `policy` to each failure (see
    /// [`Job::error_action`]): `report` returns the error, `ignore` gives `Ok(None)` (the caller
    /// carries on without the result), `stop` parks the job until the user resumes it and then
    /// retries.
    pub async fn retry_on_error<T, F: Future<Output = Result<T>>>(
        &self,
        policy: OnError,
        is_read: bool,
        mut op: impl FnMut() -> F,
    ) -> Result<Option<T>> {
        loop {
            match op().await {
                Ok(v) => return Ok(Some(v)),
                Err(e) => match self.error_action(policy, &e, is_read) {
                    ErrorAction::Report => return Err(e),
                    ErrorAction::Ignore => return Ok(None),
                    ErrorAction::Stop => self.pause_point().await,
                },
            }
        }
    }

    /// `query-block-jobs` entry.
    pub fn query_block_job(&self) -> Value {
        let (cur, total) = self.progress();
        let mut v = json!({
            "type": self.job_type(), "device": self.id, "len": total, "offset": cur,
            "busy": self.activity.get() == Activity::Busy, "paused": self.should_pause(), "speed": self.speed(),
            "io-status": self.iostatus().as_str(), "ready": self.is_ready(),
            "status": self.status().as_str(), "auto-finalize": self.auto_finalize,
            "auto-dismiss": self.auto_dismiss,
        });
        if let Some(e) = self.ret.borrow().as_ref()
            && !(self.is_cancelled() && e.errno() == Some(Errno::ECANCELED))
        {
            v["error"] = json!(e.message());
        }
        v
    }
}

impl ParentOps for Job {
    fn describe(&self) -> String {
        format!("{} job '{}'", self.job_type(), self.id)
    }

    fn drained_begin(&self) {
        self.pause.set(self.pause.get().drain_begin());
        self.wake.notify_all();
    }

    fn drained_end(&self) {
        self.pause.set(self.pause.get().drain_end());
        self.wake.notify_all();
    }

    fn drained_poll(&self) -> bool {
        // Working (not parked at a pause point, not sleeping, not finished): it may still issue
        // a request, so the drain must wait for it to reach its next pause point.
        self.activity.get() == Activity::Busy || self.driver.drained_poll()
    }
}
