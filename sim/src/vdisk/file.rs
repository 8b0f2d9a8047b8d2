//! [`VFile`]: one virtual file = durable bytes + a volatile write cache + latent sector marks.
//!
//! * `durable`/`durable_len`: what survives any power loss.
//! * `cache`: completed-but-unflushed operations, in completion order (writes, zeroings, size
//!   changes, preallocations), each with a sequence number. FUA entries stay in the list (so order
//!   against older cached writes is kept) but are durable: a crash always keeps them.
//! * `current`/`len`: what reads see = `durable` with every cache entry applied in order. Kept
//!   incrementally, so reads never replay the cache.
//! * `bad`: latent sector errors (reads fail with EIO until the sector is fully rewritten).
//!
//! A flush makes the prefix of the cache up to its mark durable; a failed flush may drop it, or
//! mark it clean without writing it (`lost`: reads still see it until the view is rebuilt, which
//! is what a page-cache eviction does).

use std::collections::BTreeSet;

use super::pages::{PAGE, PageStore};

use crate::config::SECTOR;

/// One cached (or replayed) operation.
#[derive(Clone, Debug)]
pub(crate) enum CacheOp {
    /// Bytes written at `offset`; grows the file to the end of the write.
    Write { offset: u64, data: Vec<u8> },
    /// `[offset, offset + len)` reads as zeroes, holes if `unmap`; grows the file if `grows`.
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
        grows: bool,
    },
    /// New file length.
    SetLen(u64),
    /// Allocate `[offset, offset + len)`, growing the file to its end.
    Prealloc { offset: u64, len: u64 },
}

impl CacheOp {
    /// The byte range a sector-resolved op covers (`None` for whole-entry ops).
    pub(crate) fn sector_range(&self) -> Option<(u64, u64)> {
        match *self {
            CacheOp::Write { offset, ref data } => Some((offset, offset + data.len() as u64)),
            CacheOp::Zero { offset, len, .. } => Some((offset, offset + len)),
            CacheOp::SetLen(_) | CacheOp::Prealloc { .. } => None,
        }
    }
}

/// A cache entry: sequence number, FUA flag, operation.
#[derive(Clone, Debug)]
pub(crate) struct CacheEntry {
    pub(crate) seq: u64,
    pub(crate) fua: bool,
    pub(crate) op: CacheOp,
}

