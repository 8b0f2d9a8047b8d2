//! Virtual-disk faults under a bounded guest workload: the class (EIO on reads, writes or
//! flushes, ENOSPC past a quota, slow requests), the trigger (once after a skip, N times, with a
//! probability) and the file. Faults that corrupt data silently (lost or misdirected writes, bit
//! rot, flushes that drop data) are left out: the model would rightly fail on them, so they
//! would find nothing but the fault itself. A device whose policy stops the machine is resumed
//! with `cont` after the fault is cleared.

use super::Gen;
use crate::rng::{below, chance};

impl Gen {
    /// A fault's line, and whether it makes requests fail (all but `slow`).
    fn fault_line(&mut self) -> (String, bool) {
        let r = &mut self.r.faults;
        let path = if self.chain_known {
            let l = &self.chain[below(r, self.chain.len() as u64) as usize];
            format!(" path={}", l.path)
        } else {
            String::new()
        };
        let trigger = match below(r, 3) {
            0 => format!("once skip={}", below(r, 50)),
            1 => format!("times={}", 1 + below(r, 5)),
            _ => format!("prob=0.0{}", 1 + below(r, 9)),
        };
        let (kind, fails) = match below(r, 6) {
            0 => ("eio ops=write".to_string(), true),
            1 => ("eio ops=read".to_string(), true),
            2 => ("eio ops=flush".to_string(), true),
            3 => ("eio ops=read,write,flush".to_string(), true),
            4 => (format!("enospc quota={}k", 64 * (1 + below(r, 64))), true),
            _ => (
                format!("slow extra={}us..{}ms", 10 + below(r, 100), 1 + below(r, 5)),
                false,
            ),
        };
        (format!("{kind}{path} {trigger}"), fails)
    }

    /// One or two faults during a bounded workload, then cleared (and `cont` if stopped).
    pub(super) fn fault_round(&mut self) {
        self.stop_bg();
        let n = 1 + below(&mut self.r.faults, 2);
        let mut names = Vec::new();
        let mut may_stop = false;
        for _ in 0..n {
            let name = self.fresh("f");
            let (line, fails) = self.fault_line();
            // A failing file operation does not map to one guest operation: a read fault
            // fails a guest write that reads qcow2 metadata or copies a backing cluster
            // (werror), a write fault fails a guest read that writes back a cached table
            // (rerror), a flush fault fails a guest flush (werror). So any error fault may
            // stop the machine under either stop policy.
            may_stop |= fails && (self.werror_stop || self.rerror_stop);
            self.step(format!("fault inject {name} {line}"));
            names.push(name);
        }
        let w = self.fresh("w");
        let args = self.workload_args(false);
        self.step(format!("workload start {w} {args}"));
        let ms = 1 + below(&mut self.r.faults, 20);
        self.step(format!("advance {ms}ms"));
        for name in names {
            self.step(format!("fault clear {name}"));
        }
        if may_stop {
            // Requests already failing when the faults went away settle, then the machine runs.
            self.step("advance 5ms");
            self.step(r#"qmp {"execute": "cont"}"#);
        }
        self.step(format!("workload wait {w}"));
        if may_stop && chance(&mut self.r.faults, 0.5) {
            self.step(r#"qmp {"execute": "cont"}"#);
        }
    }
}
