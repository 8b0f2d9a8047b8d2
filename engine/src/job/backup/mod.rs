//! The backup job (blockdev-backup, drive-backup) and the copy-before-write filter under it.
//!
//! Setup ([`start`]): a copy-before-write filter is inserted above the source (drained) with a
//! fresh [`CopyState`] saying "everything is to copy"; from then on a guest write first copies
//! the old data of the clusters it overwrites to the target. The job then copies what is still
//! to copy in the background (`run.rs`), so when it ends the target holds the source as it was
//! the moment the filter went in: sync=full everything, sync=top what the source's top layer
//! allocates, sync=none nothing but what guest writes pushed out (fleecing: cancel it when the
//! export is done), sync=bitmap what a named bitmap marks (see `bitmap_seam.rs`).
//!
//! When the job ends (done, failed or cancelled) the filter is taken out again; the target is
//! never cut over (it is a copy, not a replacement).
//!
//! Never names a concrete driver; image creation for drive-backup happens in the Engine.

mod bitmap_seam;
mod cbw;
mod copier;
mod run;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::json;

use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{
    Child, GraphCtx, Node, NodeOptions, open_internal, remove_filter, replace_node, unref,
};
use crate::types::{OnError, Perms};

use super::{Job, JobDriver, JobOptions, JobRegistry};

pub use bitmap_seam::{BackupBitmap, BitmapHook, BitmapMode, lookup_cbw_bitmap};
pub use cbw::{CbwOptions, DRIVER as CBW_DRIVER, OnCbwError};
pub use copier::{CopyState, DEFAULT_MAX_CHUNK, check_cluster_size as check_min_cluster_size};

/// Default `x-perf.max-workers`.
pub const DEFAULT_MAX_WORKERS: u64 = 64;

/// Make `copy-before-write` openable by `blockdev-add`.
pub fn register(ctx: &GraphCtx) {
    ctx.register_driver(cbw::DRIVER, cbw::open);
}

/// What a backup copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSync {
    /// Everything the source's chain provides.
    Full,
    /// What the source's top layer allocates.
    Top,
    /// Only what guest writes overwrite while the job runs.
    None,
    /// What a named bitmap marks (needs [`BackupParams::bitmap`]).
    Bitmap,
}

impl BackupSync {
    /// QMP's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupSync::Full => "full",
            BackupSync::Top => "top",
            BackupSync::None => "none",
            BackupSync::Bitmap => "bitmap",
        }
    }
}

/// Everything a backup needs, validated by the caller (the Engine) except what only the job
/// can check.
pub struct BackupParams {
    /// The node to back up.
    pub source: Rc<Node>,
    /// The node to copy into (as long as the source).
    pub target: Rc<Node>,
    /// What to copy.
    pub sync: BackupSync,
    /// sync=bitmap: the named bitmap's bits and what to do with it at the end.
    pub bitmap: Option<BackupBitmap>,
    /// Policy for failed source reads.
    pub on_source_error: OnError,
    /// Policy for failed target writes.
    pub on_target_error: OnError,
    /// Name of the copy-before-write filter (`None`: an implicit node).
    pub filter_node_name: Option<String>,
    /// `x-perf.max-workers`: copies in flight at once.
    pub max_workers: u64,
    /// `x-perf.max-chunk`: largest single copy (0: 1 MiB).
    pub max_chunk: u64,
    /// `x-perf.min-cluster-size` (0: none).
    pub min_cluster_size: u64,
    /// `compress`: write the target's clusters compressed.
    pub compress: bool,
}

/// The backup job's driver.
pub struct BackupDriver {
    state: Rc<CopyState>,
    filter: Rc<Node>,
    /// The filter's edges to the source and the target, through which the job copies.
    source: Child,
    target: Child,
    sync: BackupSync,
    on_source_error: OnError,
    on_target_error: OnError,
    max_workers: u64,
    bitmap: RefCell<Option<BackupBitmap>>,
    filter_gone: Cell<bool>,
}

impl BackupDriver {
    /// The copy state shared with the filter (tests look at it).
    pub fn copy_state(&self) -> &Rc<CopyState> {
        &self.state
    }

    /// Take the filter out of the graph and drop it (drained; idempotent).
    async fn drop_filter(&self) {
        if self.filter_gone.replace(true) {
            return;
        }
        // Its parents move back onto the source; nothing freezes the filter's parent edges.
        let _ = remove_filter(&self.filter).await;
        unref(&self.filter).await;
    }

    /// Tell the bitmaps layer how the job ended (sync=bitmap only).
    fn bitmap_outcome(&self, ok: bool) {
        if let Some(b) = self.bitmap.borrow_mut().take() {
            if ok {
                b.hook.on_success(b.mode);
            } else {
                b.hook
                    .on_failure(b.mode, &self.state.todo_bits(), self.state.cluster());
            }
        }
    }
}

impl JobDriver for BackupDriver {
    fn job_type(&self) -> &'static str {
        "backup"
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.run_loop(job))
    }

    fn commit(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.bitmap_outcome(true) })
    }

    /// As QEMU counts a backup: the total is what the copy bitmap held at the start (the whole
    /// disk, or a bitmap's dirty bytes for sync=bitmap), done is what has been copied of it, by
    /// the job or by copy-before-write for a guest write.
    fn progress(&self) -> Option<(u64, u64)> {
        Some(self.state.progress())
    }

    fn abort(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.bitmap_outcome(false) })
    }

    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.drop_filter().await })
    }
}

