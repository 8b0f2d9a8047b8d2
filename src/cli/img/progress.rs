//! qemu-img's progress line (`-p`): "    (12.34/100%)" rewritten in place with a carriage
//! return, ended with a newline after 100%. Like qemu-img it prints on stdout.
//!
//! Two kinds: `Progress` takes the position reached (commit, rebase); `Steps` follows
//! qemu-img's own arithmetic (single-precision percentages, a minimum step between prints, 0
//! and 100 always printed), fed chunk by chunk as compare feeds it or with the bytes done as
//! convert feeds it, so the same lines come out.

use std::io::Write;

/// A progress reporter; prints nothing when disabled.
pub(crate) struct Progress {
    enabled: bool,
    total: u64,
    last: Option<u64>,
}

impl Progress {
    pub fn new(enabled: bool, total: u64) -> Progress {
        let mut p = Progress {
            enabled,
            total,
            last: None,
        };
        p.update(0);
        p
    }

    /// Report `done` of `total` bytes; prints when the shown value changes by 1% or more.
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let hundredths = if self.total == 0 {
            10000
        } else {
            (done.min(self.total) as u128 * 10000 / self.total as u128) as u64
        };
        if self
            .last
            .is_some_and(|l| hundredths < l + 100 && (hundredths != 10000 || l == 10000))
        {
            return;
        }
        self.last = Some(hundredths);
        print_line(&format!("{}.{:02}", hundredths / 100, hundredths % 100));
    }

    /// Show 100% and end the line.
    pub fn finish(&mut self) {
        self.update(self.total);
        if self.enabled {
            println!();
        }
    }
}

/// One progress line: `pct` is the percentage as printed.
fn print_line(pct: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "    ({pct}/100%)\r");
    let _ = out.flush();
}

/// Progress fed chunk by chunk: each chunk adds its share of `total`; a line is printed when
/// the value moved more than `min_skip` points from the last one printed, and at 0 and 100.
pub(crate) struct Steps {
    enabled: bool,
    total: u64,
    current: f32,
    last_print: f32,
    min_skip: f32,
}

impl Steps {
    /// Starts at 0% (printed).
    pub fn new(enabled: bool, total: u64, min_skip: f32) -> Steps {
        let mut s = Steps {
            enabled,
            total,
            current: 0.0,
            last_print: 0.0,
            min_skip,
        };
        if enabled {
            s.show(0.0);
        }
        s
    }

    /// Account for `chunk` more bytes done (compare's feed).
    pub fn advance(&mut self, chunk: u64) {
        if !self.enabled {
            return;
        }
        // The share in percent, then scaled back and forth by 100 as qemu-img does: the
        // float rounding decides which lines are printed.
        let delta = chunk as f32 / self.total.max(1) as f32 * 100.0;
        self.show((self.current + delta / 100.0 * 100.0).min(100.0));
    }

    /// Move on by `pct` percent (rebase's feed: a fixed share per step), capped at 100.
    pub fn add_percent(&mut self, pct: f32) {
        if self.enabled {
            self.show((self.current + pct / 100.0 * 100.0).min(100.0));
        }
    }

    /// `done` bytes of `total` are done (convert's feed: computed in double precision).
    pub fn reach(&mut self, done: u64) {
        if self.enabled && self.total > 0 {
            self.show((100.0 * done as f64 / self.total as f64).min(100.0) as f32);
        }
    }

    /// Show 100% (again, if it was shown already: qemu-img convert does) and end the line.
    pub fn finish(&mut self) {
        self.complete();
        self.end_line();
    }

    /// Show 100% (again, if it was shown already).
    pub fn complete(&mut self) {
        if self.enabled {
            self.show(100.0);
        }
    }

    /// End the progress line.
    pub fn end_line(&self) {
        if self.enabled {
            println!();
        }
    }

    fn show(&mut self, current: f32) {
        self.current = current;
        let moved =
            current > self.last_print + self.min_skip || current < self.last_print - self.min_skip;
        if moved || current == 0.0 || current == 100.0 {
            self.last_print = current;
            print_line(&format!("{current:.2}"));
        }
    }
}