/// Apply `op` to `store`/`len`. With `keep`, only the sectors whose flag is set land (index 0 is
/// the first sector the op touches); the file then grows only to the end of the last kept byte.
pub(crate) fn apply(store: &mut PageStore, len: &mut u64, op: &CacheOp, keep: Option<&[bool]>) {
    match (op, keep) {
        (CacheOp::SetLen(new), _) => {
            if *new < *len {
                store.truncate(*new);
            }
            *len = *new;
        }
        (CacheOp::Prealloc { offset, len: n }, _) => {
            store.preallocate(*offset, *n);
            *len = (*len).max(offset + n);
        }
        (CacheOp::Write { offset, data }, None) => {
            store.write(*offset, data);
            *len = (*len).max(offset + data.len() as u64);
        }
        (
            CacheOp::Zero {
                offset,
                len: n,
                unmap,
                grows,
            },
            None,
        ) => {
            store.zero(*offset, *n, *unmap);
            if *grows {
                *len = (*len).max(offset + n);
            }
        }
        (_, Some(keep)) => {
            let (start, end) = op.sector_range().expect("sector-resolved op");
            for (from, to) in kept_runs(start, end, keep) {
                match op {
                    CacheOp::Write { offset, data } => {
                        store.write(
                            from,
                            &data[(from - offset) as usize..(to - offset) as usize],
                        );
                        *len = (*len).max(to);
                    }
                    CacheOp::Zero { unmap, grows, .. } => {
                        store.zero(from, to - from, *unmap);
                        if *grows {
                            *len = (*len).max(to);
                        }
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

/// Byte runs of `[start, end)` whose sectors are kept.
fn kept_runs(start: u64, end: u64, keep: &[bool]) -> Vec<(u64, u64)> {
    let first = start / SECTOR;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, &k) in keep.iter().enumerate() {
        if !k {
            continue;
        }
        let s = first + i as u64;
        let from = (s * SECTOR).max(start);
        let to = ((s + 1) * SECTOR).min(end);
        match runs.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => runs.push((from, to)),
        }
    }
    runs
}

/// Number of sectors touched by `[start, end)` (non-empty).
pub(crate) fn sectors_in(start: u64, end: u64) -> u64 {
    (end - 1) / SECTOR - start / SECTOR + 1
}

/// Pages `[first, end)` holding bytes `[start, stop)` (empty for an empty range).
fn pages_of(start: u64, stop: u64) -> (u64, u64) {
    if start >= stop {
        return (0, 0);
    }
    (start / PAGE, stop.div_ceil(PAGE))
}

/// The file length after a byte-range op, without touching the bytes.
fn grow(len: &mut u64, op: &CacheOp) {
    match *op {
        CacheOp::Write { offset, ref data } => *len = (*len).max(offset + data.len() as u64),
        CacheOp::Zero {
            offset,
            len: n,
            grows: true,
            ..
        } => *len = (*len).max(offset + n),
        _ => {}
    }
}

/// A drive's volatile write cache is finite: past this many cached bytes it writes its oldest
/// entries back on its own (they become durable, as a real drive destages), so a file that is
/// never flushed (a mirror target in the ready phase) does not keep every write of the run.
pub const VOLATILE_CACHE_BYTES: u64 = 64 << 20;

/// Bytes an entry holds (whole-entry ops count as one sector).
fn entry_bytes(op: &CacheOp) -> u64 {
    match op {
        CacheOp::Write { data, .. } => data.len() as u64,
        _ => SECTOR,
    }
}

/// One virtual file.
pub(crate) struct VFile {
    pub(crate) id: u64,
    pub(crate) durable: PageStore,
    pub(crate) durable_len: u64,
    pub(crate) current: PageStore,
    pub(crate) len: u64,
    pub(crate) cache: Vec<CacheEntry>,
    /// Bytes held by `cache` (see `VOLATILE_CACHE_BYTES`).
    cached_bytes: u64,
    pub(crate) next_seq: u64,
    pub(crate) bad: BTreeSet<u64>,
    /// The read view holds writes a failed flush marked clean without writing (`lose_flushed`).
    lost: bool,
}

impl VFile {
    pub(crate) fn new(id: u64) -> VFile {
        VFile {
            id,
            durable: PageStore::default(),
            durable_len: 0,
            current: PageStore::default(),
            len: 0,
            cache: Vec::new(),
            cached_bytes: 0,
            next_seq: 1,
            bad: BTreeSet::new(),
            lost: false,
        }
    }

    /// Apply a completed operation: visible to reads now, durable at the next flush (or at once
    /// with `fua`).
    pub(crate) fn push(&mut self, op: CacheOp, fua: bool) {
        match op.sector_range() {
            Some((start, end)) if start < end => self.heal(start, end),
            _ => {}
        }
        apply(&mut self.current, &mut self.len, &op, None);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.cached_bytes += entry_bytes(&op);
        self.cache.push(CacheEntry { seq, fua, op });
        if self.cached_bytes > VOLATILE_CACHE_BYTES {
            self.destage();
        }
    }

    /// Write back the oldest entries until the cache holds half its capacity.
    fn destage(&mut self) {
        let mut n = 0;
        let mut left = self.cached_bytes;
        while left > VOLATILE_CACHE_BYTES / 2 && n < self.cache.len() {
            left -= entry_bytes(&self.cache[n].op);
            n += 1;
        }
        self.land(n);
    }

    /// Take every cached entry (a power loss resolves them).
    pub(crate) fn take_cache(&mut self) -> Vec<CacheEntry> {
        self.cached_bytes = 0;
        std::mem::take(&mut self.cache)
    }

    /// The flush mark: a flush submitted now covers entries with `seq < mark`.
    pub(crate) fn mark(&self) -> u64 {
        self.next_seq
    }

    /// Make every entry with `seq < mark` durable.
    pub(crate) fn flush(&mut self, mark: u64) {
        let n = self.cache.iter().take_while(|e| e.seq < mark).count();
        self.land(n);
    }

    /// Make the oldest `n` cache entries durable. The read view is the durable bytes with every
    /// cache entry applied in order (unless a lost flush left more in it), so wherever no entry
    /// that stays cached touches a page, the read view's page already is the new durable page:
    /// it is shared (copy-on-write) instead of written a second time and held twice. Entries
    /// that touch a page the staying entries also touch are applied in order as before.
    fn land(&mut self, n: usize) {
        let staying: Option<Vec<(u64, u64)>> = if self.lost {
            None
        } else {
            self.cache[n..]
                .iter()
                .map(|e| e.op.sector_range().map(|(a, b)| pages_of(a, b)))
                .collect()
        };
        let Some(busy) = staying else {
            // A size change stays cached, or the read view holds lost data: apply each entry.
            for e in self.cache.drain(..n) {
                self.cached_bytes -= entry_bytes(&e.op);
                apply(&mut self.durable, &mut self.durable_len, &e.op, None);
            }
            return;
        };
        let is_busy = |(a, b): (u64, u64)| busy.iter().any(|&(x, y)| x < b && a < y);
        let mut shared = Vec::new();
        for e in self.cache.drain(..n) {
            self.cached_bytes -= entry_bytes(&e.op);
            match e.op.sector_range().map(|(a, b)| pages_of(a, b)) {
                Some(span) if !is_busy(span) => {
                    grow(&mut self.durable_len, &e.op);
                    shared.push(span);
                }
                _ => apply(&mut self.durable, &mut self.durable_len, &e.op, None),
            }
        }
        // After every applied entry: a page an applied entry wrote before a skipped one gets
        // its final bytes here.
        for (a, b) in shared {
            for idx in (a..b).filter(|&i| !is_busy((i, i + 1))) {
                self.durable.share_page(&self.current, idx);
            }
        }
    }

    /// A failed flush that drops dirty data: entries with `seq < mark` are lost (FUA ones were
    /// already durable and land), and reads fall back to what is left.
    pub(crate) fn drop_dirty(&mut self, mark: u64) {
        let n = self.cache.iter().take_while(|e| e.seq < mark).count();
        for e in self.cache.drain(..n) {
            self.cached_bytes -= entry_bytes(&e.op);
            if e.fua {
                apply(&mut self.durable, &mut self.durable_len, &e.op, None);
            }
        }
        self.rebuild_current();
    }

    /// A failed flush that marks its dirty data clean without writing it ("fsync-gate"):
    /// entries with `seq < mark` leave the cache (FUA ones were durable and land) but stay in
    /// the read view, so no later flush and no power loss keeps them.
    pub(crate) fn lose_flushed(&mut self, mark: u64) {
        let n = self.cache.iter().take_while(|e| e.seq < mark).count();
        for e in self.cache.drain(..n) {
            self.cached_bytes -= entry_bytes(&e.op);
            if e.fua {
                apply(&mut self.durable, &mut self.durable_len, &e.op, None);
            } else {
                self.lost = true;
            }
        }
    }

    /// The page cache evicts what `lose_flushed` left in the read view: reads see the disk.
    pub(crate) fn evict_lost(&mut self) {
        if self.lost {
            self.rebuild_current();
        }
    }

    /// Recompute the read view from the durable bytes and the remaining cache.
    pub(crate) fn rebuild_current(&mut self) {
        self.lost = false;
        let mut store = self.durable.clone();
        let mut len = self.durable_len;
        for e in &self.cache {
            apply(&mut store, &mut len, &e.op, None);
        }
        self.current = store;
        self.len = len;
    }

    /// What survives if every unflushed non-FUA entry is lost.
    pub(crate) fn durable_view(&self) -> (PageStore, u64) {
        let mut store = self.durable.clone();
        let mut len = self.durable_len;
        for e in self.cache.iter().filter(|e| e.fua) {
            apply(&mut store, &mut len, &e.op, None);
        }
        (store, len)
    }

    /// Read from the current view; bytes beyond the end read as zeroes.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        let visible = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.current.read(offset, &mut buf[..visible]);
        buf[visible..].fill(0);
    }

    /// The first latent bad sector in `[start, end)`.
    pub(crate) fn first_bad(&self, start: u64, end: u64) -> Option<u64> {
        if start >= end {
            return None;
        }
        self.bad
            .range(start / SECTOR..=(end - 1) / SECTOR)
            .next()
            .copied()
    }

    /// Clear latent errors of sectors fully covered by `[start, end)` (they were rewritten).
    fn heal(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(SECTOR);
        let stop = end / SECTOR;
        if first < stop {
            let healed: Vec<u64> = self.bad.range(first..stop).copied().collect();
            for s in healed {
                self.bad.remove(&s);
            }
        }
    }

    /// Bytes held by the cache.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    /// Number of unflushed entries.
    pub(crate) fn dirty(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes, length and allocated pages of a store, for comparing two.
    fn snapshot(store: &PageStore, len: u64) -> (Vec<u8>, u64, Vec<u64>) {
        let mut bytes = vec![0u8; len as usize];
        store.read(0, &mut bytes);
        (bytes, len, store.pages().map(|(i, _)| i).collect())
    }

    /// A deterministic op over a 64 KiB file: writes (partial and whole pages), zeroings with
    /// and without unmap, and now and then a size change or preallocation.
    fn op(x: &mut u64) -> CacheOp {
        let mut next = |n: u64| {
            *x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*x >> 33) % n
        };
        let offset = next(60_000);
        let len = 1 + next(12_000);
        match next(10) {
            0..=5 => CacheOp::Write {
                offset,
                data: vec![1 + next(250) as u8; len as usize],
            },
            6 | 7 => CacheOp::Zero {
                offset,
                len,
                unmap: next(2) == 0,
                grows: next(2) == 0,
            },
            8 => CacheOp::SetLen(next(70_000)),
            _ => CacheOp::Prealloc { offset, len },
        }
    }

    #[test]
    fn landing_a_prefix_gives_the_bytes_of_applying_it_in_order() {
        let mut x = 7u64;
        for round in 0..300 {
            let mut f = VFile::new(1);
            for step in 0..40 {
                f.push(op(&mut x), false);
                if step % 7 != 6 {
                    continue;
                }
                // Flush a prefix of the cache: the reference applies it entry by entry.
                let n = (x as usize >> 7) % (f.cache.len() + 1);
                let (mut want, mut want_len) = (f.durable.clone(), f.durable_len);
                for e in &f.cache[..n] {
                    apply(&mut want, &mut want_len, &e.op, None);
                }
                let current = snapshot(&f.current, f.len);
                f.land(n);
                assert_eq!(
                    snapshot(&f.durable, f.durable_len),
                    snapshot(&want, want_len),
                    "round {round} step {step}"
                );
                assert_eq!(
                    snapshot(&f.current, f.len),
                    current,
                    "round {round} step {step}"
                );
                let mut view = (f.durable.clone(), f.durable_len);
                for e in &f.cache {
                    apply(&mut view.0, &mut view.1, &e.op, None);
                }
                assert_eq!(
                    snapshot(&view.0, view.1),
                    current,
                    "round {round} step {step}"
                );
            }
        }
    }
}
