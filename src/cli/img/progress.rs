//! qemu-img's progress line (`-p`): "    (12.34/100%)" rewritten in place with a carriage
//! return, ended with a newline after 100%. Like qemu-img it prints on stdout.

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
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "    ({}.{:02}/100%)\r",
            hundredths / 100,
            hundredths % 100
        );
        let _ = out.flush();
    }

    /// Show 100% and end the line.
    pub fn finish(&mut self) {
        self.update(self.total);
        if self.enabled {
            println!();
        }
    }
}
