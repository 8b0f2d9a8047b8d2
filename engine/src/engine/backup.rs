//! The Engine's backup commands: `blockdev-backup` and `drive-backup` (which first creates and
//! opens its target), and the checks they share (QEMU's `do_backup_common` and
//! `backup_job_create`), each with QEMU's error in QEMU's order. The job is `job::backup`.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::job::backup::{self, BackupParams, BackupSync, BitmapMode};
use crate::job::{Job, JobOptions, JobTxn};
use crate::types::OnError;

use super::backup_bitmap::{self, ResolvedBitmap};
use super::image::{NewTarget, new_target_backing};
use super::{Engine, NewImageMode};

/// `x-perf` of the backup commands.
#[derive(Clone, Debug, Default)]
pub struct BackupPerf {
    /// `use-copy-range` (accepted; copies always go through buffers).
    pub use_copy_range: Option<bool>,
    /// `max-workers` (default 64).
    pub max_workers: Option<i64>,
    /// `max-chunk` (0: no limit beyond the default buffer).
    pub max_chunk: Option<i64>,
    /// `min-cluster-size`.
    pub min_cluster_size: Option<u64>,
}

/// Arguments of `blockdev-backup` and `drive-backup` (those only drive-backup has are `None`
/// for blockdev-backup).
#[derive(Clone, Debug, Default)]
pub struct BackupArgs {
    /// `job-id`.
    pub job_id: Option<String>,
    /// `device`.
    pub device: String,
    /// `target`: a node name (blockdev-backup) or a file name (drive-backup).
    pub target: String,
    /// `sync`: full, top, none, incremental or bitmap.
    pub sync: String,
    /// `speed`.
    pub speed: Option<i64>,
    /// `bitmap`.
    pub bitmap: Option<String>,
    /// `bitmap-mode`.
    pub bitmap_mode: Option<BitmapMode>,
    /// `compress`.
    pub compress: Option<bool>,
    /// `on-source-error`.
    pub on_source_error: Option<OnError>,
    /// `on-target-error`.
    pub on_target_error: Option<OnError>,
    /// `auto-finalize`.
    pub auto_finalize: Option<bool>,
    /// `auto-dismiss`.
    pub auto_dismiss: Option<bool>,
    /// `filter-node-name`.
    pub filter_node_name: Option<String>,
    /// `discard-source`.
    pub discard_source: Option<bool>,
    /// `x-perf`.
    pub x_perf: Option<BackupPerf>,
    /// `format` (drive-backup).
    pub format: Option<String>,
    /// `mode` (drive-backup).
    pub mode: Option<NewImageMode>,
}

impl Engine {
    /// A node by device or node name, with QEMU's `bdrv_lookup_bs` error.
    fn lookup_bs(&self, name: &str) -> Result<Rc<Node>> {
        self.lookup(Some(name), Some(name)).map_err(|_| {
            Error::generic(format!(
                "Cannot find device='{name}' nor node-name='{name}'"
            ))
        })
    }

    /// `blockdev-backup`.
    pub async fn blockdev_backup(&self, args: BackupArgs) -> Result<Rc<Job>> {
        started(self.blockdev_backup_created(args, None).await)
    }

    /// `drive-backup`.
    pub async fn drive_backup(&self, args: BackupArgs) -> Result<Rc<Job>> {
        started(self.drive_backup_created(args, None).await)
    }

    /// `blockdev-backup` up to a created job in `txn` (a transaction starts it in commit, or
    /// cancels it).
    pub async fn blockdev_backup_created(
        &self,
        args: BackupArgs,
        txn: Option<Rc<JobTxn>>,
    ) -> Result<Rc<Job>> {
        let bs = self.lookup_bs(&args.device)?;
        let target = self.lookup_bs(&args.target)?;
        self.backup_common(args, bs, target, txn).await
    }

    /// `drive-backup` up to a created job in `txn`: create (unless mode=existing) and open the
    /// target image, then set the backup up.
    pub async fn drive_backup_created(
        &self,
        args: BackupArgs,
        txn: Option<Rc<JobTxn>>,
    ) -> Result<Rc<Job>> {
        let bs = self.root_bs(&args.device)?;
        // Early check, before a target is created for nothing.
        bs.check_op_blockers()?;
        let mode = args.mode.unwrap_or(NewImageMode::AbsolutePaths);
        let (sync, backing) = new_target_backing(&bs, &args.sync, mode);
        let target = self
            .open_new_target(NewTarget {
                source: &bs,
                path: &args.target,
                format: args.format.clone(),
                mode,
                backing: backing.as_ref(),
                node_name: None,
            })
            .await?;
        let mut args = args;
        args.sync = sync;
        let r = self.backup_common(args, bs, target.clone(), txn).await;
        if r.is_err() && target.refcnt() == 0 {
            crate::graph::close_unused(&target).await;
        }
        r
    }

