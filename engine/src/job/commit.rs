//! The commit job for an intermediate top (`block-commit` where the top is not the active
//! layer): copy what the images from the top down to (not including) the base provide into the
//! base, then make the top's overlay point at the base and drop the committed images from the
//! chain. It completes by itself. (An active top is `active_commit`'s.)
//!
//! Setup, as QEMU 5.x: a `commit_top` filter goes above the top (named by `filter-node-name`,
//! implicit otherwise); the backing edges from the filter down to the base are frozen; the job
//! holds edges on the overlay, the top, every intermediate image and the base (read, write and
//! resize on the base, which may grow to the top's length).
//!
//! `run` walks the top's length in chunks: the chain status from the top down to the base says
//! whether a range is provided above the base; such ranges are read through the top and written
//! into the base (zeroes as write-zeroes). Rate limited on copied bytes; a pause point per chunk.
//! `on-error`: read errors are "read", write errors "write"; `ignore` and `stop` retry the chunk
//! (QEMU's commit does not skip a range), `report` fails the job.
//!
//! A read-only base is reopened read-write first and read-only again at the end (clean); a
//! read-only overlay is reopened read-write just around its header update.
//!
//! `prepare`: the job gives up writing the base, flushes it, rewrites the overlay's header to
//! name the base, then (drained) points the overlay's backing edge at the base; the filter and
//! the committed images drop out of the graph. On failure or cancel the filter is removed and
//! the chain is as before (the base may hold extra data the top still hides).
//!
//! Never names a concrete driver type.

use std::cell::RefCell;
use std::rc::Rc;

use crate::driver::Prealloc;
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::graph::{
    Child, Edge, Node, drop_unused, freeze, insert_filter, open_internal_node, remove_filter,
    reopen_read_only, reopen_read_write, set_backing, set_external_perms, unfreeze,
};
use crate::io::{IoBuf, ReqFlags};
use crate::types::{OnError, Perms};

use super::commit_filter;
use super::stream::chain_edges;
use super::{ChunkResult, IgnoredChunk, Job, JobDriver, JobOptions, JobRegistry};

/// Bytes looked at (and at most copied) per iteration, as QEMU's commit buffer.
pub const COMMIT_CHUNK: u64 = 512 << 10;

/// What an intermediate `block-commit` starts.
pub struct CommitJob {
    /// `None` for `blk commit`: the committed image is nobody's backing file and keeps its own
    /// backing file; nothing in the graph or a header changes.
    overlay: Option<Rc<Node>>,
    top: Rc<Node>,
    base: Rc<Node>,
    /// The backing file name written into the overlay's header (default: the base's filename).
    backing_file: Option<String>,
    on_error: OnError,
    filter: RefCell<Option<Rc<Node>>>,
    top_child: RefCell<Option<Child>>,
    base_child: RefCell<Option<Child>>,
    frozen: RefCell<Vec<Rc<Edge>>>,
    /// Nodes reopened read-write for the job (the base was read-only), switched back at the end.
    reopened: RefCell<Vec<Rc<Node>>>,
}

/// What the QMP command validated.
pub struct CommitSpec {
    /// The image whose backing file is `top`; `None` when `top` has no users at all (the
    /// offline `blk commit`, which only copies).
    pub overlay: Option<Rc<Node>>,
    /// The topmost image committed.
    pub top: Rc<Node>,
    /// The image committed into.
    pub base: Rc<Node>,
    /// `backing-file`.
    pub backing_file: Option<String>,
    /// `on-error`.
    pub on_error: OnError,
    /// `filter-node-name`.
    pub filter_node_name: Option<String>,
}

/// Create and start an intermediate commit. On any setup error the graph is left as it was and
/// the job vanishes without events.
pub async fn start(jobs: &Rc<JobRegistry>, opts: &JobOptions, spec: CommitSpec) -> Result<Rc<Job>> {
    let filter_node_name = spec.filter_node_name.clone();
    let drv = Rc::new(CommitJob {
        overlay: spec.overlay,
        top: spec.top,
        base: spec.base,
        backing_file: spec.backing_file,
        on_error: spec.on_error,
        filter: RefCell::new(None),
        top_child: RefCell::new(None),
        base_child: RefCell::new(None),
        frozen: RefCell::new(Vec::new()),
        reopened: RefCell::new(Vec::new()),
    });
    let job = jobs.create(opts, drv.clone(), None)?;
    match drv.setup(&job, filter_node_name).await {
        Ok(()) => {
            job.start();
            Ok(job)
        }
        Err(e) => {
            drv.teardown().await;
            job.abandon().await;
            Err(e)
        }
    }
}

