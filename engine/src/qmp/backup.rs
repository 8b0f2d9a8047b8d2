//! QMP argument parsing of `blockdev-backup` and `drive-backup` (QAPI's checks: types, required
//! members, enum values, unknown members, as QEMU 10 words them). The checks of the commands
//! themselves are the Engine's.

use serde_json::{Value, json};

use crate::engine::{BackupArgs, BackupPerf, Engine};
use crate::error::{Error, Result};
use crate::job::backup::BitmapMode;
use crate::types::OnError;
use crate::util::Options;

/// An enum member: QAPI's refusal names the value only.
pub(super) fn take_enum<T: Copy>(
    args: &mut Options,
    key: &str,
    values: &[(&str, T)],
) -> Result<Option<T>> {
    let Some(s) = args.take_str(key)? else {
        return Ok(None);
    };
    match values.iter().find(|(name, _)| *name == s) {
        Some((_, v)) => Ok(Some(*v)),
        None => Err(Error::param_invalid(
            key,
            format!("does not accept value '{s}'"),
        )),
    }
}

const ON_ERROR: &[(&str, OnError)] = &[
    ("report", OnError::Report),
    ("ignore", OnError::Ignore),
    ("enospc", OnError::Enospc),
    ("stop", OnError::Stop),
];

const SYNC: &[(&str, &str)] = &[
    ("top", "top"),
    ("full", "full"),
    ("none", "none"),
    ("incremental", "incremental"),
    ("bitmap", "bitmap"),
];

fn x_perf(args: &mut Options) -> Result<Option<BackupPerf>> {
    let Some(mut p) = args.take_dict("x-perf")? else {
        return Ok(None);
    };
    let perf = BackupPerf {
        use_copy_range: p.take_bool("use-copy-range")?,
        max_workers: p.take_i64("max-workers")?,
        max_chunk: p.take_i64("max-chunk")?,
        min_cluster_size: p.take_u64("min-cluster-size")?,
    };
    p.finish()?;
    Ok(Some(perf))
}

/// The members both commands have.
pub(super) fn common(args: &mut Options) -> Result<BackupArgs> {
    let job_id = args.take_str("job-id")?;
    let device = args.require_str("device")?;
    let sync = take_enum(args, "sync", SYNC)?.ok_or_else(|| Error::param_missing("sync"))?;
    Ok(BackupArgs {
        job_id,
        device,
        sync: sync.to_string(),
        speed: args.take_i64("speed")?,
        bitmap: args.take_str("bitmap")?,
        bitmap_mode: take_enum(
            args,
            "bitmap-mode",
            &[
                ("on-success", BitmapMode::OnSuccess),
                ("never", BitmapMode::Never),
                ("always", BitmapMode::Always),
            ],
        )?,
        compress: args.take_bool("compress")?,
        on_source_error: take_enum(args, "on-source-error", ON_ERROR)?,
        on_target_error: take_enum(args, "on-target-error", ON_ERROR)?,
        auto_finalize: args.take_bool("auto-finalize")?,
        auto_dismiss: args.take_bool("auto-dismiss")?,
        filter_node_name: args.take_str("filter-node-name")?,
        discard_source: args.take_bool("discard-source")?,
        x_perf: x_perf(args)?,
        target: args.require_str("target")?,
        ..BackupArgs::default()
    })
}

/// `blockdev-backup`.
pub(super) async fn blockdev_backup(engine: &Engine, mut args: Options) -> Result<Value> {
    let a = common(&mut args)?;
    args.finish()?;
    engine.blockdev_backup(a).await?;
    Ok(json!({}))
}

/// `drive-backup`.
pub(super) async fn drive_backup(engine: &Engine, mut args: Options) -> Result<Value> {
    let a = drive_backup_args(&mut args)?;
    args.finish()?;
    engine.drive_backup(a).await?;
    Ok(json!({}))
}

/// The members of `drive-backup` (also a transaction action's data).
pub(super) fn drive_backup_args(args: &mut Options) -> Result<BackupArgs> {
    let mut a = common(args)?;
    a.format = args.take_str("format")?;
    a.mode = take_enum(args, "mode", super::mirror::NEW_IMAGE_MODES)?;
    Ok(a)
}
