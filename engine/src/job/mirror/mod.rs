//! The mirror job (drive-mirror, blockdev-mirror) and the mirror-like job behind active commit.
//!
//! Setup ([`start`]): a job-private mirror-top filter is inserted above the source (drained),
//! the job is created and takes its edges (the source read-only, the target for writing, the
//! nodes between an active commit's top and base), and starts. The loop (`copy.rs`) copies the
//! dirty granules until the target has caught up, announces READY, and keeps the target in sync
//! while guest writes keep coming (`filter.rs` marks them; write-blocking mode writes them to
//! the target synchronously). The shared bookkeeping and its ordering rules are in `state.rs`.
//!
//! Completion (`job-complete`) is the cutover (QEMU calls it the pivot; QMP and event names keep
//! QEMU's word): the loop stops guest I/O at the filter, checks that nothing is dirty and
//! flushes the target, and `prepare` then cuts over: it replaces the source (or the `replaces`
//! node) by the target in the graph and removes the filter, all while drained. A cancel before
//! READY, or a forced one, leaves the source as it was and drops the target; a cancel without
//! force after READY finishes the copy without cutting over (a consistent target, reported as
//! completed).
//!
//! Never names a concrete driver; image creation for drive-mirror happens in the Engine.

mod copy;
mod filter;
mod state;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::json;

use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::event::DebugEvent;
use crate::graph::{
    Child, DrainedSection, Edge, Node, NodeOptions, ReplaceOptions, freeze, open_internal,
    remove_filter, replace_node, set_external_perms, unfreeze, unref,
};
use crate::types::{ChildRole, OnError, Perms};

use super::{Job, JobDriver, JobOptions, JobRegistry};

pub use filter::FILTER_DRIVER;
pub use state::CopyMode;

/// Default `buf-size`: bytes of copies in flight at once.
pub const DEFAULT_BUF_SIZE: u64 = 16 << 20;

/// What to copy at the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Everything the source's chain provides.
    Full,
    /// What the source's top layer allocates (the target shares the source's backing).
    Top,
    /// Nothing: only new writes (the source is the target's backing).
    None,
    /// Active commit: what is allocated above the target (the base, in the source's chain).
    Commit,
}

impl SyncMode {
    /// Parse QMP's `sync` (mirror accepts full, top and none).
    pub fn parse(s: &str) -> Result<SyncMode> {
        match s {
            "full" => Ok(SyncMode::Full),
            "top" => Ok(SyncMode::Top),
            "none" => Ok(SyncMode::None),
            "incremental" | "bitmap" => {
                Err(Error::generic(format!("Sync mode '{s}' not supported")))
            }
            _ => Err(Error::param_invalid(
                "sync",
                format!("does not accept value '{s}' (expected full, top or none)"),
            )),
        }
    }
}

/// Everything a mirror needs, validated by the caller (the Engine) except what only the job
/// can check.
pub struct MirrorParams {
    /// The node to copy (a root node, or an active commit's top).
    pub source: Rc<Node>,
    /// The node to copy into.
    pub target: Rc<Node>,
    /// The node the target replaces at the cutover (default: the source).
    pub replaces: Option<String>,
    /// What to copy at the start.
    pub sync: SyncMode,
    /// Dirty-bitmap granularity in bytes (0: the target's default).
    pub granularity: u64,
    /// Bytes of copies in flight (0: 16 MiB).
    pub buf_size: i64,
    /// Zero the whole target before copying (then only allocated ranges are copied).
    pub zero_target: bool,
    /// Ranges that read as zeroes may be unmapped on the target.
    pub unmap: bool,
    /// Policy for failed source reads.
    pub on_source_error: OnError,
    /// Policy for failed target writes.
    pub on_target_error: OnError,
    /// Name of the mirror-top filter (`None`: an implicit node).
    pub filter_node_name: Option<String>,
    /// Background or write-blocking.
    pub copy_mode: CopyMode,
    /// The target's backing is the source: the job shares WRITE on the target so the
    /// filter may keep writing the source below it.
    pub target_backs_on_source: bool,
    /// Nodes the caller made writable for the job (an active commit's read-only base): made
    /// read-only again when the job ends, unless a user still writes them (the base a cutover made the device's image).
    pub restore_read_only: Vec<Rc<Node>>,
}

/// The target's default granularity: its cluster size (what it reports as its optimal
/// transfer size) between 4 KiB and 64 KiB, else 64 KiB, as QEMU's default bitmap granularity.
pub fn default_granularity(target: &Node) -> u64 {
    match u64::from(target.limits().opt_transfer) {
        0 => 65536,
        c => c.clamp(4096, 65536).next_power_of_two(),
    }
}

