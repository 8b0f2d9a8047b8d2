//! The backup job's main loop: walk the source a chunk (`max-chunk`) at a time, copy what is
//! still to copy (a chunk's clusters spread over up to `max-workers` tasks), through the job core's
//! chunked loop (speed limit, pause points, cancel, the `on-source-error`/`on-target-error`
//! policies; an ignored error retries the step after a short pause). sync=none copies nothing
//! itself: it waits for the cancel that ends fleecing.

use std::cell::Cell;
use std::rc::Rc;

use crate::error::{Errno, Error, Result};
use crate::util::oneshot;

use super::super::{ChunkResult, IgnoredChunk, Job};
use super::copier::CopyError;
use super::{BackupDriver, BackupSync};

/// Pause before retrying a step whose error was ignored, so a target that keeps failing does
/// not make the job spin.
const RETRY_DELAY_NS: u64 = 10_000_000;

impl BackupDriver {
    pub(super) async fn run_loop(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let len = self.state.len();
        if self.sync == BackupSync::None {
            while !job.is_cancelled() {
                job.wait_kick().await;
                job.pause_point().await;
            }
            return Ok(());
        }
        // A step is what all workers copy at once: up to `max-chunk` each. The speed limit and
        // pause points come between steps; with a speed set a step is one chunk, so the limit
        // stays fine-grained (see `copy_step`).
        let step = self.state.max_chunk().saturating_mul(self.max_workers);
        let failed = Cell::new(false);
        let r = job
            .copy_in_chunks_split(
                len,
                step,
                [self.on_source_error, self.on_target_error],
                IgnoredChunk::Retry,
                |offset, want| {
                    let (me, job, failed) = (self.clone(), job.clone(), &failed);
                    async move {
                        if failed.replace(false) {
                            job.sleep_ns(RETRY_DELAY_NS).await;
                        }
                        let r = me.copy_step(&job, offset, want).await;
                        failed.set(r.is_err());
                        r
                    }
                },
            )
            .await?;
        debug_assert!(r.is_none(), "backup never skips a chunk");
        if job.is_cancelled() {
            return Ok(());
        }
        // What was copied is durable before the job reports success.
        job.retry_on_error(self.on_target_error, false, || self.target.flush())
            .await
            .map(drop)
    }

    /// Copy what is to do in `[offset, offset+want)`, spread over up to `max-workers` tasks
    /// (each a run of whole clusters). With a speed set only the first `max-chunk` of it is
    /// taken, so the limit applies per chunk. Covers what it took or fails with the first error.
    async fn copy_step(self: &Rc<Self>, job: &Rc<Job>, offset: u64, want: u64) -> ChunkResult {
        let want = match job.speed() {
            0 => want,
            _ => want.min(self.state.max_chunk()),
        };
        if !self.state.needs_copy(offset, want) {
            return Ok((want, 0));
        }
        let cluster = self.state.cluster();
        let per_worker = want.div_ceil(self.max_workers).div_ceil(cluster) * cluster;
        let mut waits = Vec::new();
        let mut pos = offset;
        while pos < offset + want {
            let n = per_worker.min(offset + want - pos);
            if self.state.needs_copy(pos, n) {
                let (tx, rx) = oneshot::<std::result::Result<u64, CopyError>>();
                let me = self.clone();
                job.ctx().env().clone().spawn(
                    &format!("job {} copy {pos}+{n}", job.id()),
                    Box::pin(async move {
                        tx.send(me.state.copy(&me.source, &me.target, pos, n).await);
                    }),
                );
                waits.push(rx);
            }
            pos += n;
        }
        let mut copied = 0;
        let mut first_err = None;
        for rx in waits {
            match rx.await {
                Some(Ok(c)) => copied += c,
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {
                    first_err.get_or_insert((Error::io(Errno::EIO), false));
                }
            }
        }
        match first_err {
            None => Ok((want, copied)),
            Some(e) => Err(e),
        }
    }
}
