//! QMP argument parsing of `blockdev-mirror` and `drive-mirror` (QAPI's checks: types,
//! required members, enum values, unknown members). The checks of the commands themselves are
//! the Engine's.

use serde_json::{Value, json};

use crate::engine::{Engine, MirrorArgs, NewImageMode};
use crate::error::{Error, Result};
use crate::job::mirror::CopyMode;
use crate::types::OnError;
use crate::util::Options;

fn take_enum<T>(args: &mut Options, key: &str, values: &[(&str, T)]) -> Result<Option<T>>
where
    T: Copy,
{
    let Some(s) = args.take_str(key)? else {
        return Ok(None);
    };
    match values.iter().find(|(name, _)| *name == s) {
        Some((_, v)) => Ok(Some(*v)),
        None => {
            let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
            Err(Error::param_invalid(
                key,
                format!(
                    "does not accept value '{s}' (expected {})",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// `mode` of drive-mirror and drive-backup.
pub(super) const NEW_IMAGE_MODES: &[(&str, NewImageMode)] = &[
    ("existing", NewImageMode::Existing),
    ("absolute-paths", NewImageMode::AbsolutePaths),
];

const ON_ERROR: &[(&str, OnError)] = &[
    ("report", OnError::Report),
    ("ignore", OnError::Ignore),
    ("enospc", OnError::Enospc),
    ("stop", OnError::Stop),
];

/// The members both commands have.
fn common(args: &mut Options) -> Result<MirrorArgs> {
    let job_id = args.take_str("job-id")?;
    let device = args.require_str("device")?;
    let target = args.require_str("target")?;
    let replaces = args.take_str("replaces")?;
    let sync = args.require_str("sync")?;
    if !matches!(
        sync.as_str(),
        "full" | "top" | "none" | "incremental" | "bitmap"
    ) {
        return Err(Error::param_invalid(
            "sync",
            format!(
                "does not accept value '{sync}' (expected top, full, none, \
             incremental or bitmap)"
            ),
        ));
    }
    Ok(MirrorArgs {
        job_id,
        device,
        target,
        replaces,
        sync,
        speed: args.take_i64("speed")?,
        granularity: args.take_u64("granularity")?,
        buf_size: args.take_i64("buf-size")?,
        on_source_error: take_enum(args, "on-source-error", ON_ERROR)?,
        on_target_error: take_enum(args, "on-target-error", ON_ERROR)?,
        copy_mode: take_enum(
            args,
            "copy-mode",
            &[
                ("background", CopyMode::Background),
                ("write-blocking", CopyMode::WriteBlocking),
            ],
        )?,
        auto_finalize: args.take_bool("auto-finalize")?,
        auto_dismiss: args.take_bool("auto-dismiss")?,
        ..MirrorArgs::default()
    })
}

/// `blockdev-mirror`.
pub(super) async fn blockdev_mirror(engine: &Engine, mut args: Options) -> Result<Value> {
    let mut a = common(&mut args)?;
    a.filter_node_name = args.take_str("filter-node-name")?;
    args.finish()?;
    engine.blockdev_mirror(a).await?;
    Ok(json!({}))
}

/// `drive-mirror`.
pub(super) async fn drive_mirror(engine: &Engine, mut args: Options) -> Result<Value> {
    let mut a = common(&mut args)?;
    a.format = args.take_str("format")?;
    a.node_name = args.take_str("node-name")?;
    a.mode = take_enum(&mut args, "mode", NEW_IMAGE_MODES)?;
    a.unmap = args.take_bool("unmap")?;
    args.finish()?;
    engine.drive_mirror(a).await?;
    Ok(json!({}))
}
