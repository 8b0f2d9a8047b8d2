//! qcow2 concurrency primitives: the metadata lock (one holder at a time; never held across
//! guest data I/O) and guest cluster range locks (reads share, writes/zeroes/discards are
//! exclusive), so overlapping allocations serialise, a host cluster is never freed while a
//! request still uses it, and non-overlapping requests stay concurrent.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

use crate::util::Notify;

/// An async mutual-exclusion lock for a single-threaded executor.
#[derive(Default)]
pub struct MetaLock {
    locked: Cell<bool>,
    wake: Notify,
}

/// Holds the [`MetaLock`] until dropped. Every qcow2 function that allocates clusters, changes
/// refcounts, queues or applies deferred frees, or reads and writes the L2/refcount caches
/// takes `&MetaGuard<'_>` as proof that its caller holds the lock: calling one without it does
/// not compile.
pub struct MetaGuard<'a>(&'a MetaLock);

impl MetaLock {
    /// Wait until the lock is free and take it.
    pub async fn lock(&self) -> MetaGuard<'_> {
        while self.locked.get() {
            self.wake.wait().await;
        }
        self.locked.set(true);
        MetaGuard(self)
    }
}

impl Drop for MetaGuard<'_> {
    fn drop(&mut self) {
        self.0.locked.set(false);
        self.0.wake.notify_all();
    }
}

#[derive(Clone, Copy)]
struct Held {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

/// Locks on ranges of guest clusters.
#[derive(Default)]
pub struct RangeLocks {
    held: RefCell<Vec<Held>>,
    next: Cell<u64>,
    wake: Notify,
}

/// Holds a range lock until dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    /// Lock guest clusters `[start, end)`, shared or exclusive.
    pub async fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        loop {
            let conflict = self
                .held
                .borrow()
                .iter()
                .any(|h| h.start < end && start < h.end && (h.exclusive || exclusive));
            if !conflict {
                break;
            }
            self.wake.wait().await;
        }
        let id = self.next.get() + 1;
        self.next.set(id);
        self.held.borrow_mut().push(Held {
            id,
            start,
            end,
            exclusive,
        });
        RangeGuard { locks: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.locks.held.borrow_mut().retain(|h| h.id != self.id);
        self.locks.wake.notify_all();
    }
}
