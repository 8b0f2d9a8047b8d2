//! The mirror's main loop: the initial dirty set, copy operations in flight up to `buf-size`,
//! the rate limit, error policies, READY once converged, and the final drained check before the
//! job ends (cutover or soft cancel).
//!
//! Copy operations run as tasks of their own so they keep going while the loop waits (for the
//! rate limit, a pause, or more dirty data); the driver's `drained_poll` reports them, so a
//! drain waits until they ended even when the job itself is parked.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::{Child, Node};
use crate::io::{IoBuf, Mapping, ReqFlags};
use crate::util::race;

use super::super::{ErrorAction, Job};
use super::state::MirrorState;
use super::{MirrorDriver, SyncMode};

/// Pause before retrying a range whose error was ignored.
const RETRY_DELAY_NS: u64 = 10_000_000;

/// Largest single copy operation (QEMU's limit as well).
const MAX_IO_BYTES: u64 = 1 << 20;

/// How a copy operation treats ranges.
#[derive(Clone)]
struct CopyCtx {
    state: Rc<MirrorState>,
    source: Child,
    target: Child,
    /// Ranges not allocated above this node need no copy (active commit: the base itself).
    base: Option<Rc<Node>>,
    unmap: bool,
}

/// Copy `[offset, offset+bytes)` from the source to the target, piece by piece as the source
/// provides it: data is read and written, ranges that read as zeroes are zeroed (unmapped when
/// allowed), ranges the base already provides are left alone.
async fn copy_range(c: &CopyCtx, offset: u64, bytes: u64) -> Result<(), (Error, bool)> {
    let end = offset + bytes;
    let mut pos = offset;
    while pos < end {
        let status = c
            .source
            .chain_status(pos, end - pos, c.base.as_deref())
            .await
            .map_err(|e| (e, true))?;
        let n = status.len.min(end - pos);
        let reads_zero = match (&status.node, status.mapping) {
            (None, _) if c.base.is_some() => {
                // Provided by the base (active commit): already there.
                pos += n;
                continue;
            }
            (None, _) => true,
            (Some(_), m) if m.is_zero() => true,
            _ => false,
        };
        if reads_zero {
            let flags = if c.unmap {
                ReqFlags::MAY_UNMAP
            } else {
                ReqFlags::NONE
            };
            c.target
                .write_zeroes(pos, n, flags)
                .await
                .map_err(|e| (e, false))?;
        } else {
            let (buf, r) = c
                .source
                .read(pos, IoBuf::new(n as usize), ReqFlags::NONE)
                .await;
            r.map_err(|e| (e, true))?;
            let (_, r) = c.target.write(pos, buf, ReqFlags::NONE).await;
            r.map_err(|e| (e, false))?;
        }
        pos += n;
    }
    Ok(())
}

fn spawn_copy(job: &Rc<Job>, c: &CopyCtx, offset: u64, bytes: u64) {
    let c = c.clone();
    let job = job.clone();
    let name = format!("job {} copy {offset}+{bytes}", job.id());
    job.ctx().env().clone().spawn(
        &name,
        Box::pin(async move {
            let r = copy_range(&c, offset, bytes).await;
            if r.is_ok() {
                job.add_progress(bytes);
            }
            c.state.op_done(offset, bytes, r.err());
            // A drain may be waiting for the job's operations to end.
            job.ctx().notify_progress();
        }),
    );
}

impl MirrorDriver {
    fn copy_ctx(&self) -> CopyCtx {
        CopyCtx {
            state: self.state.clone(),
            source: self.source_child(),
            target: self.target_child(),
            base: match self.sync {
                SyncMode::Commit => Some(self.target.clone()),
                _ => None,
            },
            unmap: self.unmap,
        }
    }

    /// The initial dirty set. Full: zero the target first if asked, then everything allocated
    /// anywhere in the chain. Top: what the source's top layer allocates. None: nothing.
    /// Commit: what is allocated above the base.
    async fn dirty_init(&self, job: &Rc<Job>) -> Result<()> {
        let source = self.source_child();
        let len = self.state.dirty.borrow().len();
        if self.zero_target {
            let flags = if self.unmap {
                ReqFlags::MAY_UNMAP
            } else {
                ReqFlags::NONE
            };
            let target = self.target_child();
            let mut pos = 0;
            while pos < len && !job.is_cancelled() {
                let n = (len - pos).min(1 << 30);
                job.retry_on_error(self.on_target_error, false, || {
                    target.write_zeroes(pos, n, flags)
                })
                .await?;
                pos += n;
                job.pause_point().await;
            }
        }
        let base: Option<Rc<Node>> = match self.sync {
            SyncMode::None => return Ok(()),
            SyncMode::Full => None,
            SyncMode::Top => source.node().backing().map(|e| e.child_node()),
            SyncMode::Commit => Some(self.target.clone()),
        };
        let mut pos = 0;
        while pos < len {
            if job.is_cancelled() {
                return Ok(());
            }
            let status = job
                .retry_on_error(self.on_source_error, true, || {
                    source.chain_status(pos, len - pos, base.as_deref())
                })
                .await?
                // An error ignored: the allocation is unknown, so copy the range.
                .unwrap_or_else(|| crate::request::ChainStatus {
                    len: (len - pos).min(MAX_IO_BYTES),
                    mapping: Mapping::Data { host: None },
                    node: Some(source.node()),
                    depth: 0,
                });
            let n = status.len.min(len - pos).max(1);
            if status.node.is_some() {
                self.state.mark_dirty(pos, n);
            }
            pos += n;
            job.pause_point().await;
        }
        Ok(())
    }

