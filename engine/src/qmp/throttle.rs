//! `block_set_io_throttle`: a device's limits under QEMU's argument names (`device` or `id`,
//! the six rates required, the `_max` and `_max_length` variants, `iops_size`, `group`),
//! validated as a `throttle-group`'s are.

use serde_json::{Value, json};

use crate::backend::QMP_BUCKETS;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::throttle::ThrottleConfig;
use crate::util::Options;

/// `block_set_io_throttle`.
pub fn block_set_io_throttle(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.take_str("device")?;
    let id = args.take_str("id")?;
    let mut cfg = ThrottleConfig::default();
    for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets.iter_mut()) {
        b.avg = int(&mut args, q)?.ok_or_else(|| Error::param_missing(*q))?;
    }
    for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets.iter_mut()) {
        b.max = int(&mut args, &format!("{q}_max"))?.unwrap_or(0);
    }
    for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets.iter_mut()) {
        b.burst_length = int(&mut args, &format!("{q}_max_length"))?.unwrap_or(1);
    }
    cfg.iops_size = int(&mut args, "iops_size")?.unwrap_or(0);
    let group = args.take_str("group")?;
    args.finish()?;
    let name = device
        .or(id)
        .ok_or_else(|| Error::generic("Need exactly one of 'device' and 'id'"))?;
    let bb = engine.backend(&name)?;
    if bb.root_node().is_none() {
        return Err(Error::generic(format!("Device '{name}' has no medium")));
    }
    cfg.validate()?;
    bb.set_io_throttle(cfg, group.as_deref())?;
    Ok(json!({}))
}

/// An `int` argument: negative values are passed on as out of range for the validation to
/// name (QEMU takes them as signed and refuses them there).
fn int(args: &mut Options, key: &str) -> Result<Option<u64>> {
    Ok(args
        .take_i64(key)?
        .map(|n| u64::try_from(n).unwrap_or(crate::throttle::config::VALUE_MAX + 1)))
}