/// The mirror job's driver.
pub struct MirrorDriver {
    state: Rc<state::MirrorState>,
    filter: Rc<Node>,
    source: Rc<Node>,
    target: Rc<Node>,
    replaces: Option<String>,
    sync: SyncMode,
    buf_size: u64,
    zero_target: bool,
    unmap: bool,
    on_source_error: OnError,
    on_target_error: OnError,
    source_child: RefCell<Option<Child>>,
    target_child: RefCell<Option<Child>>,
    /// Backing edges between an active commit's top and base, frozen while the job runs.
    frozen: RefCell<Vec<Rc<Edge>>>,
    complete_requested: Cell<bool>,
    /// Held from the final check until the cutover is done: no guest write between them.
    final_drain: RefCell<Option<DrainedSection>>,
    /// The filter was taken out of the graph (and our reference dropped).
    filter_gone: Cell<bool>,
    /// See `MirrorParams::restore_read_only`.
    restore_read_only: RefCell<Vec<Rc<Node>>>,
}

impl MirrorDriver {
    fn source_child(&self) -> Child {
        self.source_child.borrow().clone().expect("source edge")
    }

    fn target_child(&self) -> Child {
        self.target_child.borrow().clone().expect("target edge")
    }

    fn finishing(&self, job: &Job) -> bool {
        self.complete_requested.get() || job.is_soft_cancelled()
    }

    fn job_edge_ids(&self) -> Vec<crate::types::EdgeId> {
        let mut ids = Vec::new();
        for c in [&self.source_child, &self.target_child] {
            if let Some(c) = c.borrow().as_ref() {
                ids.push(c.edge().id());
            }
        }
        ids
    }

    /// Take the filter out of the graph and drop it (drained; idempotent).
    async fn drop_filter(&self) {
        if self.filter_gone.replace(true) {
            return;
        }
        // The job writes the target no more: give that up before the filter's parents move
        // back onto the source (QEMU drops its target user first too). An active commit's
        // target is the source's backing file, which the source lets others write only while
        // the filter sits above it; still holding WRITE there makes the removal fail and
        // leaves the filter, and the target's reference, in the graph for good.
        if let Some(target) = self.target_child.borrow().as_ref() {
            set_external_perms(target, Perms::NONE, Perms::ALL)
                .expect("dropping permissions cannot conflict");
        }
        // The filter's parents move to whatever it filters now; its own edges go when it
        // closes. A failure would mean a frozen parent edge, which nothing sets on the filter.
        let _ = remove_filter(&self.filter).await;
        *self.state.target.borrow_mut() = None;
        unref(&self.filter).await;
    }

    fn thaw(&self) {
        for e in self.frozen.borrow_mut().drain(..) {
            unfreeze(&e);
        }
    }

    /// The cutover (QEMU's pivot): the target takes the place of the source (or of the
    /// `replaces` node) in the graph.
    async fn cutover(&self) -> Result<()> {
        crate::request::raise_debug_event(&self.source, DebugEvent::JobPivot).await;
        let to_replace = match &self.replaces {
            Some(name) => self
                .source
                .ctx()
                .node(name)
                .ok_or_else(|| Error::generic(format!("Node name '{name}' not found")))?,
            None => self.source.clone(),
        };
        self.thaw();
        // The target no longer needs WRITE for the job: drop it so the parents moving onto
        // the target can take what they need.
        set_external_perms(&self.target_child(), Perms::NONE, Perms::ALL)?;
        let opts = ReplaceOptions {
            keep: self.job_edge_ids(),
        };
        replace_node(&to_replace, &self.target, opts).await
    }
}

impl JobDriver for MirrorDriver {
    fn job_type(&self) -> &'static str {
        if self.sync == SyncMode::Commit {
            "commit"
        } else {
            "mirror"
        }
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.run_loop(job))
    }

    fn can_complete(&self) -> bool {
        true
    }

    fn complete(&self, _job: &Rc<Job>) -> Result<()> {
        if let Some(name) = &self.replaces
            && self.source.ctx().node(name).is_none()
        {
            return Err(Error::generic(format!("Node name '{name}' not found")));
        }
        self.complete_requested.set(true);
        Ok(())
    }

    fn drained_poll(&self) -> bool {
        self.state.ops_in_flight.get() > 0
    }

    fn prepare(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.complete_requested.get() && !job.is_soft_cancelled() {
                self.cutover().await?;
            }
            self.drop_filter().await;
            self.final_drain.borrow_mut().take();
            Ok(())
        })
    }

    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            self.thaw();
            self.drop_filter().await;
            self.final_drain.borrow_mut().take();
            let nodes = self.restore_read_only.take();
            // Refused (and left writable) when a user writes them: the base a cutover made
            // the device's image.
            let _ = crate::graph::reopen_read_only(&nodes).await;
        })
    }
}

/// Undo a setup that failed after the filter went in.
async fn undo_filter(filter: &Rc<Node>) {
    let _ = remove_filter(filter).await;
    unref(filter).await;
}

