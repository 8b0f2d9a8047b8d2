//! qcow2 internal snapshots of the guest device's top image: `isnap drive0 create|apply|delete
//! NAME` at drawn points, each followed by `verify drive0` (the runner's oracle: after an apply
//! the device reads the data of snapshot time; see `sim::scenario::isnap_steps`).
//!
//! Steps come between rounds, after the background workload stopped. Only seeds whose device
//! sits on a writable qcow2 top without a data file draw them (no disk faults: a failed
//! snapshot step would leave the oracle nothing to compare; no resize: QEMU refuses to resize
//! images with snapshots). A job that moves the device to another image (mirror, active
//! commit) leaves the snapshots behind: the generator then forgets them.

use super::Gen;
use crate::rng::below;

/// Most snapshots alive at once.
pub(super) const MAX_SNAPSHOTS: usize = 4;

impl Gen {
    /// True when an internal snapshot round may be drawn now.
    pub(super) fn isnap_possible(&mut self) -> bool {
        // Four snapshots and a compressed cluster's many references must fit the refcounts
        // (narrower ones refuse a snapshot with ERANGE, tested in the engine).
        if !self.f.isnap || !self.chain_known || self.top_refcount_bits < 16 {
            return false;
        }
        let top = self.chain.first().map(|l| l.node.clone());
        if top.as_deref() != Some("top") {
            // The device moved to another image: its snapshots stay behind.
            self.isnaps.clear();
            return false;
        }
        let chain: Vec<String> = self.chain.iter().map(|l| l.node.clone()).collect();
        if chain != self.isnap_chain {
            // The snapshots taken so far saw another chain: forget them (they stay in the
            // image, unused).
            self.isnaps.clear();
            self.isnap_chain = chain;
        }
        true
    }

    /// One round of snapshot verbs, a short guest workload between them, then a verify.
    pub(super) fn isnap_round(&mut self) {
        self.stop_bg();
        let n = 1 + below(&mut self.r.isnap, 3);
        for _ in 0..n {
            self.isnap_verb();
            if below(&mut self.r.isnap, 2) == 0 {
                self.io_round();
            }
            self.verify();
        }
    }

    fn isnap_verb(&mut self) {
        let live = self.isnaps.len();
        let verb = if live == 0 {
            0
        } else {
            below(&mut self.r.isnap, 4)
        };
        if verb == 0 && live < MAX_SNAPSHOTS {
            let name = self.fresh("sn");
            self.stop_bg();
            self.step(format!("isnap drive0 create {name}"));
            self.isnaps.push(name);
            return;
        }
        if live == 0 {
            return;
        }
        let i = below(&mut self.r.isnap, live as u64) as usize;
        let name = self.isnaps[i].clone();
        self.stop_bg();
        if verb == 3 {
            self.step(format!("isnap drive0 delete {name}"));
            self.isnaps.remove(i);
        } else {
            self.step(format!("isnap drive0 apply {name}"));
        }
    }
}
