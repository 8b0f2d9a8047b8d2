//! Virtual-disk faults under a bounded guest workload, drawn from the fault table
//! (`FAULT_KINDS`) by weight: the classes that fail requests (EIO on reads, writes or flushes,
//! ENOSPC past a quota or in the middle of a write), the ones the engine must hide (short and
//! interrupted transfers) and the ones that only change timing or leave what the model allows
//! (slow, hang, reorder, discard-no-zero); the trigger (once after a skip, N times, with a
//! probability) and the file. Silent corruption and lost flushes are drawn by `canary.rs`, crash
//! faults by the crash rounds. A device whose policy stops the machine is resumed with `cont`
//! after the fault is cleared.

use super::Gen;
use crate::fault::{FAULT_KINDS, Family, FaultClass};
use crate::rng::{below, chance};

/// Draw one class among `families` by the table's weights (`None` when none qualifies).
pub(super) fn draw_class(
    r: &mut rand_chacha::ChaCha8Rng,
    ok: impl Fn(&FaultClass) -> bool,
) -> Option<&'static FaultClass> {
    let rows: Vec<&FaultClass> = FAULT_KINDS.iter().filter(|c| ok(c)).collect();
    let total: u64 = rows.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = below(r, total);
    for c in rows {
        if x < u64::from(c.weight) {
            return Some(c);
        }
        x -= u64::from(c.weight);
    }
    None
}

impl Gen {
    /// A fault's line, whether it makes requests fail, and whether it may fail a flush.
    fn fault_line(&mut self) -> (String, bool, bool) {
        // A failed flush poisons the file until it is opened again (fsync-gate): every later
        // flush fails, so a stop policy would stop the machine for good, and only a restart
        // (a power loss: not after a resize) makes the file usable again.
        let flush_ok = !(self.werror_stop || self.rerror_stop || self.resized);
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
        let class = draw_class(r, |c| {
            matches!(c.family, Family::Fails | Family::Hidden | Family::Benign)
        })
        .expect("the table has request faults");
        let args = match class.name {
            "eio" if flush_ok => ["ops=write", "ops=read", "ops=flush", "ops=read,write,flush"]
                [below(r, 4) as usize]
                .to_string(),
            "eio" => ["ops=write", "ops=read"][below(r, 2) as usize].to_string(),
            "enospc" => format!("quota={}k", 64 * (1 + below(r, 64))),
            "slow" => format!("extra={}us..{}ms", 10 + below(r, 100), 1 + below(r, 5)),
            "hang" => format!("delay={}us..{}ms", 100 + below(r, 900), 1 + below(r, 20)),
            _ => String::new(),
        };
        let line = format!("{} {args}{path} {trigger}", class.name).replace("  ", " ");
        let fails_flush = class.ops.contains(&crate::OpKind::Flush) && line.contains("flush");
        (line, class.family == Family::Fails, fails_flush)
    }

    /// One or two faults during a bounded workload, then cleared (and `cont` if stopped).
    pub(super) fn fault_round(&mut self) {
        self.stop_bg();
        let n = 1 + below(&mut self.r.faults, 2);
        let mut names = Vec::new();
        let (mut may_stop, mut flush_failed) = (false, false);
        for _ in 0..n {
            let name = self.fresh("f");
            let (line, fails, fails_flush) = self.fault_line();
            flush_failed |= fails_flush;
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
        if flush_failed {
            self.comment("a flush may have failed: the host restarts to reopen its files");
            self.crash_here(false);
        }
    }
}
