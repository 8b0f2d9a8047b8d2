//! QMP argument parsing of the dirty bitmap commands (`block-dirty-bitmap-add`, `-remove`,
//! `-clear`, `-enable`, `-disable`, `-merge`, `x-debug-block-dirty-bitmap-sha256`), with QEMU
//! 10's messages for badly typed arguments; the verbs are the Engine's (`engine/bitmaps.rs`).

use serde_json::{Value, json};

use crate::engine::{BitmapAddArgs, BitmapRef, Engine};
use crate::error::{Error, ParamProblem, Result};
use crate::util::Options;

/// Run one of the bitmap commands (`name` is the QMP command).
pub(super) async fn run(engine: &Engine, name: &str, mut args: Options) -> Result<Value> {
    if name == "block-dirty-bitmap-add" {
        return add(engine, args);
    }
    let node = args.require_str("node")?;
    if name == "block-dirty-bitmap-merge" {
        let target = args.require_str("target")?;
        let sources = merge_sources(args.take("bitmaps"))?;
        args.finish()?;
        engine.bitmap_merge(&node, &target, &sources)?;
        return Ok(json!({}));
    }
    let bitmap = args.require_str("name")?;
    args.finish()?;
    match name {
        "block-dirty-bitmap-remove" => engine.bitmap_remove(&node, &bitmap).await?,
        "block-dirty-bitmap-clear" => engine.bitmap_clear(&node, &bitmap)?,
        "block-dirty-bitmap-enable" => engine.bitmap_set_enabled(&node, &bitmap, true)?,
        "block-dirty-bitmap-disable" => engine.bitmap_set_enabled(&node, &bitmap, false)?,
        _ => {
            let sha = engine.bitmap_sha256(&node, &bitmap)?;
            return Ok(json!({ "sha256": sha }));
        }
    }
    Ok(json!({}))
}

fn add(engine: &Engine, mut args: Options) -> Result<Value> {
    let node = args.require_str("node")?;
    let name = args.require_str("name")?;
    let granularity = granularity(args.take("granularity"))?;
    let persistent = args.take_bool("persistent")?.unwrap_or(false);
    let disabled = args.take_bool("disabled")?.unwrap_or(false);
    args.finish()?;
    engine.bitmap_add(&BitmapAddArgs {
        node,
        name,
        granularity,
        persistent,
        disabled,
    })?;
    Ok(json!({}))
}

/// `granularity` is a `uint32` in the schema.
pub(super) fn granularity(v: Option<Value>) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(g) if g <= u64::from(u32::MAX) => Ok(Some(g)),
            _ => Err(Error::generic("Parameter 'granularity' expects uint32_t")),
        },
        Some(Value::String(_)) => Err(Error::generic("Parameter 'granularity' expects uint64")),
        Some(_) => Err(Error::generic(
            "Invalid parameter type for 'granularity', expected: integer",
        )),
    }
}

/// `bitmaps`: a list of names (on the target's node) or `{"node", "name"}` objects.
pub(super) fn merge_sources(v: Option<Value>) -> Result<Vec<BitmapRef>> {
    let list = match v {
        None => return Err(Error::param_missing("bitmaps")),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(Error::generic(
                "Invalid parameter type for 'bitmaps', expected: array",
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let r = match item {
            Value::String(name) => BitmapRef::Local(name),
            Value::Object(mut obj) => {
                let mut member = |key: &str| match obj.remove(key) {
                    Some(Value::String(s)) => Ok(s),
                    Some(_) => Err(Error::generic(format!(
                        "Invalid parameter type for 'bitmaps[{i}].{key}', expected: string"
                    ))),
                    None => Err(Error::param_missing(format!("bitmaps[{i}].{key}"))),
                };
                let node = member("node")?;
                let name = member("name")?;
                if let Some(key) = obj.keys().next() {
                    let key = format!("bitmaps[{i}].{key}");
                    return Err(Error::param(key, ParamProblem::Unexpected));
                }
                BitmapRef::Node { node, name }
            }
            // QEMU 10 names the element 'null' here.
            _ => {
                return Err(Error::generic(
                    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
                ));
            }
        };
        out.push(r);
    }
    Ok(out)
}
