//! qcow2 metadata table cache (L2 tables and refcount blocks): whole clusters kept in a `Vec`
//! with least-recently-used eviction and a dirty flag per table.
//!
//! Pure data structure: loading and writing back tables is done by the driver under its
//! metadata lock. Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

struct Slot {
    offset: u64,
    data: Vec<u8>,
    dirty: bool,
    used: u64,
}

/// A cache of cluster-sized metadata tables keyed by host offset.
pub struct TableCache {
    slots: RefCell<Vec<Slot>>,
    /// A cell: a reopen with other cache-size options changes it.
    capacity: Cell<usize>,
    tick: Cell<u64>,
    /// The tick of the last `drop_unused` round.
    cleaned_at: Cell<u64>,
    /// Index of the slot found last: requests walk a table entry by entry, so most lookups hit
    /// it and skip the linear search (which dominated block status of a 4k-cluster image).
    hint: Cell<usize>,
}

impl TableCache {
    /// A cache holding at most `capacity` tables (at least 1).
    pub fn new(capacity: usize) -> TableCache {
        TableCache {
            slots: RefCell::new(Vec::new()),
            capacity: Cell::new(capacity.max(1)),
            tick: Cell::new(0),
            cleaned_at: Cell::new(0),
            hint: Cell::new(0),
        }
    }

    /// Index of the slot holding `offset`, trying the last one found first.
    fn find(&self, slots: &[Slot], offset: u64) -> Option<usize> {
        let hint = self.hint.get();
        if slots.get(hint).is_some_and(|s| s.offset == offset) {
            return Some(hint);
        }
        let i = slots.iter().position(|s| s.offset == offset)?;
        self.hint.set(i);
        Some(i)
    }

    fn touch(&self) -> u64 {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        t
    }

    /// True when the table at `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.find(&self.slots.borrow(), offset).is_some()
    }

    /// Run `f` on the cached table at `offset` (None if it is not cached). `dirty` marks the
    /// table as modified.
    pub fn with<R>(&self, offset: u64, dirty: bool, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let t = self.touch();
        let mut slots = self.slots.borrow_mut();
        let i = self.find(&slots, offset)?;
        let slot = &mut slots[i];
        slot.used = t;
        slot.dirty |= dirty;
        Some(f(&mut slot.data))
    }

    /// True when inserting a new table must first evict one.
    pub fn is_full(&self) -> bool {
        self.slots.borrow().len() >= self.capacity.get()
    }

    /// Hold at most `capacity` tables from now on (at least 1), dropping the least recently
    /// used clean tables beyond it; dirty ones stay until written back (callers write back
    /// first, so none are left).
    pub fn set_capacity(&self, capacity: usize) {
        let capacity = capacity.max(1);
        self.capacity.set(capacity);
        let mut slots = self.slots.borrow_mut();
        while slots.len() > capacity {
            let Some(i) = (0..slots.len())
                .filter(|&i| !slots[i].dirty)
                .min_by_key(|&i| slots[i].used)
            else {
                break;
            };
            slots.remove(i);
        }
    }

    /// How many tables it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// The least recently used table: (offset, copy of its bytes, dirty).
    pub fn lru(&self) -> Option<(u64, Vec<u8>, bool)> {
        let slots = self.slots.borrow();
        let s = slots.iter().min_by_key(|s| s.used)?;
        Some((s.offset, s.data.clone(), s.dirty))
    }

    /// Drop the table at `offset` from the cache (written back or not: the caller decides).
    pub fn remove(&self, offset: u64) {
        self.slots.borrow_mut().retain(|s| s.offset != offset);
    }

    /// Add a table. The caller made room first.
    pub fn insert(&self, offset: u64, data: Vec<u8>, dirty: bool) {
        let used = self.touch();
        let mut slots = self.slots.borrow_mut();
        slots.retain(|s| s.offset != offset);
        slots.push(Slot {
            offset,
            data,
            dirty,
            used,
        });
    }

    /// Copies of every dirty table, in offset order.
    pub fn dirty(&self) -> Vec<(u64, Vec<u8>)> {
        let mut v: Vec<(u64, Vec<u8>)> = self
            .slots
            .borrow()
            .iter()
            .filter(|s| s.dirty)
            .map(|s| (s.offset, s.data.clone()))
            .collect();
        v.sort_by_key(|(o, _)| *o);
        v
    }

    /// Drop the clean tables not used since the previous call (`cache-clean-interval`).
    pub fn drop_unused(&self) {
        let since = self.cleaned_at.replace(self.tick.get());
        self.slots
            .borrow_mut()
            .retain(|s| s.dirty || s.used > since);
    }

    /// The number of tables cached.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Forget every table (dirty or not).
    pub fn clear(&self) {
        self.slots.borrow_mut().clear();
    }

    /// True when some table is dirty.
    pub fn has_dirty(&self) -> bool {
        self.slots.borrow().iter().any(|s| s.dirty)
    }

    /// Mark the table at `offset` clean if its bytes still equal `data` (it was written back).
    pub fn mark_clean(&self, offset: u64, data: &[u8]) {
        if let Some(s) = self
            .slots
            .borrow_mut()
            .iter_mut()
            .find(|s| s.offset == offset)
            && s.data == data
        {
            s.dirty = false;
        }
    }
}

/// Read big-endian u64 entry `idx` of a table.
pub fn get_u64(t: &[u8], idx: usize) -> u64 {
    u64::from_be_bytes(t[idx * 8..idx * 8 + 8].try_into().expect("8 bytes"))
}

/// Write big-endian u64 entry `idx` of a table.
pub fn set_u64(t: &mut [u8], idx: usize, v: u64) {
    t[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes());
}
