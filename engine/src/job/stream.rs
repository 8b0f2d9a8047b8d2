//! The stream job (`block-stream`): copy into the top image whatever the images between the top
//! and the base provide, then drop those images from the chain.
//!
//! `run` walks the top's length in chunks; for each, the chain status (through the request
//! path) says which layer provides it. Ranges an intermediate image provides are copied into the
//! top with copy-on-read (`Child::populate`: one serialising request that skips whatever the
//! guest wrote into the top meanwhile). The rate limit counts copied bytes only; every chunk is
//! a pause point, so a drain of the top parks the job.
//!
//! `prepare` rewrites the top's header to name the base (or no backing file), after everything
//! copied is durable, then points the top's backing edge at the base in the live graph
//! (drained). The backing edges from the top down to the base are frozen while the job lives,
//! so a conflicting graph change is refused.
//!
//! Errors follow QEMU's stream: every error counts as a read error for `on-error`; `ignore`
//! carries on but still fails the job at the end (the chain is not shortened over a gap);
//! `stop` pauses and retries the chunk after resume.
//!
//! Never names a concrete driver type.

use std::cell::RefCell;
use std::rc::Rc;

use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{
    Child, Edge, Node, freeze, reopen_read_only, reopen_read_write, set_backing, unfreeze,
};
use crate::types::OnError;

use super::{ChunkResult, IgnoredChunk, Job, JobDriver};

/// Bytes looked at (and at most copied) per iteration, as QEMU's stream buffer.
pub const STREAM_CHUNK: u64 = 512 << 10;

/// What `block-stream` starts.
pub struct StreamJob {
    top: Rc<Node>,
    base: Option<Rc<Node>>,
    /// The backing file name written into the top's header (defaults to the base's filename).
    backing_file: Option<String>,
    on_error: OnError,
    child: RefCell<Option<Child>>,
    frozen: RefCell<Vec<Rc<Edge>>>,
    /// Nodes reopened read-write for the job (the top was read-only), switched back at the end.
    reopened: RefCell<Vec<Rc<Node>>>,
}

impl StreamJob {
    /// A stream of `top` down to `base` (`None`: the whole chain).
    pub fn new(
        top: Rc<Node>,
        base: Option<Rc<Node>>,
        backing_file: Option<String>,
        on_error: OnError,
    ) -> StreamJob {
        StreamJob {
            top,
            base,
            backing_file,
            on_error,
            child: RefCell::new(None),
            frozen: RefCell::new(Vec::new()),
            reopened: RefCell::new(Vec::new()),
        }
    }

    /// The job's edge on the top image (set up by [`StreamJob::attach`]).
    pub fn set_child(&self, child: Child) {
        *self.child.borrow_mut() = Some(child);
    }

    /// Freeze the backing edges from the top down to the base.
    pub fn freeze_chain(&self) {
        let mut frozen = self.frozen.borrow_mut();
        for edge in chain_edges(&self.top, self.base.as_ref()) {
            freeze(&edge);
            frozen.push(edge);
        }
    }

    fn thaw(&self) {
        for edge in self.frozen.borrow_mut().drain(..) {
            unfreeze(&edge);
        }
    }

    /// Switch back what the setup reopened read-write. As in QEMU, a failure here (someone
    /// attached a writer meanwhile) does not fail the job: the node stays writable.
    async fn restore_read_only(&self) {
        let nodes = std::mem::take(&mut *self.reopened.borrow_mut());
        let _ = reopen_read_only(&nodes).await;
    }

    /// Copy into the top what the chunk at `offset` reads from an intermediate image (all
    /// errors count as reads).
    async fn populate_chunk(&self, child: &Child, offset: u64, want: u64) -> ChunkResult {
        let st = child
            .chain_status(offset, want, self.base.as_deref())
            .await
            .map_err(|e| (e, true))?;
        let from_intermediate = st.node.as_ref().is_some_and(|n| !Rc::ptr_eq(n, &self.top));
        if !from_intermediate {
            return Ok((st.len, 0));
        }
        let copied = child
            .populate(offset, st.len)
            .await
            .map_err(|e| (e, true))?;
        Ok((st.len, copied))
    }

