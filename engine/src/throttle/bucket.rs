//! The leaky-bucket arithmetic, as pure functions of a clock value in nanoseconds: every
//! bucket fills with the units a request accounts and leaks at its average rate; a request may
//! start when no relevant bucket is over its size, otherwise the wait until it is under is
//! computed. A burst bucket beside it leaks at the `_max` rate, so a burst never runs faster
//! than `_max` and lasts at most `_max_length` seconds.

use super::config::{BucketConfig, ThrottleConfig};

const NS_PER_SEC: f64 = 1e9;

/// Read or write (the buckets that apply to a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// A read.
    Read = 0,
    /// Any request that changes data (write, write-zeroes, discard).
    Write = 1,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    cfg: BucketConfig,
    /// Units accounted and not yet leaked at `avg`.
    level: f64,
    /// Units accounted and not yet leaked at `max` (only with a burst length over 1).
    burst_level: f64,
}

/// The state of one throttle configuration.
#[derive(Clone, Debug)]
pub struct ThrottleState {
    config: ThrottleConfig,
    buckets: [Bucket; 6],
    previous_leak: u64,
}

impl ThrottleState {
    /// A state with empty buckets at time `now`.
    pub fn new(config: ThrottleConfig, now: u64) -> ThrottleState {
        let mut state = ThrottleState {
            config,
            buckets: [Bucket::default(); 6],
            previous_leak: now,
        };
        state.set_config(config);
        state
    }

    /// The configuration as given (not the derived bucket sizes).
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Replace the configuration; the buckets start empty. Without a burst rate, a bucket still
    /// allows a tenth of a second's worth of slack (otherwise every other request would wait).
    pub fn set_config(&mut self, config: ThrottleConfig) {
        self.config = config;
        for (b, c) in self.buckets.iter_mut().zip(config.buckets) {
            let mut cfg = c;
            if cfg.avg != 0 && cfg.max == 0 {
                cfg.max = cfg.avg / 10;
            }
            *b = Bucket {
                cfg,
                level: 0.0,
                burst_level: 0.0,
            };
        }
    }

    /// Leak every bucket for the time since the last leak.
    pub fn leak(&mut self, now: u64) {
        let mut delta = now.saturating_sub(self.previous_leak) as f64;
        if crate::util::planted::on(crate::util::planted::Bug::ThrottleLeaksFast) {
            delta *= 2.0;
        }
        self.previous_leak = self.previous_leak.max(now);
        for b in &mut self.buckets {
            b.level = (b.level - b.cfg.avg as f64 * delta / NS_PER_SEC).max(0.0);
            if b.cfg.burst_length > 1 {
                b.burst_level = (b.burst_level - b.cfg.max as f64 * delta / NS_PER_SEC).max(0.0);
            }
        }
    }

    /// Nanoseconds a request in `dir` must wait from the last leak (0: it may start now).
    pub fn wait_ns(&self, dir: Direction) -> u64 {
        self.relevant(dir)
            .map(|i| bucket_wait(&self.buckets[i]))
            .max()
            .unwrap_or(0)
    }

    /// Account a request of `bytes` in `dir` that starts now.
    pub fn account(&mut self, dir: Direction, bytes: u64) {
        let size = self.config.iops_size;
        let units = if size != 0 && bytes > size {
            bytes as f64 / size as f64
        } else {
            1.0
        };
        for i in self.relevant(dir).collect::<Vec<_>>() {
            let amount = if i < 3 { bytes as f64 } else { units };
            let b = &mut self.buckets[i];
            b.level += amount;
            if b.cfg.burst_length > 1 {
                b.burst_level += amount;
            }
        }
    }

    /// The buckets that apply to `dir`: total, and read or write, for bps and iops.
    fn relevant(&self, dir: Direction) -> impl Iterator<Item = usize> {
        let own = 1 + dir as usize;
        [0, own, 3, 3 + own].into_iter()
    }
}

/// The wait a bucket imposes: until the level is back under the bucket's size (burst rate
/// times burst length), and, during a burst, until the burst level is back under a tenth of a
/// second at the burst rate.
fn bucket_wait(b: &Bucket) -> u64 {
    if b.cfg.avg == 0 {
        return 0;
    }
    let extra = b.level - (b.cfg.max * b.cfg.burst_length) as f64;
    if extra > 0.0 {
        return wait_for(b.cfg.avg, extra);
    }
    if b.cfg.burst_length > 1 {
        let extra = b.burst_level - b.cfg.max as f64 / 10.0;
        if extra > 0.0 {
            return wait_for(b.cfg.max, extra);
        }
    }
    0
}

/// Nanoseconds for `extra` units to leak at `rate` units per second (at least 1).
fn wait_for(rate: u64, extra: f64) -> u64 {
    ((extra / rate as f64 * NS_PER_SEC) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bps_total(avg: u64, max: u64, len: u64) -> ThrottleConfig {
        let mut c = ThrottleConfig::default();
        c.buckets[0] = BucketConfig {
            avg,
            max,
            burst_length: len,
        };
        c
    }

    #[test]
    fn slack_is_a_tenth_of_a_second() {
        let mut s = ThrottleState::new(bps_total(1000, 0, 1), 0);
        s.account(Direction::Read, 100);
        assert_eq!(s.wait_ns(Direction::Read), 0);
        s.account(Direction::Write, 100);
        // 100 bytes over the 100-byte bucket at 1000 B/s: 0.1 s.
        assert_eq!(s.wait_ns(Direction::Read), 100_000_000);
        s.leak(100_000_000);
        assert_eq!(s.wait_ns(Direction::Write), 0);
    }

    #[test]
    fn burst_is_bounded_by_max_and_length() {
        let mut s = ThrottleState::new(bps_total(100, 1000, 2), 0);
        s.account(Direction::Read, 100);
        // A burst level equal to the burst slack (max/10) does not wait.
        assert_eq!(s.wait_ns(Direction::Read), 0);
        s.account(Direction::Read, 100);
        // 100 over the burst slack at 1000 B/s: 0.1 s.
        assert_eq!(s.wait_ns(Direction::Read), 100_000_000);
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let mut c = ThrottleConfig::default();
        c.buckets[3].avg = 10;
        c.iops_size = 4096;
        let mut s = ThrottleState::new(c, 0);
        s.account(Direction::Read, 8192);
        // 2 units in a bucket of 1: 1 over at 10/s.
        assert_eq!(s.wait_ns(Direction::Read), 100_000_000);
    }
}
