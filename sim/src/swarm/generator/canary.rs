//! Fault classes the model cannot follow, drawn where their effect is known, on a raw top image
//! (a guest offset is the file offset, no metadata to corrupt):
//!
//! * silent corruption (`Family::Canary`: lost and misdirected writes, bit rot, latent sectors):
//!   a known pattern, the fault once on its range, then the guest must *see* the damage (a
//!   pattern check or a read that fails), and the range is rewritten once the fault is cleared;
//! * lost flushes (`Family::LostFlush`: flush-drops-dirty, fsync-gate flush-lost, stale reads):
//!   a write, the flush fails (qemu-io prints nothing for it), the model widens what it allows for the unflushed sectors (the
//!   runner does that for a failed guest flush once such a fault was injected), the guest reads
//!   back, and the host restarts (the file refuses every flush until it is opened again).

use super::Gen;
use super::faults::draw_class;
use crate::fault::Family;
use crate::rng::below;

impl Gen {
    /// True when a canary round may run: a raw top image whose chain is known.
    pub(super) fn canary_possible(&self) -> bool {
        // The chain's top is raw when its file is (a mirror may have pivoted onto a qcow2).
        self.f.faults
            && !self.f.qcow2
            && self.chain_known
            && !self.resized
            && self.chain[0].path.ends_with(".img")
    }

    /// One canary or lost-flush fault on the top image.
    pub(super) fn canary_round(&mut self) {
        self.stop_bg();
        let (rerror_stop, werror_stop) = (self.rerror_stop, self.werror_stop);
        let Some(class) = draw_class(&mut self.r.faults, |c| match c.family {
            // A latent sector fails reads, which would stop the machine for good under stop.
            Family::Canary => !(c.name == "latent" && rerror_stop),
            // A failed flush under a stop policy stops a machine that no `cont` can resume.
            Family::LostFlush => !werror_stop,
            _ => false,
        }) else {
            return;
        };
        let r = &mut self.r.faults;
        let len = 4096 * (1 + below(r, 8));
        let off = 4096 * below(r, (self.size - 2 * len) / 4096);
        let (old, new) = (0x40 + below(r, 0x20), 0xa0 + below(r, 0x20));
        let path = self.chain[0].path.clone();
        let name = self.fresh("c");
        self.comment(&format!("canary: {} on {path} at {off}+{len}", class.name));
        let span = if class.name == "misdirected" {
            2 * len
        } else {
            len
        };
        self.step(format!("io drive0 write -P {old:#x} {off} {span}"));
        let range = format!("range={off}..{}", off + span);
        if class.family == Family::LostFlush {
            self.lost_flush(class.name, &name, &path, (off, len, new));
            return;
        }
        self.step(format!(
            "fault inject {name} {} path={path} {range} once",
            class.name
        ));
        match class.name {
            "latent" => {
                self.step(format!("io? drive0 read {off} {len}"));
                self.step(r#"expect output "read failed""#);
            }
            "bitrot" => {
                self.step(format!("io? drive0 read -P {old:#x} {off} {len}"));
                self.step(r#"expect output "Pattern verification failed""#);
            }
            _ => {
                // lost-write, misdirected: the write reports success, the range keeps `old`.
                self.step(format!("io drive0 write -P {new:#x} {off} {len}"));
                self.step(format!("io? drive0 read -P {new:#x} {off} {len}"));
                self.step(r#"expect output "Pattern verification failed""#);
            }
        }
        self.step(format!("fault clear {name}"));
        // Rewrite the whole span so the disk holds what the model expects again.
        self.step(format!("io drive0 write -P {new:#x} {off} {span}"));
    }

    /// A write, then a flush that loses it; the guest must see the flush fail, and may read
    /// either version afterwards; then the host restarts.
    fn lost_flush(&mut self, kind: &str, name: &str, path: &str, (off, len, new): (u64, u64, u64)) {
        self.step("io drive0 flush");
        self.step(format!("io drive0 write -P {new:#x} {off} {len}"));
        let lose = if kind == "stale-read" {
            "flush-lost"
        } else {
            kind
        };
        self.step(format!("fault inject {name} {lose} path={path} once"));
        let evict = (kind == "stale-read").then(|| self.fresh("c"));
        if let Some(evict) = &evict {
            self.step(format!("fault inject {evict} stale-read path={path} once"));
        }
        self.step("io? drive0 flush");
        self.step(format!("io drive0 read {off} {len}"));
        self.verify();
        self.step(format!("fault clear {name}"));
        if let Some(evict) = evict {
            self.step(format!("fault clear {evict}"));
        }
        self.crash_here(false);
    }
}
