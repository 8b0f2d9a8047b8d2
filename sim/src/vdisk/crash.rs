//! Power loss: every completed-but-unflushed operation is resolved, seeded, per 512-byte sector.
//!
//! Entries are replayed in completion order onto the durable bytes. FUA entries always land. With
//! probability `CrashModel::clean` every entry lands. Otherwise each entry is kept, lost or torn
//! (weights of the [`CrashModel`]); a torn write or zeroing keeps each of its sectors with
//! probability 1/2, so a sector ends up holding its last durable value or the value of some later
//! completed operation, never anything else. Size changes and preallocations are kept or lost
//! whole. Afterwards the cache is empty, in-flight operations are abandoned and every handle
//! opened before the crash is stale (EIO); files can be reopened. A `truncate-on-crash` fault
//! then cuts a file back to the length it durably had before the crash (size growth that was
//! never flushed is lost, whatever happened to the data).

use rand_chacha::ChaCha8Rng;

use super::file::{CacheEntry, CacheOp, VFile, apply, sectors_in};
use super::{FsInner, SimFs};
use crate::config::CrashModel;
use crate::fault::{OpKind, OpTarget};
use crate::rng::{below, chance};
use crate::trace::tag;

/// What a crash did to the unflushed entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// The whole cache survived (a "clean" power loss).
    pub clean: bool,
    /// Entries that landed whole (FUA ones included).
    pub kept: u64,
    /// Entries that vanished.
    pub lost: u64,
    /// Entries that landed partly (some sectors new, some old).
    pub torn: u64,
}

enum Fate {
    Keep,
    Lose,
    Torn,
}

fn draw_fate(rng: &mut ChaCha8Rng, m: &CrashModel) -> Fate {
    let total = u64::from(m.keep) + u64::from(m.lose) + u64::from(m.torn);
    if total == 0 {
        return Fate::Keep;
    }
    let x = below(rng, total);
    if x < u64::from(m.keep) {
        Fate::Keep
    } else if x < u64::from(m.keep) + u64::from(m.lose) {
        Fate::Lose
    } else {
        Fate::Torn
    }
}

impl VFile {
    /// Resolve the cache into the durable bytes, as a power loss would.
    fn crash(
        &mut self,
        rng: &mut ChaCha8Rng,
        model: &CrashModel,
        clean: bool,
        report: &mut CrashReport,
    ) {
        let mut store = self.durable.clone();
        let mut len = self.durable_len;
        let cache: Vec<CacheEntry> = self.take_cache();
        for e in &cache {
            if e.fua || clean {
                apply(&mut store, &mut len, &e.op, None);
                report.kept += 1;
                continue;
            }
            let fate = draw_fate(rng, model);
            let range = e.op.sector_range();
            let keep_all = match (fate, range) {
                (Fate::Keep, _) => true,
                (Fate::Lose, _) => false,
                (Fate::Torn, None) => chance(rng, 0.5),
                (Fate::Torn, Some((start, end))) => {
                    let n = sectors_in(start, end);
                    let mask: Vec<bool> = (0..n).map(|_| chance(rng, 0.5)).collect();
                    if mask.iter().all(|&k| k) {
                        true
                    } else if mask.iter().all(|&k| !k) {
                        false
                    } else {
                        apply(&mut store, &mut len, &e.op, Some(&mask));
                        report.torn += 1;
                        continue;
                    }
                }
            };
            if keep_all {
                apply(&mut store, &mut len, &e.op, None);
                report.kept += 1;
            } else {
                report.lost += 1;
            }
        }
        self.durable = store;
        self.durable_len = len;
        self.rebuild_current();
    }
}

impl SimFs {
    /// Power loss. Resolves every file's unflushed operations with `rng` (see the module docs),
    /// empties the caches, and makes every open handle stale; in-flight operations never land.
    /// Latent sector errors and injected faults stay. `Sim::crash` calls this with the crash
    /// stream of the seed and also kills every task.
    pub fn crash(&self, rng: &mut ChaCha8Rng) -> CrashReport {
        self.inner.crash_with(rng)
    }
}

impl FsInner {
    /// The length a `truncate-on-crash` fault cuts `file` back to at this crash, if one fires:
    /// what it durably had before the crash.
    fn truncates_at_crash(&self, path: &str, file: &VFile) -> Option<u64> {
        let target = OpTarget {
            path,
            op: OpKind::Crash,
            offset: 0,
            len: 0,
            file_len: file.len,
            partial: false,
            align: 1,
            now: self.clock.now(),
            max_latency: 0,
        };
        let plan = self.faults.borrow_mut().plan(&target, &self.trace);
        plan.truncate.then(|| file.durable_view().1)
    }

    /// [`SimFs::crash`] proper.
    pub(crate) fn crash_with(&self, rng: &mut ChaCha8Rng) -> CrashReport {
        let fs = self;
        fs.epoch.set(fs.epoch.get() + 1);
        let model = fs.config.crash;
        let mut report = CrashReport {
            clean: chance(rng, model.clean),
            ..CrashReport::default()
        };
        let files: Vec<_> = fs
            .files
            .borrow()
            .iter()
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        for (path, file) in files {
            let cut_to = fs.truncates_at_crash(&path, &file.borrow());
            let mut guard = file.borrow_mut();
            let f = &mut *guard;
            f.crash(rng, &model, report.clean, &mut report);
            if let Some(len) = cut_to.filter(|&l| l < f.durable_len) {
                apply(
                    &mut f.durable,
                    &mut f.durable_len,
                    &CacheOp::SetLen(len),
                    None,
                );
                f.rebuild_current();
            }
        }
        fs.trace.record(
            tag::CRASH,
            &[fs.epoch.get(), report.kept, report.lost, report.torn],
        );
        report
    }
}