impl CommitJob {
    async fn setup(&self, job: &Rc<Job>, filter_node_name: Option<String>) -> Result<()> {
        // The base is written: a read-only base (an image opened from a header) is made
        // writable for the job before anything else changes (`teardown` switches it back).
        *self.reopened.borrow_mut() = reopen_read_write(&self.base).await?;
        if let Some(overlay) = &self.overlay {
            let top_name = self.top.name().to_string();
            let filter = open_internal_node(
                self.top.ctx(),
                filter_node_name,
                commit_filter::DRIVER,
                move |octx| commit_filter::build(octx, top_name),
            )
            .await?;
            if let Err(e) = insert_filter(&filter, &self.top).await {
                drop_unused(&filter).await;
                return Err(e);
            }
            *self.filter.borrow_mut() = Some(filter.clone());
            {
                let mut frozen = self.frozen.borrow_mut();
                for edge in chain_edges(&filter, Some(&self.base)) {
                    freeze(&edge);
                    frozen.push(edge);
                }
            }
            job.add_node(overlay, "overlay of top", Perms::NONE, Perms::ALL)?;
        } else {
            // Nobody uses the top: the chain below shares everything already, no filter needed.
            let mut frozen = self.frozen.borrow_mut();
            for edge in chain_edges(&self.top, Some(&self.base)) {
                freeze(&edge);
                frozen.push(edge);
            }
        }
        let mut node = self.top.clone();
        while !Rc::ptr_eq(&node, &self.base) {
            if Rc::ptr_eq(&node, &self.top) {
                let child = job.add_node(&node, "top", Perms::CONSISTENT_READ, Perms::ALL)?;
                *self.top_child.borrow_mut() = Some(child);
            } else {
                job.add_node(&node, "intermediate node", Perms::NONE, Perms::ALL)?;
            }
            node = node.backing().expect("base lies below top").child_node();
        }
        let base = job.add_node(
            &self.base,
            "base",
            Perms::CONSISTENT_READ | Perms::WRITE | Perms::RESIZE,
            Perms::CONSISTENT_READ | Perms::GRAPH_MOD | Perms::WRITE_UNCHANGED,
        )?;
        *self.base_child.borrow_mut() = Some(base);
        Ok(())
    }

    fn thaw(&self) {
        for edge in self.frozen.borrow_mut().drain(..) {
            unfreeze(&edge);
        }
    }

    /// Undo the setup: thaw the chain and take the filter out again.
    async fn teardown(&self) {
        self.thaw();
        let base = self.base_child.borrow().clone();
        if let Some(base) = base {
            // The overlay's edge, back on the top, must not meet a writer of the base.
            set_external_perms(&base, Perms::NONE, Perms::ALL)
                .expect("dropping permissions cannot conflict");
        }
        let filter = self.filter.borrow_mut().take();
        if let Some(f) = filter
            && !f.parents().is_empty()
        {
            // Removing a filter the job inserted only moves its parents back down: with the
            // chain thawed and the job no longer writing, nothing can refuse it.
            remove_filter(&f)
                .await
                .expect("removing the commit filter cannot fail");
        }
        // Back to read-only once nothing of the job writes the base any more. As in QEMU, a
        // failure (someone attached a writer meanwhile) does not fail the job.
        let reopened = std::mem::take(&mut *self.reopened.borrow_mut());
        let _ = reopen_read_only(&reopened).await;
    }

    async fn work(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let top = self
            .top_child
            .borrow()
            .clone()
            .expect("commit job attached");
        let base = self
            .base_child
            .borrow()
            .clone()
            .expect("commit job attached");
        let len = self.top.len();
        job.set_progress_total(len);
        if base.len() < len {
            base.truncate(len, false, Prealloc::Off).await?;
        }
        // QEMU's commit retries a chunk for both ignore and stop (after the resume).
        job.copy_in_chunks(
            len,
            COMMIT_CHUNK,
            self.on_error,
            IgnoredChunk::Retry,
            |o, n| self.copy_chunk(&top, &base, o, n),
        )
        .await
        .map(drop)
    }

    /// Copy one chunk if it is provided above the base: (bytes covered, bytes copied), or the
    /// error and whether it was a read.
    async fn copy_chunk(&self, top: &Child, base: &Child, offset: u64, want: u64) -> ChunkResult {
        let st = top
            .chain_status(offset, want, Some(&self.base))
            .await
            .map_err(|e| (e, true))?;
        let n = st.len;
        if st.node.is_none() {
            return Ok((n, 0));
        }
        if st.mapping.is_zero() {
            base.write_zeroes(offset, n, ReqFlags::MAY_UNMAP)
                .await
                .map_err(|e| (e, false))?;
        } else {
            let (buf, r) = top
                .read(offset, IoBuf::new(n as usize), ReqFlags::NONE)
                .await;
            r.map_err(|e| (e, true))?;
            base.write(offset, buf, ReqFlags::NONE)
                .await
                .1
                .map_err(|e| (e, false))?;
        }
        Ok((n, n))
    }

    async fn finish(self: Rc<Self>) -> Result<()> {
        self.thaw();
        let base = self
            .base_child
            .borrow()
            .clone()
            .expect("commit job attached");
        // Everything committed is durable before the overlay stops naming the top. Flush while
        // the job still writes the base: a flush only reaches the children a node writes to,
        // so once the write permission is gone it would stop at the base's format layer and
        // leave the copied data in the file's volatile cache.
        base.flush().await?;
        // The overlay will read the base directly and does not let others write it.
        set_external_perms(&base, Perms::CONSISTENT_READ, Perms::ALL)?;
        let Some(overlay) = &self.overlay else {
            return Ok(());
        };
        let name = self
            .backing_file
            .clone()
            .unwrap_or_else(|| self.base.driver().filename());
        // A read-only overlay (an intermediate image opened from a header) is writable just for
        // the header update, as QEMU does when it updates a backing file link.
        let reopened = reopen_read_write(overlay).await?;
        let r = crate::request::change_backing_file(
            overlay,
            Some(&name),
            Some(self.base.driver_name()),
        )
        .await;
        let _ = reopen_read_only(&reopened).await;
        r?;
        set_backing(overlay, Some(&self.base)).await?;
        // The filter dropped out with the committed images.
        self.filter.borrow_mut().take();
        Ok(())
    }
}

impl JobDriver for CommitJob {
    fn job_type(&self) -> &'static str {
        "commit"
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.work(job))
    }

    fn prepare(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.finish())
    }

    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.teardown().await })
    }
}
