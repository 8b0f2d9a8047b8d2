//! Throttling: per round, I/O limits drawn at random (bps and iops, total or per direction,
//! bursts with their length, `iops-size`) on the guest device (`block_set_io_throttle`, in its
//! own group or a named one) or on a fresh image behind a `throttle` filter node in a
//! `throttle-group` object; a bounded workload through them, sometimes with a drain of the
//! device in the middle (which releases queued requests at once).
//!
//! Oracles: the workload completes (a lost wakeup hangs the run into its limit), no request
//! of a throttle node's fresh device failed, the data is what the model says (`verify`), and `expect rate` (the leaky bucket's
//! bound over the virtual time the workload ran: `scenario/rate_check.rs`). The limits are
//! taken off again at the end of the round, so the other families run as before.

use serde_json::{Map, Value, json};

use super::Gen;
use crate::rng::{below, chance, in_range};

/// The buckets in QEMU's order, as `block_set_io_throttle` and a `throttle-group` name them.
const BUCKETS: [(&str, &str); 6] = [
    ("bps", "bps-total"),
    ("bps_rd", "bps-read"),
    ("bps_wr", "bps-write"),
    ("iops", "iops-total"),
    ("iops_rd", "iops-read"),
    ("iops_wr", "iops-write"),
];

/// One bucket's drawn limits: average, burst rate (0: none), burst length.
type Limit = (u64, u64, u64);

impl Gen {
    /// One throttling round (see the module doc).
    pub(super) fn throttle_round(&mut self) {
        let limits = self.draw_limits();
        if chance(&mut self.r.throttle, 0.5) {
            self.throttle_device(&limits);
        } else {
            self.throttle_node(&limits);
        }
    }

    /// Six buckets, at least one limited; a total and its per-direction buckets never both
    /// (QEMU refuses that).
    fn draw_limits(&mut self) -> ([Limit; 6], u64) {
        let r = &mut self.r.throttle;
        let mut b = [(0, 0, 0); 6];
        let bps = chance(r, 0.7);
        let iops = !bps || chance(r, 0.4);
        for (on, first, lo, hi) in [(bps, 0, 256 << 10, 8 << 20), (iops, 3, 50, 2000)] {
            if !on {
                continue;
            }
            let split = chance(r, 0.4);
            let which: &[usize] = if split { &[1, 2] } else { &[0] };
            for &k in which {
                if split && which.len() == 2 && k == 2 && chance(r, 0.3) {
                    continue;
                }
                let avg = in_range(r, lo, hi);
                let (max, len) = if chance(r, 0.4) {
                    (avg * in_range(r, 2, 8), in_range(r, 1, 4))
                } else {
                    (0, 1)
                };
                b[first + k] = (avg, max, len);
            }
        }
        let iops_size = if iops && chance(r, 0.3) {
            4096 << below(r, 5)
        } else {
            0
        };
        (b, iops_size)
    }

    /// A bounded workload on `device` (this family's own stream: the other families draw what
    /// they drew before), waited for, then the rate oracle against `group`.
    fn throttled_workload(&mut self, device: &str, group: &str, size: u64, drain: Option<&str>) {
        let r = &mut self.r.throttle;
        let mut mix = format!(
            "write:{},read:{},flush:{}",
            20 + below(r, 60),
            below(r, 60),
            below(r, 10)
        );
        if self.f.discard {
            mix.push_str(&format!(",discard:{}", below(r, 10)));
        }
        let (lo, hi) = [(512, 4096), (4096, 65536), (4096, 4096)][below(r, 3) as usize];
        let depth = [1, 2, 4, 8][below(r, 4) as usize];
        let count = in_range(r, 40, 200);
        let w = self.fresh("tw");
        self.step(format!(
            "workload start {w} device={device} mix={mix} bs={lo}..{hi} iodepth={depth} count={count} range=0..{size}"
        ));
        if let Some(node) = drain {
            let ms = in_range(&mut self.r.throttle, 1, 300);
            self.step(format!("advance {ms}ms"));
            self.step(format!("drain begin {node}"));
            self.step("advance 1ms");
            self.step(format!("drain end {node}"));
        }
        self.step(format!("workload wait {w}"));
        let drained = if drain.is_some() { " drained" } else { "" };
        self.step(format!("expect rate {w} group={group}{drained}"));
    }

