//! Offline amends of the top image between a clean `shutdown` and the `restart` (`amend
//! top.qcow2 ...`, as an administrator runs `qemu-img amend` between two runs of a VM): the
//! refcount width (16, 32 or 64 bits: snapshots and packed compressed clusters keep many
//! references), lazy refcounts on or off, and compat 0.10 / 1.1 where the image allows it.
//! The oracles after the restart are the usual ones: `check-file` of every image that is not
//! lazily refcounted, and `verify` of the device against the guest model. Drawn from its own
//! stream, so seeds draw everything else as before.

use super::{Gen, below, chance};

const TOP: &str = "top.qcow2";

impl Gen {
    /// Maybe amend the top image (the engine is shut down).
    pub(super) fn offline_amend(&mut self) {
        let top_is_device = self.chain.first().is_some_and(|l| l.node == "top");
        if !self.f.qcow2 || !self.chain_known || !top_is_device || !chance(&mut self.r.amend, 0.8) {
            return;
        }
        let r = &mut self.r.amend;
        let lazy_now = !self.qcow2_paths.iter().any(|p| p == TOP);
        let v3 = self.top_persistent_ok;
        let mut opts = Vec::new();
        // The model reads a discarded cluster of a v2 image as its backing data: no v2 with
        // discards. v2 holds no data file, persistent bitmaps, or snapshots of this generator.
        let can_downgrade = v3
            && !self.f.discard
            && !self.f.data_file
            && self.persistent.is_empty()
            && self.isnaps.is_empty();
        let compat = match (v3, chance(r, 0.3)) {
            (true, true) if can_downgrade => Some("0.10"),
            (false, true) => Some("1.1"),
            _ => None,
        };
        let v3_after = compat.map_or(v3, |c| c == "1.1");
        let mut bits = self.top_refcount_bits;
        if compat == Some("0.10") {
            bits = 16;
        } else if v3_after && chance(r, 0.6) {
            bits = [16, 32, 64][below(r, 3) as usize];
        }
        if bits != self.top_refcount_bits {
            opts.push(format!("refcount_bits={bits}"));
        }
        let lazy = if v3_after && chance(r, 0.4) {
            !lazy_now
        } else {
            lazy_now && !v3_after
        };
        if lazy != lazy_now {
            opts.push(format!(
                "lazy_refcounts={}",
                if lazy { "on" } else { "off" }
            ));
        }
        opts.extend(compat.map(|c| format!("compat={c}")));
        if opts.is_empty() {
            return;
        }
        self.comment("the administrator amends the image between two runs");
        self.step(format!("amend {TOP} {}", opts.join(" ")));
        self.top_refcount_bits = bits;
        self.top_persistent_ok = v3_after;
        // A lazily refcounted image is dirty while open: no offline check of it.
        self.qcow2_paths.retain(|p| p != TOP);
        if !lazy {
            self.qcow2_paths.push(TOP.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    /// The draws this file adds do happen, each kind of them.
    #[test]
    fn seeds_draw_offline_amends() {
        let (mut any, mut bits, mut lazy, mut compat) = (0, 0, 0, 0);
        let mut seeds = Vec::new();
        for seed in 0..600 {
            let text = super::super::generate(seed).text;
            if text.contains("\namend top.qcow2 ") {
                seeds.push(seed);
            }
            for line in text.lines().filter(|l| l.starts_with("amend top.qcow2 ")) {
                any += 1;
                bits += u32::from(line.contains(" refcount_bits="));
                lazy += u32::from(line.contains(" lazy_refcounts="));
                compat += u32::from(line.contains(" compat="));
            }
        }
        println!("of 600 seeds: {any} amend, {bits} refcount, {lazy} lazy, {compat} compat");
        println!("seeds with amends: {seeds:?}");
        assert!(
            any >= 10 && bits >= 2 && lazy >= 2 && compat >= 1,
            "{any} {bits} {lazy} {compat}"
        );
    }
}