    /// QEMU's `do_backup_common` and the checks of `backup_job_create`.
    async fn backup_common(
        &self,
        a: BackupArgs,
        bs: Rc<Node>,
        target: Rc<Node>,
        txn: Option<Rc<JobTxn>>,
    ) -> Result<Rc<Job>> {
        let (sync, named) = check_bitmap_args(&a, &bs)?;
        if Rc::ptr_eq(&bs, &target) {
            return Err(Error::generic("Source and target cannot be the same"));
        }
        let compress = a.compress == Some(true);
        let compressible = target
            .driver()
            .caps()
            .write_flags
            .contains(crate::io::ReqFlags::WRITE_COMPRESSED);
        if compress && !compressible {
            return Err(Error::generic(format!(
                "Compression is not supported for this drive {}",
                target.name()
            )));
        }
        if a.discard_source == Some(true) {
            return Err(Error::generic(
                "discard-source is not supported: blk's backup never changes its source",
            ));
        }
        bs.check_op_blockers()?;
        target.check_op_blockers()?;
        let (max_workers, max_chunk, min_cluster_size) = check_perf(&a)?;
        if bs.len() != target.len() {
            return Err(Error::generic(
                "Source and target image have different sizes",
            ));
        }
        check_filter(&a, min_cluster_size)?;
        let job_id = match a.job_id.clone() {
            Some(id) => id,
            None => self.device_of(&bs).unwrap_or_default(),
        };
        let speed = a.speed.unwrap_or(0);
        // The default id is the device's name: "" for a node without one, which QEMU
        // refuses as malformed (not as missing).
        if job_id.is_empty() || crate::types::validate_node_name(&job_id).is_err() {
            return Err(Error::generic(format!("Invalid job ID '{job_id}'")));
        }
        let speed = u64::try_from(speed)
            .map_err(|_| Error::param_invalid("speed", "expects a non-negative value"))?;
        let opts = JobOptions {
            id: job_id,
            internal: false,
            auto_finalize: a.auto_finalize.unwrap_or(true),
            auto_dismiss: a.auto_dismiss.unwrap_or(true),
            speed,
        };
        let bitmap = named.as_ref().map(backup_bitmap::freeze).transpose()?;
        let params = BackupParams {
            source: bs,
            target,
            sync,
            bitmap,
            on_source_error: a.on_source_error.unwrap_or(OnError::Report),
            on_target_error: a.on_target_error.unwrap_or(OnError::Report),
            filter_node_name: a.filter_node_name,
            max_workers,
            max_chunk,
            min_cluster_size,
            compress,
        };
        let created = backup::create(self.jobs(), &opts, params, txn).await;
        if let (Err(_), Some(r)) = (&created, &named) {
            backup_bitmap::undo(r);
        }
        created
    }
}

/// Start a job that was created (the single commands).
fn started(created: Result<Rc<Job>>) -> Result<Rc<Job>> {
    let job = created?;
    job.start();
    Ok(job)
}

/// The sync and bitmap arguments, checked in QEMU's order: the sync mode the job runs
/// (incremental is sync=bitmap with `on-success`) and the named bitmap of `bs`, if any.
fn check_bitmap_args(a: &BackupArgs, bs: &Node) -> Result<(BackupSync, Option<ResolvedBitmap>)> {
    if matches!(a.sync.as_str(), "bitmap" | "incremental") && a.bitmap.is_none() {
        return Err(Error::generic(format!(
            "must provide a valid bitmap name for '{}' sync mode",
            a.sync
        )));
    }
    let mut mode = a.bitmap_mode;
    let mut sync = a.sync.as_str();
    if sync == "incremental" {
        if mode.is_some_and(|m| m != BitmapMode::OnSuccess) {
            return Err(Error::generic(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
            ));
        }
        (sync, mode) = ("bitmap", Some(BitmapMode::OnSuccess));
    }
    let bitmap = match &a.bitmap {
        Some(name) => Some(backup_bitmap::resolve(bs, name, sync, mode)?),
        None if mode.is_some() => {
            return Err(Error::generic(
                "Cannot specify bitmap sync mode without a bitmap",
            ));
        }
        None => None,
    };
    let sync = match sync {
        "full" => BackupSync::Full,
        "top" => BackupSync::Top,
        "none" => BackupSync::None,
        _ => BackupSync::Bitmap,
    };
    Ok((sync, bitmap))
}

/// `x-perf`, checked as QEMU checks it: (max-workers, max-chunk, min-cluster-size).
fn check_perf(a: &BackupArgs) -> Result<(u64, u64, u64)> {
    let perf = a.x_perf.clone().unwrap_or_default();
    let max_workers = perf
        .max_workers
        .unwrap_or(backup::DEFAULT_MAX_WORKERS as i64);
    if !(1..=i64::from(i32::MAX)).contains(&max_workers) {
        return Err(Error::generic(format!(
            "max-workers must be between 1 and {}",
            i32::MAX
        )));
    }
    let max_chunk = perf.max_chunk.unwrap_or(0);
    if max_chunk < 0 {
        return Err(Error::generic(
            "max-chunk must be zero (which means no limit) or positive",
        ));
    }
    let min_cluster_size = perf.min_cluster_size.unwrap_or(0);
    Ok((max_workers as u64, max_chunk as u64, min_cluster_size))
}

/// What QEMU checks while it creates the filter (its node name, the cluster size) and right
/// after (`max-chunk` holds at least one cluster; `job::backup::start` checks that).
fn check_filter(a: &BackupArgs, min_cluster_size: u64) -> Result<()> {
    let created = |e: Error| e.context("Could not create node");
    if let Some(name) = &a.filter_node_name
        && crate::types::validate_node_name(name).is_err()
    {
        return Err(Error::generic(format!(
            "Could not create node: Invalid node-name: '{name}'"
        )));
    }
    backup::check_min_cluster_size(min_cluster_size).map_err(created)
}
