//! Timers: a binary heap of deadlines over a slab of timer slots, and the `sleep_until` future.
//!
//! A cancelled sleep frees its slot at once; its heap entry stays until its deadline passes and
//! is then skipped because the slot's sequence number no longer matches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Core;

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
    fn arm(&mut self, deadline: u64, waker: Waker) -> (u32, u64) {
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
    fn release(&mut self, index: u32, seq: u64) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.seq == seq {
            slot.seq = 0;
            slot.waker = None;
            self.free.push(index);
        }
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

/// The future of `Env::sleep_until`.
pub(super) struct Sleep {
    /// The reactor whose clock and heap are used.
    core: Rc<Core>,
    /// Deadline in ns of the reactor's clock; 0 once completed.
    deadline: u64,
    /// `(slot, seq)` once armed.
    armed: Option<(u32, u64)>,
}

impl Sleep {
    /// A sleep until `deadline` ns on `core`'s clock.
    pub(super) fn new(core: Rc<Core>, deadline: u64) -> Sleep {
        Sleep {
            core,
            deadline,
            armed: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut timers = this.core.timers.borrow_mut();
        match this.armed {
            None => {
                if this.core.now_ns() >= this.deadline {
                    return Poll::Ready(());
                }
                this.armed = Some(timers.arm(this.deadline, cx.waker().clone()));
                Poll::Pending
            }
            Some((index, seq)) => {
                let slot = &mut timers.slots[index as usize];
                debug_assert_eq!(slot.seq, seq);
                if slot.fired {
                    timers.release(index, seq);
                    this.armed = None;
                    this.deadline = 0;
                    return Poll::Ready(());
                }
                match &mut slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((index, seq)) = self.armed.take()
            && let Ok(mut timers) = self.core.timers.try_borrow_mut()
        {
            timers.release(index, seq);
        }
    }
}
