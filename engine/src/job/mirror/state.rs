//! What the mirror job and its mirror-top filter share: the dirty bitmap, the granules busy with
//! a copy or a synchronous (write-blocking) guest write, in-flight accounting and the failures
//! of finished copy operations.
//!
//! The rules that keep the target equal to the source under every interleaving:
//!
//! * A granule is dirty when the target may differ from the source there. A guest write marks
//!   its range dirty *after* it completed on the source, so a copy that cleared the granule and
//!   read the source before the write landed is always followed by another copy.
//! * A copy operation takes its granules busy and clears them dirty *before* it reads the
//!   source; at most one copy (or write-blocking guest write) owns a granule at a time, so two
//!   writes of the same granule never race on the target.
//! * A write-blocking guest write takes its granules busy before it writes the source and keeps
//!   them until the target has the data too, so source and target see overlapping writes in
//!   the same order; it clears only the granules it covered completely.
//! * A failed copy or target write marks its range dirty again.

use std::cell::{Cell, RefCell};

use crate::bitmap::DirtyBitmap;
use crate::error::Error;
use crate::graph::Child;
use crate::util::Notify;

/// Background or write-blocking copying (`copy-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Guest writes only mark the dirty bitmap; the job copies in the background.
    Background,
    /// Guest writes complete only once the target has them too.
    WriteBlocking,
}

/// State shared by the job, its copy operations and the filter.
pub(super) struct MirrorState {
    pub(super) dirty: RefCell<DirtyBitmap>,
    busy: RefCell<DirtyBitmap>,
    /// Woken when a granule becomes dirty, is released, or an operation ends.
    pub(super) changed: Notify,
    pub(super) ops_in_flight: Cell<u32>,
    pub(super) bytes_in_flight: Cell<u64>,
    pub(super) copy_mode: CopyMode,
    /// The job's own edge to the target (set once the job holds it; cleared when it stops
    /// mirroring guest writes).
    pub(super) target: RefCell<Option<Child>>,
    /// Failures of finished copy operations, oldest first: (error, was it a source read).
    pub(super) errors: RefCell<Vec<(Error, bool)>>,
}

