//! QMP argument parsing of the node and object commands (`blockdev-add`, `blockdev-reopen`,
//! `blockdev-del`, `object-add`, `object-del`, `query-named-block-nodes`,
//! `block-set-write-threshold`, `block_resize`); the graph work is the Engine's.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::util::Options;

/// `blockdev-add`: the whole argument object is the node's options.
pub(super) async fn blockdev_add(engine: &Engine, args: Options) -> Result<Value> {
    engine.blockdev_add(args.into_value()).await?;
    Ok(json!({}))
}

/// `blockdev-reopen`: a list of node option objects.
pub(super) async fn blockdev_reopen(engine: &Engine, mut args: Options) -> Result<Value> {
    let options = args
        .take("options")
        .ok_or_else(|| Error::param_missing("options"))?;
    args.finish()?;
    let Value::Array(list) = options else {
        return Err(Error::generic(
            "Invalid parameter type for 'options', expected: array",
        ));
    };
    engine.blockdev_reopen(&list).await?;
    Ok(json!({}))
}

/// `object-add`: the whole argument object is the object's properties.
pub(super) async fn object_add(engine: &Engine, args: Options) -> Result<Value> {
    engine.object_add(args.into_value()).await?;
    Ok(json!({}))
}

/// `object-del`.
pub(super) fn object_del(engine: &Engine, mut args: Options) -> Result<Value> {
    let id = args.require_str("id")?;
    args.finish()?;
    engine.objects().remove(&id)?;
    Ok(json!({}))
}

/// `blockdev-del`.
pub(super) async fn blockdev_del(engine: &Engine, mut args: Options) -> Result<Value> {
    let node = args.require_str("node-name")?;
    args.finish()?;
    engine.blockdev_del(&node).await?;
    Ok(json!({}))
}

/// `query-named-block-nodes`.
pub(super) fn query_named_block_nodes(engine: &Engine, mut args: Options) -> Result<Value> {
    let flat = args.take_bool("flat")?.unwrap_or(false);
    args.finish()?;
    Ok(engine.query_named_block_nodes(flat))
}

/// `block-set-write-threshold`.
pub(super) fn block_set_write_threshold(engine: &Engine, mut args: Options) -> Result<Value> {
    let node = args.require_str("node-name")?;
    let threshold = args
        .take_u64("write-threshold")?
        .ok_or_else(|| Error::param_missing("write-threshold"))?;
    args.finish()?;
    engine.set_write_threshold(&node, threshold)?;
    Ok(json!({}))
}

/// `block_resize`: by device or node name; the size a non-negative integer.
pub(super) async fn block_resize(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.take_str("device")?;
    let node = args.take_str("node-name")?;
    let size = match args.take("size") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
        Some(Value::Number(_)) => {
            return Err(Error::param_invalid("size", "expects a >0 size"));
        }
        Some(_) => {
            return Err(Error::generic(
                "Invalid parameter type for 'size', expected: integer",
            ));
        }
        None => return Err(Error::param_missing("size")),
    };
    args.finish()?;
    engine
        .block_resize(device.as_deref(), node.as_deref(), size)
        .await?;
    Ok(json!({}))
}
