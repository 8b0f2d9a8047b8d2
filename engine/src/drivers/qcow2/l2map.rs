//! The guest -> host mapping's in-memory state: the active L1 table (its offset in the file
//! and its typed entries) and the cache of L2 tables. The lookups and updates that read the
//! file, allocate tables or write entries back are in `cluster.rs` (they need the file, the
//! allocator and the overlap checks); this part owns the state they work on.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

use super::cache::TableCache;
use super::entry::L1Entry;
use super::units::HostOffset;

/// The active L1 table and the L2 table cache.
pub(crate) struct L2Map {
    /// Where the L1 table is in the image file (a resize or `make_empty` moves it).
    offset: Cell<HostOffset>,
    table: RefCell<Vec<L1Entry>>,
    /// Cached L2 tables, keyed by their offset in the image file.
    pub(crate) cache: TableCache,
}

impl L2Map {
    /// The L1 table at `offset` with entries `raw` as read from the file, and an L2 cache of
    /// `slots` tables.
    pub(crate) fn new(offset: HostOffset, raw: Vec<u64>, slots: usize) -> L2Map {
        L2Map {
            offset: Cell::new(offset),
            table: RefCell::new(raw.into_iter().map(L1Entry::from_raw).collect()),
            cache: TableCache::new(slots),
        }
    }

    /// The L1 table's offset in the image file.
    pub(crate) fn l1_offset(&self) -> HostOffset {
        self.offset.get()
    }

    /// Entries in the L1 table.
    pub(crate) fn l1_len(&self) -> usize {
        self.table.borrow().len()
    }

    /// The L1 table's size in bytes.
    pub(crate) fn l1_bytes(&self) -> u64 {
        self.l1_len() as u64 * 8
    }

    /// L1 entry `i`, if the table reaches it.
    pub(crate) fn get(&self, i: usize) -> Option<L1Entry> {
        self.table.borrow().get(i).copied()
    }

    /// L1 entry `i`; unallocated past the table's end.
    pub(crate) fn entry(&self, i: usize) -> L1Entry {
        self.get(i).unwrap_or(L1Entry::UNALLOCATED)
    }

    /// Record L1 entry `i` as written to the file.
    pub(crate) fn set(&self, i: usize, e: L1Entry) {
        self.table.borrow_mut()[i] = e;
    }

    /// The file offset of L1 entry `i`.
    pub(crate) fn entry_pos(&self, i: usize) -> HostOffset {
        self.offset.get() + i as u64 * 8
    }

    /// A copy of the whole L1 table (for walks that do I/O between entries).
    pub(crate) fn snapshot(&self) -> Vec<L1Entry> {
        self.table.borrow().clone()
    }

    /// True when `f` holds for the offset of some L2 table.
    pub(crate) fn any_table(&self, mut f: impl FnMut(HostOffset) -> bool) -> bool {
        self.table.borrow().iter().any(|e| f(e.l2_offset()))
    }

    /// The table as stored on disk, into the start of `out`.
    pub(crate) fn encode_into(&self, out: &mut [u8]) {
        for (i, e) in self.table.borrow().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&e.raw().to_be_bytes());
        }
    }

    /// The table moved to `offset` with `entries` entries (new ones unallocated).
    pub(crate) fn relocate(&self, offset: HostOffset, entries: usize) {
        self.offset.set(offset);
        self.table
            .borrow_mut()
            .resize(entries, L1Entry::UNALLOCATED);
    }

    /// Every entry unallocated, the table at `offset`, nothing cached (`make_empty`).
    pub(crate) fn reset(&self, offset: HostOffset) {
        self.cache.clear();
        self.table
            .borrow_mut()
            .iter_mut()
            .for_each(|e| *e = L1Entry::UNALLOCATED);
        self.offset.set(offset);
    }
}