/// The copy granularity a backup of `source` into `target` uses (for the Engine's max-chunk
/// check, which QEMU makes once the filter exists).
pub fn cluster_size(target: &Node, min_cluster_size: u64) -> u64 {
    copier::cluster_size(target, min_cluster_size)
}

/// Start a backup: [`create`] it, then start it.
pub async fn start(jobs: &Rc<JobRegistry>, opts: &JobOptions, p: BackupParams) -> Result<Rc<Job>> {
    let job = create(jobs, opts, p, None).await?;
    job.start();
    Ok(job)
}

/// Set a backup up without starting it (a transaction starts it when every action prepared):
/// insert the filter, create the job in `txn` (or a transaction of its own), take the edges.
/// On error nothing is left behind: the graph is as before, no job. Cancelling the created job
/// takes the filter out again.
pub async fn create(
    jobs: &Rc<JobRegistry>,
    opts: &JobOptions,
    mut p: BackupParams,
    txn: Option<Rc<super::JobTxn>>,
) -> Result<Rc<Job>> {
    copier::check_cluster_size(p.min_cluster_size)
        .map_err(|e| e.context("Could not create node"))?;
    let cluster = copier::cluster_size(&p.target, p.min_cluster_size);
    if p.max_chunk != 0 && p.max_chunk < cluster {
        return Err(Error::generic(format!(
            "Required max-chunk ({}) is less than backup cluster size ({cluster})",
            p.max_chunk
        )));
    }
    let state = CopyState::new(p.source.len(), cluster);
    state.set_max_chunk(p.max_chunk);
    state.set_compress(p.compress);
    match (p.sync, &p.bitmap) {
        (BackupSync::Top, _) => {
            state.skip_unallocated_below(p.source.backing().map(|e| e.child_node()));
        }
        (BackupSync::Bitmap, Some(b)) => state.seed_from(&b.bits, b.granularity),
        (BackupSync::Bitmap, None) => {
            return Err(Error::generic(
                "must provide a valid bitmap name for 'bitmap' sync mode",
            ));
        }
        _ => {}
    }
    let (filter, source, target) = insert_filter(&p, &state).await?;
    let driver = Rc::new(BackupDriver {
        state,
        filter: filter.clone(),
        source,
        target,
        sync: p.sync,
        on_source_error: p.on_source_error,
        on_target_error: p.on_target_error,
        max_workers: p.max_workers.max(1),
        bitmap: RefCell::new(p.bitmap.take()),
        filter_gone: Cell::new(false),
    });
    let job = match jobs.create(opts, driver.clone(), txn) {
        Ok(j) => j,
        Err(e) => {
            driver.drop_filter().await;
            return Err(e);
        }
    };
    if let Err(e) = take_edges(&job, &driver, &p) {
        job.abandon().await;
        driver.drop_filter().await;
        return Err(e);
    }
    Ok(job)
}

/// Open the copy-before-write filter over the source and move the source's users outside the
/// graph (the device) onto it. Returns the filter and its edges to the source and the target.
async fn insert_filter(
    p: &BackupParams,
    state: &Rc<CopyState>,
) -> Result<(Rc<Node>, Child, Child)> {
    let ctx = p.source.ctx().clone();
    let build_state = state.clone();
    let source_name = p.source.name().to_string();
    let target_name = p.target.name().to_string();
    let edges: Rc<RefCell<Option<(Child, Child)>>> = Rc::default();
    let slot = edges.clone();
    let filter = open_internal(
        &ctx,
        p.filter_node_name.as_deref(),
        cbw::DRIVER,
        NodeOptions::default(),
        Box::new(move |octx| {
            Box::pin(async move {
                let (file, target) =
                    cbw::Cbw::open_children(&octx, json!(source_name), json!(target_name)).await?;
                *slot.borrow_mut() = Some((file.clone(), target.clone()));
                let opts = CbwOptions::default();
                Ok(Box::new(cbw::Cbw::new(file, target, build_state, opts))
                    as Box<dyn crate::driver::BlockDriver>)
            })
        }),
    )
    .await
    .map_err(|e| e.context("Could not create node"))?;
    // The device moves above the filter; nodes using the source (a fleecing target backed by
    // it) keep reading the source directly.
    if let Err(e) = replace_node(&p.source, &filter, super::keep_node_parents(&p.source)).await {
        unref(&filter).await;
        return Err(e);
    }
    let (source, target) = edges.take().expect("the filter opened its children");
    Ok((filter, source, target))
}

/// The job's own edges take no permission (the filter's edges do the I/O): they make the job a
/// drain parent of the source and the target (a drain pauses it) and block other operations
/// on the filter, the source and the target.
fn take_edges(job: &Rc<Job>, d: &Rc<BackupDriver>, p: &BackupParams) -> Result<()> {
    job.add_node(&p.source, "source", Perms::NONE, Perms::ALL)?;
    job.add_node(&p.target, "target", Perms::NONE, Perms::ALL)?;
    job.block_node(&d.filter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_mode_parses_qmp_names() {
        assert_eq!(BitmapMode::parse("never").unwrap(), BitmapMode::Never);
        assert_eq!(
            BitmapMode::parse("x").unwrap_err().message(),
            "Parameter 'bitmap-mode' does not accept value 'x'"
        );
    }
}
