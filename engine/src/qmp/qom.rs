//! `qom-get` and `qom-set` on user-created objects, as QEMU answers them: an object is named by
//! its id or `/objects/ID`; every object has its `type`; a `throttle-group` reads its whole
//! `limits` and each flat `x-` limit, and takes new `limits` while in use (the members given
//! replace the current ones, the rest stay, and the result is validated as at creation).
//! Other properties of a secret are not kept by blk and are refused by name.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::{Error, ErrorClass, Result};
use crate::util::Options;

/// The object `path` names and its type.
fn resolve(engine: &Engine, path: &str) -> Result<(String, &'static str)> {
    let id = path.strip_prefix("/objects/").unwrap_or(path);
    match engine.objects().type_name(id) {
        Some(t) => Ok((id.to_string(), t)),
        None => Err(Error::with_class(
            ErrorClass::DeviceNotFound,
            format!("Device '{path}' not found"),
        )),
    }
}

fn not_found(ty: &str, property: &str) -> Error {
    Error::generic(format!("Property '{ty}.{property}' not found"))
}

/// `qom-get`.
pub fn qom_get(engine: &Engine, mut args: Options) -> Result<Value> {
    let path = args.require_str("path")?;
    let property = args.require_str("property")?;
    args.finish()?;
    let (id, ty) = resolve(engine, &path)?;
    if property == "type" {
        return Ok(json!(ty));
    }
    if ty != "throttle-group" {
        return Err(Error::generic(format!(
            "Property '{ty}.{property}' cannot be read in blk"
        )));
    }
    let cfg = engine.objects().throttle_group(&id)?.config();
    if property == "limits" {
        return Ok(cfg.to_limits());
    }
    cfg.flat_property(&property)
        .map(Value::from)
        .ok_or_else(|| not_found(ty, &property))
}

/// `qom-set`.
pub fn qom_set(engine: &Engine, mut args: Options) -> Result<Value> {
    let path = args.require_str("path")?;
    let property = args.require_str("property")?;
    let value = args
        .take("value")
        .ok_or_else(|| Error::param_missing("value"))?;
    args.finish()?;
    let (id, ty) = resolve(engine, &path)?;
    if property == "type" {
        return Err(Error::generic(format!(
            "Property '{ty}.type' is not writable"
        )));
    }
    if ty != "throttle-group" {
        return Err(Error::generic(format!(
            "Property '{ty}.{property}' cannot be set in blk"
        )));
    }
    let group = engine.objects().throttle_group(&id)?;
    if property != "limits" {
        return match group.config().flat_property(&property) {
            Some(_) => Err(Error::generic(
                "Property cannot be set after initialization",
            )),
            None => Err(not_found(ty, &property)),
        };
    }
    // Named as QEMU names the members in its errors: `limits.KEY`.
    let limits = Options::new(json!({ "limits": value }))?
        .take_dict("limits")?
        .unwrap_or_default();
    let cfg = group.config().merged(limits)?;
    cfg.validate()?;
    group.set_config(cfg);
    Ok(json!({}))
}
