//! A byte-rate limiter for background work (block jobs' `speed`), as pure arithmetic on a
//! caller-supplied clock reading, so the same code runs on real and virtual time.
//!
//! Model: every byte dispatched books `1/speed` seconds on a virtual schedule that never runs
//! behind `now`. Work may run up to one slice (100 ms) ahead of that schedule before it must wait,
//! so a job copying in chunks smaller than a slice's quota proceeds in bursts of about one slice
//! and averages `speed` bytes per second over any longer window.

/// Length of the burst a limited job may run ahead of its schedule.
pub const SLICE_NS: u64 = 100_000_000;

/// A rate limit in bytes per second; 0 means unlimited.
#[derive(Clone, Debug, Default)]
pub struct RateLimit {
    speed: u64,
    /// Time at which everything dispatched so far would be done at exactly `speed`.
    schedule_ns: u64,
}

impl RateLimit {
    /// An unlimited limiter.
    pub fn new() -> RateLimit {
        RateLimit::default()
    }

    /// Bytes per second (0 = unlimited).
    pub fn speed(&self) -> u64 {
        self.speed
    }

    /// Change the rate. Work already booked keeps its place; new work is booked at the new rate.
    pub fn set_speed(&mut self, speed: u64) {
        self.speed = speed;
    }

    /// Book `bytes` dispatched at `now_ns` and return how long the caller must wait before
    /// dispatching more (0 when within the allowed burst or unlimited).
    pub fn dispatch(&mut self, now_ns: u64, bytes: u64) -> u64 {
        if self.speed == 0 {
            self.schedule_ns = now_ns;
            return 0;
        }
        let cost = (u128::from(bytes) * 1_000_000_000 / u128::from(self.speed)) as u64;
        self.schedule_ns = self.schedule_ns.max(now_ns).saturating_add(cost);
        self.schedule_ns
            .saturating_sub(now_ns.saturating_add(SLICE_NS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut r = RateLimit::new();
        assert_eq!(r.dispatch(0, u64::MAX), 0);
    }

    #[test]
    fn bursts_one_slice_then_waits_for_the_rest() {
        let mut r = RateLimit::new();
        r.set_speed(1_000_000); // 1 MB/s: one slice is 100 kB
        assert_eq!(r.dispatch(0, 100_000), 0);
        // The next 100 kB would finish at 200 ms: wait until 100 ms.
        assert_eq!(r.dispatch(0, 100_000), 100_000_000);
    }

    #[test]
    fn long_run_average_is_the_speed() {
        let mut r = RateLimit::new();
        r.set_speed(4 << 20);
        let mut now = 0u64;
        for _ in 0..1000 {
            now += r.dispatch(now, 64 << 10);
        }
        // 1000 * 64 KiB at 4 MiB/s is 15.625 s; the last chunk's burst allowance is one slice.
        let ideal = 15_625_000_000u64;
        assert!(now + SLICE_NS >= ideal && now <= ideal, "now={now}");
    }

    #[test]
    fn idle_time_is_not_banked() {
        let mut r = RateLimit::new();
        r.set_speed(1_000_000);
        assert_eq!(r.dispatch(0, 100_000), 0);
        // After a long pause the schedule restarts from now: no burst bigger than one slice.
        let now = 10_000_000_000;
        assert_eq!(r.dispatch(now, 100_000), 0);
        assert_eq!(r.dispatch(now, 100_000), 100_000_000);
    }
}