/// Start a mirror (or the mirror behind an active commit): insert the filter, create the job,
/// take the edges, start. On error nothing is left behind: the graph is as before, no job.
pub async fn start(jobs: &Rc<JobRegistry>, opts: &JobOptions, p: MirrorParams) -> Result<Rc<Job>> {
    let (granularity, buf_size) = sizes(&p)?;
    if Rc::ptr_eq(&p.source, &p.target) {
        return Err(Error::generic("Can't mirror node into itself"));
    }
    let state = Rc::new(state::MirrorState::new(
        p.source.len(),
        granularity,
        p.copy_mode,
    ));
    let filter = insert_filter(&p, &state).await?;
    let driver = Rc::new(MirrorDriver {
        state: state.clone(),
        filter: filter.clone(),
        source: p.source.clone(),
        target: p.target.clone(),
        replaces: p.replaces.clone(),
        sync: p.sync,
        buf_size,
        zero_target: p.zero_target,
        unmap: p.unmap,
        on_source_error: p.on_source_error,
        on_target_error: p.on_target_error,
        source_child: RefCell::new(None),
        target_child: RefCell::new(None),
        frozen: RefCell::new(Vec::new()),
        complete_requested: Cell::new(false),
        final_drain: RefCell::new(None),
        filter_gone: Cell::new(false),
        restore_read_only: RefCell::new(p.restore_read_only.clone()),
    });
    let job = match jobs.create(opts, driver.clone(), None) {
        Ok(j) => j,
        Err(e) => {
            undo_filter(&filter).await;
            return Err(e);
        }
    };
    if let Err(e) = take_edges(&job, &driver, &p).await {
        driver.thaw();
        job.abandon().await;
        undo_filter(&filter).await;
        return Err(e);
    }
    job.start();
    Ok(job)
}

/// The dirty-bitmap granularity and the copy buffer's size (a whole number of granules).
fn sizes(p: &MirrorParams) -> Result<(u64, u64)> {
    let granularity = if p.granularity == 0 {
        default_granularity(&p.target)
    } else {
        p.granularity
    };
    assert!(
        granularity.is_power_of_two(),
        "granularity checked by the caller"
    );
    if p.buf_size < 0 {
        return Err(Error::generic("Invalid parameter 'buf-size'"));
    }
    let buf_size = match p.buf_size as u64 {
        0 => DEFAULT_BUF_SIZE,
        n => n.div_ceil(granularity) * granularity,
    };
    Ok((granularity, buf_size))
}

/// Open the mirror filter over the source and move the source's outside users onto it.
async fn insert_filter(p: &MirrorParams, state: &Rc<state::MirrorState>) -> Result<Rc<Node>> {
    let ctx = p.source.ctx().clone();
    let build_state = state.clone();
    let source_name = p.source.name().to_string();
    let target_name = p.target.name().to_string();
    let write_blocking = p.copy_mode == CopyMode::WriteBlocking;
    let filter = open_internal(
        &ctx,
        p.filter_node_name.as_deref(),
        FILTER_DRIVER,
        NodeOptions::default(),
        Box::new(move |octx| {
            Box::pin(async move {
                let child = octx
                    .open_child(
                        "backing",
                        ChildRole::FILTERED | ChildRole::PRIMARY,
                        json!(source_name),
                    )
                    .await?;
                if write_blocking {
                    octx.open_child("target", ChildRole::DATA, json!(target_name))
                        .await?;
                }
                Ok(Box::new(filter::MirrorTop {
                    child,
                    state: build_state,
                }) as Box<dyn crate::driver::BlockDriver>)
            })
        }),
    )
    .await?;
    // Only the users outside the graph (the device) move above the filter: a node using the
    // source (drive-mirror's new target backed by it) keeps reading the source directly.
    if let Err(e) = replace_node(&p.source, &filter, super::keep_node_parents(&p.source)).await {
        unref(&filter).await;
        return Err(e);
    }
    Ok(filter)
}

/// The job's edges: read the source, write the target, hold the nodes between an active
/// commit's top and base (their backing links frozen), block the filter.
async fn take_edges(job: &Rc<Job>, d: &Rc<MirrorDriver>, p: &MirrorParams) -> Result<()> {
    let source = job.add_node(
        &p.source,
        "source",
        Perms::CONSISTENT_READ,
        Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD,
    )?;
    *d.source_child.borrow_mut() = Some(source);
    let commit = p.sync == SyncMode::Commit;
    let mut perm = Perms::WRITE;
    let mut shared = Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD;
    if commit {
        // The base stays readable through the chain above it and may grow to the top's size.
        perm |= Perms::RESIZE;
        shared |= Perms::CONSISTENT_READ | Perms::WRITE;
    }
    if p.target_backs_on_source {
        shared |= Perms::WRITE;
    }
    let target = job.add_node(&p.target, "target", perm, shared)?;
    *d.state.target.borrow_mut() = Some(target.clone());
    *d.target_child.borrow_mut() = Some(target);
    job.block_node(&d.filter);
    if commit {
        let mut node = p.source.clone();
        while let Some(edge) = node.backing() {
            if Rc::ptr_eq(&edge.child_node(), &p.target) {
                freeze(&edge);
                d.frozen.borrow_mut().push(edge);
                break;
            }
            freeze(&edge);
            d.frozen.borrow_mut().push(edge.clone());
            node = edge.child_node();
            job.add_node(
                &node,
                "intermediate node",
                Perms::NONE,
                Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD,
            )?;
        }
    }
    Ok(())
}