impl MirrorState {
    pub(super) fn new(len: u64, granularity: u64, copy_mode: CopyMode) -> MirrorState {
        MirrorState {
            dirty: RefCell::new(DirtyBitmap::new(len, granularity)),
            busy: RefCell::new(DirtyBitmap::new(len, granularity)),
            changed: Notify::new(),
            ops_in_flight: Cell::new(0),
            bytes_in_flight: Cell::new(0),
            copy_mode,
            target: RefCell::new(None),
            errors: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn granularity(&self) -> u64 {
        self.dirty.borrow().granularity()
    }

    /// The target differs (or may) from the source in this range.
    pub(super) fn mark_dirty(&self, offset: u64, bytes: u64) {
        self.dirty.borrow_mut().set(offset, bytes);
        self.changed.notify_all();
    }

    /// Clear the granules lying entirely inside `[offset, offset+bytes)`.
    pub(super) fn clear_covered(&self, offset: u64, bytes: u64) {
        let g = self.granularity();
        let start = offset.div_ceil(g) * g;
        let end = (offset + bytes) / g * g;
        let len = self.dirty.borrow().len();
        // The last granule may be short: covering up to the end covers it.
        let end = if offset + bytes >= len { len } else { end };
        if end > start {
            self.dirty.borrow_mut().reset(start, end - start);
        }
    }

    /// Wait until no granule of the range is busy, then take them all.
    pub(super) async fn acquire(&self, offset: u64, bytes: u64) {
        while self.busy.borrow().any_dirty(offset, bytes) {
            self.changed.wait().await;
        }
        self.busy.borrow_mut().set(offset, bytes);
    }

    /// Give back granules taken by [`MirrorState::acquire`] or [`MirrorState::pick`].
    pub(super) fn release(&self, offset: u64, bytes: u64) {
        self.busy.borrow_mut().reset(offset, bytes);
        self.changed.notify_all();
    }

    /// Choose the next copy: the first dirty granule that is not busy at or after granule
    /// `cursor` (wrapping), extended over following dirty, free granules up to `max_bytes`.
    /// The granules become busy and clean; in-flight accounting is updated.
    pub(super) fn pick(&self, cursor: u64, max_bytes: u64) -> Option<(u64, u64)> {
        let (first, end) = {
            let dirty = self.dirty.borrow();
            let busy = self.busy.borrow();
            let granules = dirty.granules();
            let max_granules = (max_bytes / dirty.granularity()).max(1);
            let find_from = |from: u64, limit: u64| {
                let mut g = dirty.next_dirty(from)?;
                while g < limit {
                    if !busy.get(g) {
                        return Some(g);
                    }
                    g = dirty.next_dirty(g + 1)?;
                }
                None
            };
            let first = find_from(cursor, granules).or_else(|| find_from(0, cursor))?;
            let mut end = first + 1;
            while end < granules && end - first < max_granules && dirty.get(end) && !busy.get(end) {
                end += 1;
            }
            (first, end)
        };
        let (offset, stop) = self.dirty.borrow().byte_range(first, end);
        let bytes = stop - offset;
        self.dirty.borrow_mut().reset(offset, bytes);
        self.busy.borrow_mut().set(offset, bytes);
        self.ops_in_flight.set(self.ops_in_flight.get() + 1);
        self.bytes_in_flight.set(self.bytes_in_flight.get() + bytes);
        Some((offset, bytes))
    }

    /// A copy operation of `pick` ended.
    pub(super) fn op_done(&self, offset: u64, bytes: u64, failure: Option<(Error, bool)>) {
        if let Some(f) = failure {
            self.dirty.borrow_mut().set(offset, bytes);
            self.errors.borrow_mut().push(f);
        }
        self.ops_in_flight.set(self.ops_in_flight.get() - 1);
        self.bytes_in_flight.set(self.bytes_in_flight.get() - bytes);
        self.release(offset, bytes);
    }

    /// Wait until every copy operation has ended.
    pub(super) async fn wait_ops(&self) {
        while self.ops_in_flight.get() > 0 {
            self.changed.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_skips_busy_granules_and_wraps() {
        let s = MirrorState::new(16 * 4096, 4096, CopyMode::Background);
        s.mark_dirty(0, 16 * 4096);
        let (o, n) = s.pick(4, 3 * 4096).unwrap();
        assert_eq!((o, n), (4 * 4096, 3 * 4096));
        // Busy granules 4..7 are skipped; from 5 the next free dirty granule is 7.
        assert_eq!(s.pick(5, 4096), Some((7 * 4096, 4096)));
        // Wrap around to the start.
        assert_eq!(s.pick(15, 8 * 4096).map(|p| p.0), Some(15 * 4096));
        assert_eq!(s.pick(15, 2 * 4096), Some((0, 2 * 4096)));
        assert_eq!(s.ops_in_flight.get(), 4);
        s.op_done(0, 2 * 4096, Some((Error::generic("x"), true)));
        assert!(s.dirty.borrow().get(0) && s.dirty.borrow().get(1));
        assert_eq!(s.errors.borrow().len(), 1);
    }

    #[test]
    fn clear_covered_keeps_partly_written_granules() {
        let s = MirrorState::new(10_000, 4096, CopyMode::WriteBlocking);
        s.mark_dirty(0, 10_000);
        // [100, 8292) covers granule 1 only; 0 and 2 are touched partly and stay dirty.
        s.clear_covered(100, 8192);
        let d = |g| s.dirty.borrow().get(g);
        assert!(d(0) && !d(1) && d(2));
        // Up to the end covers the short last granule.
        s.clear_covered(8192, 10_000 - 8192);
        assert!(d(0) && !d(1) && !d(2));
    }
}
