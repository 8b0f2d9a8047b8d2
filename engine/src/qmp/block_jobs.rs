//! QMP argument parsing of `block-stream` and `block-commit` (wire format only; the checks
//! that need the graph are the Engine's).

use serde_json::{Value, json};

use crate::engine::{BlockJobArgs, CommitArgs, Engine, StreamArgs};
use crate::error::{Error, Result};
use crate::types::OnError;
use crate::util::Options;

/// The options every block job command shares.
fn job_args(args: &mut Options) -> Result<BlockJobArgs> {
    let on_error = match args.take_str("on-error")? {
        None => OnError::Report,
        Some(s) => match s.as_str() {
            "report" | "ignore" | "stop" | "enospc" => OnError::parse(&s, "on-error")?,
            _ => {
                return Err(Error::param_invalid(
                    "on-error",
                    format!("does not accept value '{s}'"),
                ));
            }
        },
    };
    Ok(BlockJobArgs {
        job_id: args.take_str("job-id")?,
        speed: args.take_i64("speed")?.unwrap_or(0),
        on_error,
        auto_finalize: args.take_bool("auto-finalize")?.unwrap_or(true),
        auto_dismiss: args.take_bool("auto-dismiss")?.unwrap_or(true),
    })
}

/// `block-stream`.
pub(super) async fn block_stream(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let a = StreamArgs {
        device,
        base: args.take_str("base")?,
        base_node: args.take_str("base-node")?,
        backing_file: args.take_str("backing-file")?,
        job: job_args(&mut args)?,
    };
    args.finish()?;
    engine.block_stream(a).await?;
    Ok(json!({}))
}

/// `block-commit`.
pub(super) async fn block_commit(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let a = CommitArgs {
        device,
        top: args.take_str("top")?,
        top_node: args.take_str("top-node")?,
        base: args.take_str("base")?,
        base_node: args.take_str("base-node")?,
        backing_file: args.take_str("backing-file")?,
        filter_node_name: args.take_str("filter-node-name")?,
        job: job_args(&mut args)?,
    };
    args.finish()?;
    engine.block_commit(a).await?;
    Ok(json!({}))
}