    /// Limits on the guest device itself, in its own group or a named one; taken off after.
    fn throttle_device(&mut self, limits: &([Limit; 6], u64)) {
        self.comment("throttling: block_set_io_throttle on the guest device");
        self.stop_bg();
        let mut args = Map::new();
        args.insert("device".into(), json!("drive0"));
        for (i, (qmp, _)) in BUCKETS.iter().enumerate() {
            let (avg, max, len) = limits.0[i];
            args.insert((*qmp).into(), json!(avg));
            if max != 0 {
                args.insert(format!("{qmp}_max"), json!(max));
                args.insert(format!("{qmp}_max_length"), json!(len));
            }
        }
        if limits.1 != 0 {
            args.insert("iops_size".into(), json!(limits.1));
        }
        let group = if chance(&mut self.r.throttle, 0.5) {
            let g = self.fresh("tg");
            args.insert("group".into(), json!(g));
            g
        } else {
            "drive0".to_string()
        };
        self.qmp(&json!({"execute": "block_set_io_throttle", "arguments": Value::Object(args)}));
        let drain = (chance(&mut self.r.throttle, 0.25) && self.chain_known)
            .then(|| self.chain[0].node.clone());
        let size = self.size;
        self.throttled_workload("drive0", &group, size, drain.as_deref());
        let mut off = Map::new();
        off.insert("device".into(), json!("drive0"));
        for (qmp, _) in BUCKETS {
            off.insert(qmp.into(), json!(0));
        }
        self.qmp(&json!({"execute": "block_set_io_throttle", "arguments": Value::Object(off)}));
    }

    /// A fresh raw image behind a `throttle` node in a new `throttle-group`, its own device;
    /// verified, then everything is taken down.
    fn throttle_node(&mut self, limits: &([Limit; 6], u64)) {
        self.comment("throttling: a throttle filter node in a throttle-group");
        let n = self.fresh("");
        let (group, node, filter, device) = (
            format!("tgo{n}"),
            format!("tr{n}"),
            format!("tf{n}"),
            format!("tv{n}"),
        );
        let mut l = Map::new();
        for (i, (_, name)) in BUCKETS.iter().enumerate() {
            let (avg, max, len) = limits.0[i];
            if avg != 0 {
                l.insert((*name).into(), json!(avg));
            }
            if max != 0 {
                l.insert(format!("{name}-max"), json!(max));
                l.insert(format!("{name}-max-length"), json!(len));
            }
        }
        if limits.1 != 0 {
            l.insert("iops-size".into(), json!(limits.1));
        }
        let mib = in_range(&mut self.r.throttle, 1, 8);
        let path = format!("{node}.img");
        self.step(format!("image create {path} raw {mib}M"));
        self.qmp(&json!({"execute": "object-add", "arguments": {
            "qom-type": "throttle-group", "id": group, "limits": Value::Object(l)}}));
        self.qmp(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "throttle", "node-name": filter, "throttle-group": group,
            "file": {"driver": "raw", "node-name": node,
                     "file": {"driver": "file", "filename": path}}}}));
        self.step(format!("device add {device} node={filter}"));
        let drain = chance(&mut self.r.throttle, 0.25).then(|| filter.clone());
        self.throttled_workload(&device, &group, mib << 20, drain.as_deref());
        // A fresh image no fault reaches: no request of the device may have failed.
        self.step(format!("expect no-event BLOCK_IO_ERROR device={device}"));
        self.step(format!("io {device} flush"));
        self.step(format!("verify {device}"));
        self.step(format!("device del {device}"));
        self.qmp(&json!({"execute": "blockdev-del", "arguments": {"node-name": filter}}));
        self.qmp(&json!({"execute": "object-del", "arguments": {"id": group}}));
    }
}
