//! A device's own I/O limits (`block_set_io_throttle`): the backend joins a throttle group
//! (named by `group`, else by the device) and each guest read, write, write-zeroes and discard
//! passes the group's buckets after it is counted in flight, so a drain waits for queued
//! requests, and releases them at once (as QEMU does). `query-block` shows the limits.

use std::rc::Rc;

use serde_json::{Map, Value, json};

use super::{BlockBackend, InFlight};
use crate::error::Result;
use crate::throttle::{Direction, ThrottleConfig, ThrottleGroup};

/// The group a throttled device belongs to.
pub(super) struct DeviceThrottle {
    name: String,
    group: Rc<ThrottleGroup>,
    member: u64,
}

/// QMP's names of the six buckets, in the order of [`ThrottleConfig::buckets`].
pub const QMP_BUCKETS: [&str; 6] = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];

impl BlockBackend {
    /// Count a guest request of `bytes` in `dir` in flight, then wait for the device's limits.
    pub(super) async fn admit_io(&self, dir: Direction, bytes: u64) -> InFlight<'_> {
        let guard = self.admit().await;
        let member = self
            .throttle
            .borrow()
            .as_ref()
            .map(|t| (t.group.clone(), t.member));
        if let Some((group, member)) = member {
            group.intercept(member, dir, bytes).await;
        }
        guard
    }

    /// `block_set_io_throttle` (`config` validated): limits on (joining `group`, by default
    /// the group named after the device, and moving to `group` when it names another) or, with
    /// every limit 0, off (queued requests are released first).
    pub fn set_io_throttle(&self, config: ThrottleConfig, group: Option<&str>) -> Result<()> {
        let objects = &self.ctx.objects;
        let current = self.throttle.borrow().as_ref().map(|t| t.name.clone());
        let wanted = match (config.enabled(), current, group) {
            (false, None, _) => return Ok(()),
            (false, Some(_), _) => None,
            (true, None, g) => Some(g.unwrap_or(&self.name).to_string()),
            (true, Some(cur), Some(g)) if g != cur => Some(g.to_string()),
            (true, Some(cur), _) => Some(cur),
        };
        let same = wanted.as_deref() == self.throttle.borrow().as_ref().map(|t| t.name.as_str());
        if !same && let Some(old) = self.throttle.borrow_mut().take() {
            old.group.leave(old.member);
            objects.forget_unused_group(&old.name);
        }
        let Some(name) = wanted else { return Ok(()) };
        if !same {
            let group = objects.group_by_name(self.ctx.env(), &name);
            let member = group.join();
            *self.throttle.borrow_mut() = Some(DeviceThrottle {
                name,
                group,
                member,
            });
        }
        if let Some(t) = self.throttle.borrow().as_ref() {
            t.group.set_config(config);
        }
        Ok(())
    }

    /// A drained section of the device begins or ends: queued requests go at once, and
    /// requests pass unthrottled until it ends.
    pub(super) fn throttle_drained(&self, begin: bool) {
        if let Some(t) = self.throttle.borrow().as_ref() {
            if begin {
                t.group.drain_begin(t.member);
            } else {
                t.group.drain_end(t.member);
            }
        }
    }

    /// The device leaves its group (it is going away).
    pub(super) fn throttle_detach(&self) {
        if let Some(t) = self.throttle.borrow_mut().take() {
            t.group.leave(t.member);
            self.ctx.objects.forget_unused_group(&t.name);
        }
    }

    /// Add the device's limits to its `inserted` description as QEMU shows them: the six
    /// rates, each burst rate and length that is set, `iops_size` when set, and the group.
    pub(super) fn describe_throttle(&self, inserted: &mut Value) {
        let Some(t) = self
            .throttle
            .borrow()
            .as_ref()
            .map(|t| (t.name.clone(), t.group.config()))
        else {
            return;
        };
        let (name, cfg) = t;
        let mut fields = Map::new();
        for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets) {
            fields.insert(q.to_string(), json!(b.avg));
        }
        for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets) {
            if b.max != 0 {
                fields.insert(format!("{q}_max"), json!(b.max));
            }
        }
        for (q, b) in QMP_BUCKETS.iter().zip(cfg.buckets) {
            if b.max != 0 {
                fields.insert(format!("{q}_max_length"), json!(b.burst_length));
            }
        }
        if cfg.iops_size != 0 {
            fields.insert("iops_size".into(), json!(cfg.iops_size));
        }
        fields.insert("group".into(), json!(name));
        let Value::Object(map) = inserted else { return };
        let old = std::mem::take(map);
        for (k, v) in old {
            let after = k == "detect_zeroes";
            map.insert(k, v);
            if after {
                map.extend(std::mem::take(&mut fields));
            }
        }
        map.extend(fields);
    }
}