    async fn work(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let child = self.child.borrow().clone().expect("stream job attached");
        let len = self.top.len();
        job.set_progress_total(len);
        let first_error = job
            .copy_in_chunks(
                len,
                STREAM_CHUNK,
                self.on_error,
                IgnoredChunk::Skip,
                |o, n| self.populate_chunk(&child, o, n),
            )
            .await?;
        match first_error {
            // An ignored error still leaves a gap: the backing chain must stay.
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn finish(self: Rc<Self>) -> Result<()> {
        self.thaw();
        if self.top.backing().is_none() {
            return Ok(());
        }
        // The copied data is durable before the header stops naming the intermediate images
        // (change_backing_file flushes first).
        let (name, fmt) = match &self.base {
            Some(base) => (
                Some(
                    self.backing_file
                        .clone()
                        .unwrap_or_else(|| base.driver().filename()),
                ),
                Some(base.driver_name().to_string()),
            ),
            None => (None, None),
        };
        crate::request::change_backing_file(&self.top, name.as_deref(), fmt.as_deref()).await?;
        set_backing(&self.top, self.base.as_ref()).await
    }
}

/// The backing edges from `top` down to (the edge into) `base`, or to the chain's end.
pub(crate) fn chain_edges(top: &Rc<Node>, base: Option<&Rc<Node>>) -> Vec<Rc<Edge>> {
    let mut edges = Vec::new();
    let mut node = top.clone();
    while let Some(edge) = node.backing() {
        if base.is_some_and(|b| Rc::ptr_eq(&node, b)) {
            break;
        }
        node = edge.child_node();
        edges.push(edge);
    }
    edges
}

impl JobDriver for StreamJob {
    fn job_type(&self) -> &'static str {
        "stream"
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.work(job))
    }

    fn prepare(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.finish())
    }

    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        self.thaw();
        Box::pin(async move { self.restore_read_only().await })
    }
}

/// Create and start a stream of `top` down to `base`. The job holds the top (read, unchanged
/// writes, graph changes; sharing reads and writes) and every image down to the base (only to
/// block other operations); the backing edges between are frozen. A read-only top is reopened
/// read-write for the job and read-only again when it ends. On a setup error nothing changed
/// and the job vanishes without events.
pub async fn start(
    jobs: &Rc<super::JobRegistry>,
    opts: &super::JobOptions,
    top: Rc<Node>,
    base: Option<Rc<Node>>,
    backing_file: Option<String>,
    on_error: OnError,
) -> Result<Rc<Job>> {
    use crate::types::Perms;
    let drv = Rc::new(StreamJob::new(
        top.clone(),
        base.clone(),
        backing_file,
        on_error,
    ));
    let job = jobs.create(opts, drv.clone(), None)?;
    // The stream writes into the top: a read-only top (an image opened from a header) is made
    // writable for the job, before anything else changes.
    match reopen_read_write(&top).await {
        Ok(nodes) => *drv.reopened.borrow_mut() = nodes,
        Err(e) => {
            job.abandon().await;
            return Err(e);
        }
    }
    let setup = (|| {
        let child = job.add_node(
            &top,
            "top",
            Perms::CONSISTENT_READ | Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD,
            Perms::CONSISTENT_READ | Perms::WRITE_UNCHANGED | Perms::WRITE,
        )?;
        drv.set_child(child);
        let mut node = top.clone();
        while let Some(edge) = node.backing() {
            node = edge.child_node();
            if base.as_ref().is_some_and(|b| Rc::ptr_eq(b, &node)) {
                break;
            }
            job.add_node(
                &node,
                "intermediate node",
                Perms::NONE,
                Perms::CONSISTENT_READ | Perms::WRITE_UNCHANGED | Perms::WRITE | Perms::GRAPH_MOD,
            )?;
        }
        Ok::<(), Error>(())
    })();
    if let Err(e) = setup {
        job.abandon().await;
        drv.restore_read_only().await;
        return Err(e);
    }
    drv.freeze_chain();
    job.start();
    Ok(job)
}
