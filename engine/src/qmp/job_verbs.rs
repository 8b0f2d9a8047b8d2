//! QMP argument parsing of the job verbs: `job-*` (argument `id`) and `block-job-*`
//! (argument `device` or `id`, as QEMU names it per command); the job state machine is the
//! job core's.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::util::Options;

/// `job-pause`, `job-resume`, `job-cancel`, `job-complete`, `job-finalize`, `job-dismiss`.
pub(super) async fn job_verb(engine: &Engine, name: &str, mut args: Options) -> Result<Value> {
    let id = args.require_str("id")?;
    args.finish()?;
    let job = engine.find_job(&id)?;
    match name {
        "job-pause" => job.user_pause()?,
        "job-resume" => job.user_resume()?,
        "job-cancel" => job.cancel(true).await?,
        "job-complete" => job.user_complete()?,
        "job-finalize" => job.user_finalize().await?,
        _ => job.user_dismiss()?,
    }
    Ok(json!({}))
}

/// `block-job-pause`, `block-job-resume`, `block-job-complete` (argument `device`),
/// `block-job-finalize`, `block-job-dismiss` (argument `id`).
pub(super) async fn block_job_verb(
    engine: &Engine,
    name: &str,
    mut args: Options,
) -> Result<Value> {
    let key = match name {
        "block-job-finalize" | "block-job-dismiss" => "id",
        _ => "device",
    };
    let id = args.require_str(key)?;
    args.finish()?;
    let job = engine.find_block_job(&id)?;
    match name {
        "block-job-pause" => job.user_pause()?,
        "block-job-resume" => job.user_resume()?,
        "block-job-complete" => job.user_complete()?,
        "block-job-finalize" => job.user_finalize().await?,
        _ => job.user_dismiss()?,
    }
    Ok(json!({}))
}

/// `block-job-cancel`.
pub(super) async fn block_job_cancel(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let force = args.take_bool("force")?.unwrap_or(false);
    args.finish()?;
    engine.block_job_cancel(&device, force).await?;
    Ok(json!({}))
}

/// `block-job-set-speed`.
pub(super) fn block_job_set_speed(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let speed = args
        .take_i64("speed")?
        .ok_or_else(|| Error::param_missing("speed"))?;
    args.finish()?;
    engine.block_job_set_speed(&device, speed)?;
    Ok(json!({}))
}
