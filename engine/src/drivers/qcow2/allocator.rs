//! The refcount side's in-memory state: the refcount table (its offset and entries), the
//! cache of refcount blocks, where the free-cluster search starts, and the frees deferred
//! until the mapping change that caused them is durable. The refcount arithmetic, the search
//! and the write-back that work on this state are in `refcount.rs`; every method that changes
//! this state takes the metadata-lock guard as proof that the lock is held.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

use super::cache::TableCache;
use super::entry::OFFSET_MASK;
use super::lock::MetaGuard;
use super::units::{HostCluster, HostOffset};

/// A host range whose refcount drops once the mapping change that freed it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeferredFree {
    /// First byte (within the first freed cluster).
    pub(crate) host: HostOffset,
    /// Bytes; every cluster the range touches is freed.
    pub(crate) len: u64,
    /// Discard what becomes free in the file.
    pub(crate) discard: bool,
}

/// Refcount table, refcount block cache, free-cluster search hint, deferred frees.
pub(crate) struct Allocator {
    /// Where the refcount table is in the image file.
    reftable_offset: Cell<HostOffset>,
    /// Refcount table entries (refcount block offsets; 0: none) as stored.
    reftable: RefCell<Vec<u64>>,
    /// Cached refcount blocks, keyed by their offset in the image file.
    pub(crate) cache: TableCache,
    /// First cluster index that may be free.
    free_hint: Cell<HostCluster>,
    pending_free: RefCell<Vec<DeferredFree>>,
    /// Where the next compressed cluster's bytes go: inside a host cluster partly filled by
    /// earlier ones (`None`: the next one starts a new cluster).
    byte_cursor: Cell<Option<HostOffset>>,
}

impl Allocator {
    /// The refcount table at `offset` with entries `reftable`, a refcount block cache of
    /// `slots` blocks.
    pub(crate) fn new(offset: HostOffset, reftable: Vec<u64>, slots: usize) -> Allocator {
        Allocator {
            reftable_offset: Cell::new(offset),
            reftable: RefCell::new(reftable),
            cache: TableCache::new(slots),
            free_hint: Cell::new(HostCluster::new(0)),
            pending_free: RefCell::new(Vec::new()),
            byte_cursor: Cell::new(None),
        }
    }

    /// The refcount table's size in bytes.
    pub(crate) fn reftable_bytes(&self) -> u64 {
        self.reftable_len() as u64 * 8
    }

    /// Where the refcount table is in the image file.
    pub(crate) fn reftable_offset(&self) -> HostOffset {
        self.reftable_offset.get()
    }

    /// Entries in the refcount table.
    pub(crate) fn reftable_len(&self) -> usize {
        self.reftable.borrow().len()
    }

    /// Refcount table entry `rt` as stored, if the table reaches it.
    pub(crate) fn reftable_entry(&self, rt: u64) -> Option<u64> {
        self.reftable.borrow().get(rt as usize).copied()
    }

    /// A copy of the refcount table (for walks that do I/O between entries).
    pub(crate) fn reftable_snapshot(&self) -> Vec<u64> {
        self.reftable.borrow().clone()
    }

    /// True when `f` holds for the offset of some refcount block.
    pub(crate) fn any_block(&self, mut f: impl FnMut(HostOffset) -> bool) -> bool {
        let table = self.reftable.borrow();
        table.iter().any(|e| f(HostOffset::new(e & OFFSET_MASK)))
    }

    /// Record refcount table entry `rt` as written to the file.
    pub(crate) fn set_reftable_entry(&self, _held: &MetaGuard<'_>, rt: u64, raw: u64) {
        self.reftable.borrow_mut()[rt as usize] = raw;
    }

    /// The table grew and moved to `offset` (its blocks, cached or not, stay valid).
    pub(crate) fn moved_table(
        &self,
        _held: &MetaGuard<'_>,
        offset: HostOffset,
        reftable: Vec<u64>,
    ) {
        self.reftable_offset.set(offset);
        *self.reftable.borrow_mut() = reftable;
    }

    /// A new refcount table (after a rebuild): nothing cached is valid any more and the
    /// search starts over. Only under the metadata lock (`_held` proves it).
    pub(crate) fn replace_table(
        &self,
        _held: &MetaGuard<'_>,
        offset: HostOffset,
        reftable: Vec<u64>,
    ) {
        self.reftable_offset.set(offset);
        *self.reftable.borrow_mut() = reftable;
        self.cache.clear();
        self.free_hint.set(HostCluster::new(0));
        self.byte_cursor.set(None);
    }

    /// Where the free-cluster search starts.
    pub(crate) fn hint(&self) -> HostCluster {
        self.free_hint.get()
    }

    /// The search goes on from `idx`.
    pub(crate) fn set_hint(&self, _held: &MetaGuard<'_>, idx: HostCluster) {
        self.free_hint.set(idx);
    }

    /// Cluster `idx` became free: the search starts there at the latest.
    pub(crate) fn freed(&self, _held: &MetaGuard<'_>, idx: HostCluster) {
        if idx < self.free_hint.get() {
            self.free_hint.set(idx);
        }
    }

    /// Cluster `idx` has no reference left: compressed bytes must not be packed into it any
    /// more (it may be allocated for something else).
    pub(crate) fn emptied(&self, _held: &MetaGuard<'_>, idx: HostCluster, cluster_bits: u32) {
        if self
            .byte_cursor
            .get()
            .is_some_and(|at| at.cluster(cluster_bits) == idx)
        {
            self.byte_cursor.set(None);
        }
    }

    /// Where the next compressed bytes would go (`None`: in a new cluster).
    pub(crate) fn byte_cursor(&self) -> Option<HostOffset> {
        self.byte_cursor.get()
    }

    /// The next compressed bytes go at `at` (at a cluster boundary: in a new cluster).
    pub(crate) fn set_byte_cursor(&self, _held: &MetaGuard<'_>, at: HostOffset, cluster_bits: u32) {
        let inside = !at.is_cluster_aligned(cluster_bits);
        self.byte_cursor.set(inside.then_some(at));
    }

    /// Queue a free until the mapping change that caused it is durable.
    pub(crate) fn defer_free(&self, _held: &MetaGuard<'_>, f: DeferredFree) {
        self.pending_free.borrow_mut().push(f);
    }

    /// True when frees are queued.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.pending_free.borrow().is_empty()
    }

    /// The queued frees, in queue order, leaving none.
    pub(crate) fn take_deferred(&self, _held: &MetaGuard<'_>) -> Vec<DeferredFree> {
        std::mem::take(&mut *self.pending_free.borrow_mut())
    }
}
