//! `expect rate WORKLOAD group=GROUP`: the throttling oracle. A workload that ran under a
//! throttle group's limits (unchanged while it ran, and started with nothing else of the group
//! in flight) may not have moved more, in any limited bucket, than the leaky bucket lets
//! through over the virtual time it ran: the average rate times that time, plus the bucket's
//! size (the burst), plus the requests that may start while the bucket is not yet over its size
//! (one per direction: a request passes while the bucket is not over its size, and the others
//! then wait), plus, when a drain released the queued requests at once (`drained`), the
//! workload's depth.

use engine::throttle::ThrottleConfig;

use super::workload::{WorkloadSpec, WorkloadStats};
use super::world::World;

/// A workload that ended: what `expect rate` judges.
#[derive(Clone, Debug)]
pub(super) struct EndedWorkload {
    pub(super) spec: WorkloadSpec,
    pub(super) stats: WorkloadStats,
    pub(super) started_ns: u64,
    pub(super) ended_ns: u64,
}

/// QMP's names of the six buckets, in [`ThrottleConfig::buckets`] order.
const BUCKETS: [&str; 6] = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];

/// The units of bucket `i` the workload moved: bytes for the bps buckets, requests for the
/// iops ones; reads, or writes, or both. Never more than the group accounted: `iops_size`
/// counts a large request as several, and discards are left out (a node without
/// `discard=unmap` drops them before any throttle, as QEMU does).
fn moved(stats: &WorkloadStats, i: usize) -> u64 {
    let per_op = if i < 3 { &stats.bytes } else { &stats.ops };
    let (reads, writes) = (per_op[0], per_op[1]);
    match i % 3 {
        0 => reads + writes,
        1 => reads,
        _ => writes,
    }
}

/// Check `w` against `cfg`: a note naming the buckets checked, or what went over.
pub(super) fn check_rate(
    w: &EndedWorkload,
    cfg: &ThrottleConfig,
    drained: bool,
) -> Result<String, String> {
    let secs = w.ended_ns.saturating_sub(w.started_ns) as f64 / 1e9;
    let bs_max = w.spec.bs.1;
    let mut checked = Vec::new();
    for (i, b) in cfg.buckets.iter().enumerate() {
        if b.avg == 0 {
            continue;
        }
        // The size the engine gives the bucket: the burst rate times its length, or a tenth
        // of a second at the average rate.
        let max = if b.max == 0 { b.avg / 10 } else { b.max };
        let size = (max * b.burst_length) as f64;
        let unit = if i < 3 {
            bs_max
        } else if cfg.iops_size != 0 {
            bs_max.div_ceil(cfg.iops_size).max(1)
        } else {
            1
        };
        let released = if drained {
            u64::from(w.spec.iodepth)
        } else {
            0
        };
        let slack = (released + 2) * unit;
        let allowed = b.avg as f64 * secs + size + slack as f64;
        let got = moved(&w.stats, i);
        if got as f64 > allowed {
            return Err(format!(
                "{got} units through bucket {} in {secs:.6} s: over the {} the limit allows \
                 ({}/s, bucket size {size}, slack {slack})",
                BUCKETS[i], allowed as u64, b.avg
            ));
        }
        checked.push(format!("{} {got}<={}", BUCKETS[i], allowed as u64));
    }
    if checked.is_empty() {
        return Err("the group limits nothing".into());
    }
    Ok(checked.join(", "))
}

impl World<'_> {
    /// `expect rate WORKLOAD group=GROUP`: `Ok` with a note, or what is wrong.
    pub(super) fn expect_rate(
        &mut self,
        workload: &str,
        group: &str,
        drained: bool,
    ) -> Result<(), String> {
        let w = self
            .ended
            .get(workload)
            .ok_or_else(|| format!("no ended workload named '{workload}'"))?;
        let g = self
            .engine
            .objects()
            .find_group(group)
            .ok_or_else(|| format!("no throttle group '{group}'"))?;
        let note = check_rate(w, &g.config(), drained)?;
        self.note(&format!("  {workload}: {note}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(bytes: u64, secs: u64) -> EndedWorkload {
        EndedWorkload {
            spec: WorkloadSpec {
                device: "d0".into(),
                mix: [1, 0, 0, 0],
                bs: (4096, 4096),
                iodepth: 1,
                range: None,
                count: None,
                think_ns: 0,
            },
            stats: WorkloadStats {
                ops: [bytes / 4096, 0, 0, 0],
                bytes: [bytes, 0, 0, 0],
                errors: 0,
            },
            started_ns: 0,
            ended_ns: secs * 1_000_000_000,
        }
    }

    #[test]
    fn a_workload_over_the_average_rate_fails_and_one_under_it_passes() {
        let mut cfg = ThrottleConfig::default();
        cfg.buckets[1].avg = 1 << 20;
        assert!(check_rate(&ended(10 << 20, 10), &cfg, false).is_ok());
        let err = check_rate(&ended(40 << 20, 10), &cfg, false).unwrap_err();
        assert!(err.contains("bucket bps_rd"), "{err}");
        // A write-only limit does not judge reads.
        cfg.buckets[1].avg = 0;
        cfg.buckets[2].avg = 1 << 20;
        assert!(check_rate(&ended(40 << 20, 10), &cfg, false).is_ok());
    }

    #[test]
    fn the_burst_is_allowed_on_top() {
        let mut cfg = ThrottleConfig::default();
        cfg.buckets[0].avg = 1 << 20;
        cfg.buckets[0].max = 4 << 20;
        cfg.buckets[0].burst_length = 2;
        // 1 MiB/s for 10 s plus an 8 MiB burst.
        assert!(check_rate(&ended(18 << 20, 10), &cfg, false).is_ok());
        assert!(check_rate(&ended(20 << 20, 10), &cfg, false).is_err());
    }
}
