//! QMP wire format: parse a command object, check its arguments, call the Engine, and shape the
//! reply (`{"return": ..}` or `{"error": {"class", "desc"}}`). No block-layer logic lives here.
//! This file owns the envelope and the command table (`run`); each command's arguments are
//! checked by its handler: `nodes` (node and object commands), `job_verbs` (job-* and
//! block-job-* verbs), `mirror`, `backup` and `block_jobs` (the job-starting commands),
//! `bitmaps` (the dirty bitmap commands), `transaction` (transactions, external snapshots,
//! change-backing-file), `snapshots` (internal snapshots), `throttle` (block_set_io_throttle), `qom` (qom-get/-set of objects),
//! `nbd` (the NBD server and exports), `monitor` (the QMP socket protocol of `blk serve`).

use serde_json::{Value, json};

mod mirror;

use crate::engine::Engine;
use crate::error::{Error, ErrorClass, Result};
use crate::util::Options;

mod backup;
mod bitmaps;
mod block_jobs;
mod job_verbs;
pub mod monitor;
mod nbd;

pub use nbd::{export_cmdline, nbd_server_cmdline, socket_address};
mod nodes;
mod qom;
mod snapshots;
mod throttle;
mod transaction;

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
    "block_set_io_throttle",
    "qom-get",
    "qom-set",
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
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "x-debug-block-dirty-bitmap-sha256",
    "blockdev-backup",
    "drive-backup",
    "blockdev-snapshot-sync",
    "blockdev-snapshot",
    "change-backing-file",
    "transaction",
    "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-delete-internal-sync",
    "nbd-server-start",
    "nbd-server-stop",
    "nbd-server-add",
    "nbd-server-remove",
    "block-export-add",
    "block-export-del",
    "query-block-exports",
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
    json!({"error": {"class": e.class().as_str(), "desc": e.message_without_hint()}})
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

/// The command table: each command's handler, which checks its own arguments.
async fn run(engine: &Engine, name: &str, args: Options) -> Result<Value> {
    match name {
        "qmp_capabilities" => query(args, |a| {
            let _ = a.take("enable");
            json!({})
        }),
        "query-commands" => query(args, |_| {
            Value::Array(COMMANDS.iter().map(|c| json!({"name": c})).collect())
        }),
        "blockdev-add" => nodes::blockdev_add(engine, args).await,
        "blockdev-reopen" => nodes::blockdev_reopen(engine, args).await,
        "object-add" => nodes::object_add(engine, args).await,
        "object-del" => nodes::object_del(engine, args),
        "blockdev-del" => nodes::blockdev_del(engine, args).await,
        "query-named-block-nodes" => nodes::query_named_block_nodes(engine, args),
        "query-block" => query(args, |_| engine.query_block()),
        "query-blockstats" => query(args, |_| engine.query_blockstats()),
        "x-debug-query-block-graph" => query(args, |_| engine.block_graph()),
        "block-set-write-threshold" => nodes::block_set_write_threshold(engine, args),
        "block_set_io_throttle" => throttle::block_set_io_throttle(engine, args),
        "qom-get" => qom::qom_get(engine, args),
        "qom-set" => qom::qom_set(engine, args),
        "block_resize" => nodes::block_resize(engine, args).await,
        // The VM state changes even when an unknown argument then fails the command.
        "cont" => query(args, |_| {
            engine.cont();
            json!({})
        }),
        "stop" => query(args, |_| {
            engine.stop();
            json!({})
        }),
        "query-jobs" => query(args, |_| engine.query_jobs()),
        "query-block-jobs" => query(args, |_| engine.query_block_jobs()),
        "job-pause" | "job-resume" | "job-cancel" | "job-complete" | "job-finalize"
        | "job-dismiss" => job_verbs::job_verb(engine, name, args).await,
        "block-job-pause" | "block-job-resume" | "block-job-complete" | "block-job-finalize"
        | "block-job-dismiss" => job_verbs::block_job_verb(engine, name, args).await,
        "block-job-cancel" => job_verbs::block_job_cancel(engine, args).await,
        "block-job-set-speed" => job_verbs::block_job_set_speed(engine, args),
        "blockdev-mirror" => mirror::blockdev_mirror(engine, args).await,
        "drive-mirror" => mirror::drive_mirror(engine, args).await,
        "block-stream" => block_jobs::block_stream(engine, args).await,
        "block-commit" => block_jobs::block_commit(engine, args).await,
        "block-dirty-bitmap-add"
        | "block-dirty-bitmap-remove"
        | "block-dirty-bitmap-clear"
        | "block-dirty-bitmap-enable"
        | "block-dirty-bitmap-disable"
        | "block-dirty-bitmap-merge"
        | "x-debug-block-dirty-bitmap-sha256" => bitmaps::run(engine, name, args).await,
        "blockdev-backup" => backup::blockdev_backup(engine, args).await,
        "drive-backup" => backup::drive_backup(engine, args).await,
        "blockdev-snapshot-sync" => transaction::blockdev_snapshot_sync(engine, args).await,
        "blockdev-snapshot" => transaction::blockdev_snapshot(engine, args).await,
        "change-backing-file" => transaction::change_backing_file(engine, args).await,
        "transaction" => transaction::transaction(engine, args).await,
        "blockdev-snapshot-internal-sync" => snapshots::create(engine, args).await,
        "blockdev-snapshot-delete-internal-sync" => snapshots::delete(engine, args).await,
        "nbd-server-start"
        | "nbd-server-stop"
        | "nbd-server-add"
        | "nbd-server-remove"
        | "block-export-add"
        | "block-export-del"
        | "query-block-exports" => nbd::run(engine, name, args).await,
        other => Err(Error::with_class(
            ErrorClass::CommandNotFound,
            format!("The command {other} has not been found"),
        )),
    }
}

/// A command whose reply `f` computes (taking the arguments it knows); any argument left
/// over is then an error.
fn query(mut args: Options, f: impl FnOnce(&mut Options) -> Value) -> Result<Value> {
    let ret = f(&mut args);
    args.finish()?;
    Ok(ret)
}
