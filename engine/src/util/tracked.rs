//! Tracked requests: the byte ranges in flight in one node, and the serialisation rule between
//! them (QEMU's `BdrvTrackedRequest`).
//!
//! Every request is tracked while it runs. A *serialising* request (read-modify-write of an
//! unaligned write, copy-before-write, copy-on-read) waits for every overlapping request, and
//! every request waits for overlapping serialising ones. A request never waits for one that is
//! itself waiting: that one will re-check, and find us, when it wakes; this is what keeps waits
//! from forming a cycle. Waiters wake in FIFO order, so replays are deterministic.

use std::cell::{Cell, RefCell};

use super::{Notify, ranges_overlap};

#[derive(Clone, Copy, Debug)]
struct Entry {
    offset: u64,
    len: u64,
    serialising: bool,
    /// Index of the entry this one waits for, if waiting.
    waiting_for: Option<usize>,
}

/// The tracked requests of one node.
#[derive(Default)]
pub struct TrackedRanges {
    entries: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    serialising_in_flight: Cell<u32>,
    released: Notify,
}

/// A tracked request; untracked (and waiters woken) when dropped.
pub struct Tracked<'a> {
    ranges: &'a TrackedRanges,
    index: usize,
}

impl TrackedRanges {
    /// No requests.
    pub fn new() -> TrackedRanges {
        TrackedRanges::default()
    }

    /// Track `[offset, offset+len)`. A serialising request's range is widened to `align`.
    pub fn track(&self, offset: u64, len: u64, serialising: bool, align: u64) -> Tracked<'_> {
        let (offset, len) = if serialising && align > 1 {
            let start = super::align_down(offset, align);
            let end = super::align_up(offset + len, align);
            (start, end - start)
        } else {
            (offset, len)
        };
        let entry = Entry {
            offset,
            len,
            serialising,
            waiting_for: None,
        };
        if serialising {
            self.serialising_in_flight
                .set(self.serialising_in_flight.get() + 1);
        }
        let mut entries = self.entries.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                entries[i] = Some(entry);
                i
            }
            None => {
                entries.push(Some(entry));
                entries.len() - 1
            }
        };
        Tracked {
            ranges: self,
            index,
        }
    }

    /// Number of tracked requests.
    pub fn len(&self) -> usize {
        self.entries.borrow().iter().filter(|e| e.is_some()).count()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of serialising requests in flight.
    pub fn serialising_in_flight(&self) -> u32 {
        self.serialising_in_flight.get()
    }

    fn blocker(&self, me: usize) -> Option<usize> {
        let entries = self.entries.borrow();
        let mine = entries[me].expect("tracked entry vanished");
        entries.iter().enumerate().find_map(|(i, other)| {
            let other = other.as_ref()?;
            let conflicts = i != me
                && (mine.serialising || other.serialising)
                && ranges_overlap(mine.offset, mine.len, other.offset, other.len)
                && other.waiting_for.is_none();
            conflicts.then_some(i)
        })
    }

    fn set_waiting(&self, me: usize, on: Option<usize>) {
        if let Some(target) = on {
            self.assert_no_cycle(me, target);
        }
        self.entries.borrow_mut()[me]
            .as_mut()
            .expect("tracked entry")
            .waiting_for = on;
    }

    /// A waiter chain that leads back to the waiter is a bug in the serialisation rule.
    fn assert_no_cycle(&self, me: usize, mut target: usize) {
        let entries = self.entries.borrow();
        for _ in 0..entries.len() + 1 {
            assert!(
                target != me,
                "tracked-request wait cycle through request {me}"
            );
            match entries[target].and_then(|e| e.waiting_for) {
                Some(next) => target = next,
                None => return,
            }
        }
        panic!("tracked-request wait chain longer than the request list");
    }

    fn release(&self, index: usize) {
        let entry = self.entries.borrow_mut()[index]
            .take()
            .expect("tracked entry released twice");
        if entry.serialising {
            self.serialising_in_flight
                .set(self.serialising_in_flight.get() - 1);
        }
        self.free.borrow_mut().push(index);
        self.released.notify_all();
    }
}

impl Tracked<'_> {
    /// Wait until no conflicting overlapping request is in flight.
    pub async fn wait_conflicts(&self) {
        while let Some(blocker) = self.ranges.blocker(self.index) {
            self.ranges.set_waiting(self.index, Some(blocker));
            self.ranges.released.wait().await;
            self.ranges.set_waiting(self.index, None);
        }
    }

    /// Turn this request into a serialising one covering its range widened to `align`
    /// (copy-on-read and copy-before-write decide this after the request started).
    pub fn make_serialising(&self, align: u64) {
        let mut entries = self.ranges.entries.borrow_mut();
        let entry = entries[self.index].as_mut().expect("tracked entry");
        if !entry.serialising {
            entry.serialising = true;
            self.ranges
                .serialising_in_flight
                .set(self.ranges.serialising_in_flight.get() + 1);
        }
        let start = super::align_down(entry.offset, align);
        let end = super::align_up(entry.offset + entry.len, align);
        entry.offset = start;
        entry.len = end - start;
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.ranges.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_do_not_conflict_but_serialising_ones_do() {
        let t = TrackedRanges::new();
        let a = t.track(0, 4096, false, 1);
        let b = t.track(0, 4096, false, 1);
        assert_eq!(t.blocker(b.index), None);
        let c = t.track(100, 10, true, 4096);
        assert_eq!(t.blocker(c.index), Some(a.index));
        assert_eq!(t.serialising_in_flight(), 1);
        drop((a, b));
        assert_eq!(t.blocker(c.index), None);
        let d = t.track(8000, 200, false, 1);
        assert_eq!(
            t.blocker(d.index),
            None,
            "outside the widened range [0, 4096)"
        );
        let e = t.track(4000, 200, false, 1);
        assert_eq!(t.blocker(e.index), Some(c.index));
        drop(c);
        assert_eq!(t.serialising_in_flight(), 0);
        assert_eq!(t.len(), 2);
    }
}
