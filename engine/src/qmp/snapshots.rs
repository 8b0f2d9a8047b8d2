//! `blockdev-snapshot-internal-sync` and `blockdev-snapshot-delete-internal-sync`: argument
//! checks and reply shapes; the checks against the node and the work are the Engine's
//! (`engine/snapshots.rs`).

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::Result;
use crate::util::Options;

/// `blockdev-snapshot-internal-sync device name`.
pub(super) async fn create(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let name = args.require_str("name")?;
    args.finish()?;
    engine.snapshot_internal_create(&device, &name).await?;
    Ok(json!({}))
}

/// `blockdev-snapshot-delete-internal-sync device [id] [name]`: returns the deleted
/// snapshot's SnapshotInfo.
pub(super) async fn delete(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let id = args.take_str("id")?;
    let name = args.take_str("name")?;
    args.finish()?;
    let sn = engine
        .snapshot_internal_delete(&device, id.as_deref(), name.as_deref())
        .await?;
    Ok(sn.to_qapi())
}
