//! Named dirty bitmaps on the guest device's node: `bitmap add`, `enable`, `disable`, `clear`,
//! `remove` and `merge` at drawn points, with `bitmap check` (the runner's oracle: every guest
//! write since a bitmap's creation while it recorded is dirty in it) after each round and at
//! the end.
//!
//! Bitmap steps come between rounds, after the background workload stopped, so no guest write
//! is in flight when a bitmap changes state. Before a job that moves the device to another
//! node (mirror, active commit) they are checked and removed.
//!
//! On a qcow2 v3 top some bitmaps are persistent, and some restarts are clean (`shutdown`,
//! `restart`): the runner's oracle then wants every persistent bitmap back with the same
//! SHA-256 (and, at the next check, still covering every write since its creation) and the
//! others gone. After a crash it wants each persistent bitmap the image held back inconsistent;
//! those are removed again here (an inconsistent bitmap is only good for removal).

use serde_json::json;

use super::Gen;
use crate::rng::{below, chance};

/// Most bitmaps alive at once.
const MAX_BITMAPS: usize = 4;

impl Gen {
    /// One round of bitmap verbs, then a short guest workload, then a check of all.
    pub(super) fn bitmap_round(&mut self) {
        self.stop_bg();
        let n = 1 + below(&mut self.r.bitmaps, 4);
        for _ in 0..n {
            self.bitmap_verb();
        }
        // Guest writes for the bitmaps to record: a few qemu-io commands (write-zeroes,
        // unaligned and in-flight writes) leave single ranges the check can tell apart; a
        // workload covers more.
        match below(&mut self.r.bitmaps, 10) {
            0..=4 => self.io_round(),
            5..=7 => self.workload_round(),
            _ => {}
        }
        self.check_bitmaps();
    }

    fn bitmap_verb(&mut self) {
        let live = self.bitmaps.len();
        let verb = if live == 0 {
            0
        } else {
            below(&mut self.r.bitmaps, 7)
        };
        if verb == 0 {
            return self.bitmap_add();
        }
        let pick = |g: &mut Gen| {
            let i = below(&mut g.r.bitmaps, g.bitmaps.len() as u64) as usize;
            g.bitmaps[i].clone()
        };
        let name = pick(self);
        match verb {
            1 => self.step(format!("bitmap enable {name}")),
            2 => self.step(format!("bitmap disable {name}")),
            3 => self.step(format!("bitmap clear {name}")),
            4 => {
                self.step(format!("bitmap remove {name}"));
                self.bitmaps.retain(|b| *b != name);
                self.persistent.retain(|(b, _)| *b != name);
            }
            5 if live < MAX_BITMAPS => self.bitmap_add(),
            _ => {
                let k = 1 + below(&mut self.r.bitmaps, 2);
                let sources: Vec<String> = (0..k).map(|_| pick(self)).collect();
                self.step(format!("bitmap merge {name} {}", sources.join(" ")));
            }
        }
    }

    fn bitmap_add(&mut self) {
        if self.bitmaps.len() >= MAX_BITMAPS {
            return;
        }
        let name = self.fresh("bm");
        let r = &mut self.r.bitmaps;
        let mut line = format!("bitmap add drive0 {name}");
        match below(r, 4) {
            0 => line.push_str(" granularity=512"),
            1 => line.push_str(" granularity=4096"),
            2 => line.push_str(" granularity=65536"),
            _ => {}
        }
        if chance(r, 0.2) {
            line.push_str(" disabled");
        }
        if self.top_persistent_ok && chance(r, 0.5) {
            line.push_str(" persistent");
            self.persistent.push((name.clone(), false));
        }
        self.step(line);
        self.bitmaps.push(name);
    }

    /// A clean stop and restart of the engine (the runner judges the bitmaps after it).
    pub(super) fn clean_restart(&mut self) {
        self.comment("clean shutdown and restart");
        self.stop_bg();
        self.step("shutdown");
        self.offline_amend();
        self.step("restart");
        // The restart reopened the images with their default options.
        self.lazy_top = false;
        let kept: Vec<String> = self.persistent.iter().map(|(b, _)| b.clone()).collect();
        self.bitmaps.retain(|b| kept.contains(b));
        for p in &mut self.persistent {
            p.1 = true;
        }
        self.check_bitmaps();
        self.checks();
    }

    /// After a crash's restart: no bitmap can be checked any more; the persistent ones the
    /// image held came back inconsistent and are removed (unless a job may have moved the
    /// device).
    pub(super) fn bitmaps_after_crash(&mut self, during_job: bool) {
        self.bitmaps.clear();
        for (name, stored) in std::mem::take(&mut self.persistent) {
            if stored && !during_job {
                let args = json!({"node": "top", "name": name});
                self.qmp(&json!({"execute": "block-dirty-bitmap-remove", "arguments": args}));
            }
        }
    }

    /// `bitmap check` of every live bitmap (the workload stopped first).
    pub(super) fn check_bitmaps(&mut self) {
        if self.bitmaps.is_empty() {
            return;
        }
        self.stop_bg();
        self.step("bitmap check");
    }

    /// Check and remove every bitmap: the device is about to move to another node.
    pub(super) fn retire_bitmaps(&mut self) {
        // The device's next node may not store bitmaps (a raw mirror target).
        self.top_persistent_ok = false;
        if self.bitmaps.is_empty() {
            return;
        }
        self.check_bitmaps();
        self.persistent.clear();
        for b in std::mem::take(&mut self.bitmaps) {
            self.step(format!("bitmap remove {b}"));
        }
    }
}

#[cfg(test)]
mod tests {
    /// The draws this file adds do happen: persistent bitmaps, and clean restarts with them.
    #[test]
    fn seeds_draw_persistent_bitmaps_and_clean_restarts() {
        let (mut persistent, mut clean) = (0, 0);
        for seed in 0..600 {
            let text = super::super::generate(seed).text;
            persistent += u32::from(text.contains(" persistent\n"));
            clean += u32::from(text.contains("\nshutdown\n"));
        }
        println!("of 600 seeds: {persistent} with persistent bitmaps, {clean} with clean restarts");
        assert!(persistent >= 20 && clean >= 10, "{persistent} {clean}");
    }
}
