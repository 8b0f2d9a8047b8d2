//! QMP wire format: parse a command object, check its arguments, call the Engine, and shape the
//! reply (`{"return": ..}` or `{"error": {"class", "desc"}}`). No block-layer logic lives here.

use serde_json::{Value, json};

mod mirror;

use crate::engine::Engine;
use crate::error::{Error, ErrorClass, Result};
use crate::util::Options;

mod block_jobs;

/// The commands this front end knows, in the order `query-commands` lists them.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "blockdev-add",
    "blockdev-del",
    "blockdev-reopen",
    "object-add",
    "object-del",
    "query-named-block-nodes",
    "query-block",
    "query-blockstats",
    "x-debug-query-block-graph",
    "block-set-write-threshold",
    "block_resize",
    "cont",
    "stop",
    "query-jobs",
    "query-block-jobs",
    "job-pause",
    "job-resume",
    "job-cancel",
    "job-complete",
    "job-finalize",
    "job-dismiss",
    "block-job-pause",
    "block-job-resume",
    "block-job-cancel",
    "block-job-complete",
    "block-job-finalize",
    "block-job-dismiss",
    "block-job-set-speed",
    "blockdev-mirror",
    "drive-mirror",
    "block-stream",
    "block-commit",
];

/// Execute one QMP command object and return the reply object.
pub async fn execute(engine: &Engine, command: &Value) -> Value {
    match dispatch(engine, command).await {
        Ok(ret) => json!({"return": ret}),
        Err(e) => error_reply(&e),
    }
}

/// The QMP error reply for `e`.
pub fn error_reply(e: &Error) -> Value {
    json!({"error": {"class": e.class().as_str(), "desc": e.message()}})
}

async fn dispatch(engine: &Engine, command: &Value) -> Result<Value> {
    let Value::Object(obj) = command else {
        return Err(Error::generic("QMP input must be a JSON object"));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "execute" | "arguments" | "id") {
            return Err(Error::generic(format!(
                "QMP input member '{key}' is unexpected"
            )));
        }
    }
    let name = match obj.get("execute") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Error::generic(
                "QMP input member 'execute' must be a string",
            ));
        }
        None => return Err(Error::generic("QMP input lacks member 'execute'")),
    };
    let args = match obj.get("arguments") {
        None => Options::default(),
        Some(v @ Value::Object(_)) => Options::new(v.clone())?,
        Some(_) => {
            return Err(Error::generic(
                "QMP input member 'arguments' must be an object",
            ));
        }
    };
    run(engine, name, args).await
}

async fn run(engine: &Engine, name: &str, mut args: Options) -> Result<Value> {
    let ret = match name {
        "qmp_capabilities" => {
            let _ = args.take("enable");
            json!({})
        }
        "query-commands" => Value::Array(COMMANDS.iter().map(|c| json!({"name": c})).collect()),
        "blockdev-add" => {
            engine.blockdev_add(args.into_value()).await?;
            return Ok(json!({}));
        }
        "blockdev-reopen" => {
            let options = args
                .take("options")
                .ok_or_else(|| Error::generic("Parameter 'options' is missing"))?;
            args.finish()?;
            let Value::Array(list) = options else {
                return Err(Error::generic(
                    "Invalid parameter type for 'options', expected: array",
                ));
            };
            engine.blockdev_reopen(&list).await?;
            return Ok(json!({}));
        }
        "object-add" => {
            engine.object_add(args.into_value()).await?;
            return Ok(json!({}));
        }
        "object-del" => {
            let id = args.require_str("id")?;
            args.finish()?;
            engine.objects().remove(&id)?;
            return Ok(json!({}));
        }
        "blockdev-del" => {
            let node = args.require_str("node-name")?;
            args.finish()?;
            engine.blockdev_del(&node).await?;
            return Ok(json!({}));
        }
        "query-named-block-nodes" => {
            let flat = args.take_bool("flat")?.unwrap_or(false);
            args.finish()?;
            return Ok(engine.query_named_block_nodes(flat));
        }
        "query-block" => engine.query_block(),
        "query-blockstats" => engine.query_blockstats(),
        "x-debug-query-block-graph" => engine.block_graph(),
        "block-set-write-threshold" => {
            let node = args.require_str("node-name")?;
            let threshold = args
                .take_u64("write-threshold")?
                .ok_or_else(|| Error::generic("Parameter 'write-threshold' is missing"))?;
            args.finish()?;
            engine.set_write_threshold(&node, threshold)?;
            return Ok(json!({}));
        }
        "block_resize" => {
            let device = args.take_str("device")?;
            let node = args.take_str("node-name")?;
            let size = match args.take("size") {
                Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
                Some(Value::Number(_)) => {
                    return Err(Error::generic("Parameter 'size' expects a >0 size"));
                }
                Some(_) => {
                    return Err(Error::generic(
                        "Invalid parameter type for 'size', expected: integer",
                    ));
                }
                None => return Err(Error::generic("Parameter 'size' is missing")),
            };
            args.finish()?;
            engine
                .block_resize(device.as_deref(), node.as_deref(), size)
                .await?;
            return Ok(json!({}));
        }
        "cont" => {
            engine.cont();
            json!({})
        }
        "stop" => {
            engine.stop();
            json!({})
        }
        "query-jobs" => engine.query_jobs(),
        "query-block-jobs" => engine.query_block_jobs(),
        "job-pause" | "job-resume" | "job-cancel" | "job-complete" | "job-finalize"
        | "job-dismiss" => {
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
            return Ok(json!({}));
        }
        "block-job-pause" | "block-job-resume" | "block-job-complete" => {
            let device = args.require_str("device")?;
            args.finish()?;
            let job = engine.find_block_job(&device)?;
            match name {
                "block-job-pause" => job.user_pause()?,
                "block-job-resume" => job.user_resume()?,
                _ => job.user_complete()?,
            }
            return Ok(json!({}));
        }
        "block-job-finalize" | "block-job-dismiss" => {
            let id = args.require_str("id")?;
            args.finish()?;
            let job = engine.find_block_job(&id)?;
            if name == "block-job-finalize" {
                job.user_finalize().await?;
            } else {
                job.user_dismiss()?;
            }
            return Ok(json!({}));
        }
        "block-job-cancel" => {
            let device = args.require_str("device")?;
            let force = args.take_bool("force")?.unwrap_or(false);
            args.finish()?;
            engine.block_job_cancel(&device, force).await?;
            return Ok(json!({}));
        }
        "block-job-set-speed" => {
            let device = args.require_str("device")?;
            let speed = args
                .take_i64("speed")?
                .ok_or_else(|| Error::generic("Parameter 'speed' is missing"))?;
            args.finish()?;
            engine.block_job_set_speed(&device, speed)?;
            return Ok(json!({}));
        }
        "blockdev-mirror" => return mirror::blockdev_mirror(engine, args).await,
        "drive-mirror" => return mirror::drive_mirror(engine, args).await,
        "block-stream" => return block_jobs::block_stream(engine, args).await,
        "block-commit" => return block_jobs::block_commit(engine, args).await,
        other => {
            return Err(Error::with_class(
                ErrorClass::CommandNotFound,
                format!("The command {other} has not been found"),
            ));
        }
    };
    args.finish()?;
    Ok(ret)
}