    fn update_progress(&self, job: &Job) {
        let st = &self.state;
        let remaining = st.dirty.borrow().dirty_bytes() + st.bytes_in_flight.get();
        job.set_progress_total(job.progress().0 + remaining);
    }

    /// The job's main loop.
    pub(super) async fn run_loop(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let r = self.run_inner(&job).await;
        // Whatever happened, no copy outlives the loop.
        self.state.wait_ops().await;
        r
    }

    async fn run_inner(&self, job: &Rc<Job>) -> Result<()> {
        self.prepare_target().await?;
        self.dirty_init(job).await?;
        let st = self.state.clone();
        let ctx = self.copy_ctx();
        let op_max = MAX_IO_BYTES.min(self.buf_size).max(st.granularity());
        let mut cursor = 0u64;
        let mut last_op = 0u64;
        loop {
            let failure = {
                let mut errors = st.errors.borrow_mut();
                (!errors.is_empty()).then(|| errors.remove(0))
            };
            if let Some((err, is_read)) = failure {
                let policy = if is_read {
                    self.on_source_error
                } else {
                    self.on_target_error
                };
                match job.error_action(policy, &err, is_read) {
                    ErrorAction::Report => return Err(err),
                    // The range is dirty again and will be retried; back off a little so a
                    // target that keeps failing does not make the job spin.
                    ErrorAction::Ignore => job.sleep_ns(RETRY_DELAY_NS).await,
                    ErrorAction::Stop => {
                        st.wait_ops().await;
                        job.pause_point().await;
                    }
                }
                continue;
            }
            if job.is_cancelled() {
                return Ok(());
            }
            self.update_progress(job);
            if job.should_pause() {
                job.pause_point().await;
                continue;
            }
            let dirty = st.dirty.borrow().count();
            if dirty > 0 && st.bytes_in_flight.get() < self.buf_size {
                job.rate_limit(last_op).await;
                last_op = 0;
                if job.is_cancelled() || job.should_pause() {
                    continue;
                }
                if let Some((offset, bytes)) = st.pick(cursor, op_max) {
                    cursor = (offset + bytes) / st.granularity();
                    last_op = bytes;
                    spawn_copy(job, &ctx, offset, bytes);
                    continue;
                }
            }
            if dirty == 0 && st.ops_in_flight.get() == 0 {
                if !job.is_ready() {
                    self.flush_target(job).await?;
                    if st.dirty.borrow().count() == 0 {
                        job.set_ready();
                    }
                    continue;
                }
                if self.finishing(job) && self.final_check(job).await? {
                    return Ok(());
                }
            }
            let _ = race(st.changed.wait(), job.wait_kick()).await;
        }
    }

    /// Make what was copied durable (before READY and before the job ends: after a cutover the
    /// guest's earlier flushes must hold for the target).
    async fn flush_target(&self, job: &Rc<Job>) -> Result<()> {
        let target = self.target_child();
        job.retry_on_error(self.on_target_error, false, || target.flush())
            .await
            .map(drop)
    }

    /// Stop guest I/O at the filter and check once more that nothing is dirty; if so, keep the
    /// filter drained until the job has cut over (or finished without a cutover) and return true.
    async fn final_check(&self, job: &Rc<Job>) -> Result<bool> {
        let section = if crate::util::planted::on(crate::util::planted::Bug::MirrorPivotUndrained) {
            None
        } else {
            Some(self.filter.drained_begin().await)
        };
        if self.state.dirty.borrow().count() > 0 || self.state.ops_in_flight.get() > 0 {
            drop(section);
            return Ok(false);
        }
        self.flush_target(job).await?;
        // Writes the guest completed on the source before the cutover may still be cached there;
        // after the cutover the guest's flushes no longer reach the source, which may stay in the
        // device's chain (sync=none backs the target by it). Make them durable now.
        if let Err(e) = self.source_child().flush().await {
            match job.error_action(self.on_source_error, &e, true) {
                ErrorAction::Report => return Err(e),
                ErrorAction::Ignore => {}
                ErrorAction::Stop => {
                    drop(section);
                    return Ok(false);
                }
            }
        }
        *self.final_drain.borrow_mut() = section;
        Ok(true)
    }

    /// Active commit: a base shorter than the top grows first (QEMU does the same).
    async fn prepare_target(&self) -> Result<()> {
        if self.sync != SyncMode::Commit {
            return Ok(());
        }
        let want = self.state.dirty.borrow().len();
        let target = self.target_child();
        if target.len() < want {
            target
                .truncate(want, false, crate::driver::Prealloc::Off)
                .await?;
        }
        Ok(())
    }
}
