//! QMP parsing of the active-layer `block-commit` (see `engine/commit_active.rs`).

use serde_json::{Value, json};

use crate::engine::{ActiveCommitArgs, Engine};
use crate::error::Result;
use crate::types::OnError;
use crate::util::Options;

/// `block-commit`.
pub(super) async fn block_commit(engine: &Engine, mut args: Options) -> Result<Value> {
    let on_error = match args.take_str("on-error")? {
        Some(s) => Some(OnError::parse(&s, "on-error")?),
        None => None,
    };
    let a = ActiveCommitArgs {
        job_id: args.take_str("job-id")?,
        device: args.require_str("device")?,
        top_node: args.take_str("top-node")?,
        base_node: args.take_str("base-node")?,
        speed: args.take_i64("speed")?,
        on_error,
        filter_node_name: args.take_str("filter-node-name")?,
        auto_finalize: args.take_bool("auto-finalize")?,
        auto_dismiss: args.take_bool("auto-dismiss")?,
    };
    args.finish()?;
    engine.block_commit_active(a).await?;
    Ok(json!({}))
}
