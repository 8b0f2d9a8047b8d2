//! Timers: a binary heap of deadlines over a slab of timer slots (the `sleep_until` future on
//! them is the reactor's, in `reactor`).
//!
//! A cancelled sleep frees its slot at once; its heap entry stays until its deadline passes and
//! is then skipped because the slot's sequence number no longer matches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::task::Waker;

/// One armed (or fired) timer.
struct TimerSlot {
    /// Unique per arming; 0 when free.
    seq: u64,
    /// Who to wake when it fires.
    waker: Option<Waker>,
    /// Set when the deadline has passed.
    fired: bool,
}

/// The timer heap.
#[derive(Default)]
pub(super) struct Timers {
    /// `(deadline, seq, slot)`, earliest first; seq breaks ties in arming order.
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Slots by index.
    slots: Vec<TimerSlot>,
    /// Indices of free slots.
    free: Vec<u32>,
    /// Last sequence number handed out.
    next_seq: u64,
}

impl Timers {
    /// Arm a timer; returns `(slot, seq)`.
    pub(super) fn arm(&mut self, deadline: u64, waker: Waker) -> (u32, u64) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let slot = TimerSlot {
            seq,
            waker: Some(waker),
            fired: false,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((deadline, seq, index)));
        (index, seq)
    }

    /// Release a slot (fired or cancelled).
    pub(super) fn release(&mut self, index: u32, seq: u64) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.seq == seq {
            slot.seq = 0;
            slot.waker = None;
            self.free.push(index);
        }
    }

    /// For the sleep armed as `(index, seq)`: true (and the slot released) once it fired;
    /// otherwise `waker` is the one to wake when it does.
    pub(super) fn poll_fired(&mut self, index: u32, seq: u64, waker: &Waker) -> bool {
        let slot = &mut self.slots[index as usize];
        debug_assert_eq!(slot.seq, seq);
        if slot.fired {
            self.release(index, seq);
            return true;
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        false
    }

    /// The earliest live deadline, dropping stale heap entries on the way.
    pub(super) fn next_deadline(&mut self) -> Option<u64> {
        while let Some(&Reverse((deadline, seq, index))) = self.heap.peek() {
            if self.slots[index as usize].seq == seq {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Fire every timer due at `now`, in deadline order; the wakers are appended to `out` so
    /// they run after the borrow of the heap ends.
    pub(super) fn fire(&mut self, now: u64, out: &mut Vec<Waker>) {
        while let Some(&Reverse((deadline, seq, index))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let slot = &mut self.slots[index as usize];
            if slot.seq == seq {
                slot.fired = true;
                out.extend(slot.waker.take());
            }
        }
    }

    /// Number of armed timers.
    pub(super) fn armed(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Drop every waker (shutdown).
    pub(super) fn clear(&mut self) {
        *self = Timers::default();
    }
}
