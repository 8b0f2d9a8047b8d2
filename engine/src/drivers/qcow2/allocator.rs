//! The refcount side's in-memory state: the refcount table (its offset and entries), the
//! cache of refcount blocks, where the free-cluster search starts, and the frees deferred
//! until the mapping change that caused them is durable. The refcount arithmetic, the search
//! and the write-back that work on this state are in `refcount.rs`; every method that changes
//! this state takes the metadata-lock guard as proof that the lock is held.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

use super::cache::TableCache;
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
    pub(crate) reftable_offset: Cell<HostOffset>,
    /// Refcount table entries (refcount block offsets; 0: none) as stored.
    pub(crate) reftable: RefCell<Vec<u64>>,
    /// Cached refcount blocks, keyed by their offset in the image file.
    pub(crate) cache: TableCache,
    /// First cluster index that may be free.
    free_hint: Cell<HostCluster>,
    pending_free: RefCell<Vec<DeferredFree>>,
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
        }
    }

    /// The refcount table's size in bytes.
    pub(crate) fn reftable_bytes(&self) -> u64 {
        self.reftable.borrow().len() as u64 * 8
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
