//! The virtual clock and its timers.
//!
//! Time is a `u64` of nanoseconds that moves only when the executor finds nothing runnable: it
//! then jumps straight to the earliest pending deadline and wakes every timer due at that instant,
//! in the order they were registered (ties broken by an insertion sequence, never by address or
//! hash). A `Sleep` cancels its timer when dropped, so abandoned sleeps never hold time back.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Key of a pending timer: deadline, then insertion sequence.
type TimerKey = (u64, u64);

/// The virtual clock: current time and pending timers.
#[derive(Default)]
pub(crate) struct Clock {
    now: Cell<u64>,
    seq: Cell<u64>,
    timers: RefCell<BTreeMap<TimerKey, Waker>>,
}

impl Clock {
    /// Current virtual time in ns.
    pub(crate) fn now(&self) -> u64 {
        self.now.get()
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.timers.borrow().keys().next().map(|k| k.0)
    }

    /// Number of pending timers.
    pub(crate) fn pending(&self) -> usize {
        self.timers.borrow().len()
    }

    fn register(&self, deadline: u64, waker: Waker) -> TimerKey {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.timers.borrow_mut().insert((deadline, seq), waker);
        (deadline, seq)
    }

    fn refresh(&self, key: TimerKey, waker: &Waker) {
        match self.timers.borrow_mut().get_mut(&key) {
            Some(w) if !w.will_wake(waker) => *w = waker.clone(),
            _ => {}
        }
    }

    fn cancel(&self, key: TimerKey) {
        // Take the waker out first, then drop it outside the borrow.
        let w = self.timers.borrow_mut().remove(&key);
        drop(w);
    }

    /// Jump to `t` (never backwards) and wake every timer due by then, in deadline/sequence order.
    pub(crate) fn advance_to(&self, t: u64) {
        assert!(t >= self.now.get(), "virtual clock moving backwards");
        self.now.set(t);
        let due: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            let later = match t.checked_add(1) {
                Some(next) => timers.split_off(&(next, 0)),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *timers, later)
                .into_values()
                .collect()
        };
        for w in due {
            w.wake();
        }
    }
}

/// A future that completes once the virtual clock reaches `deadline`.
pub(crate) struct Sleep {
    clock: Rc<Clock>,
    deadline: u64,
    key: Option<TimerKey>,
}

impl Sleep {
    pub(crate) fn new(clock: Rc<Clock>, deadline: u64) -> Sleep {
        Sleep {
            clock,
            deadline,
            key: None,
        }
    }
}

impl Sleep {
    /// The virtual time this sleep ends at.
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.deadline {
            if let Some(k) = self.key.take() {
                self.clock.cancel(k);
            }
            return Poll::Ready(());
        }
        match self.key {
            Some(k) => self.clock.refresh(k, cx.waker()),
            None => {
                let k = self.clock.register(self.deadline, cx.waker().clone());
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.clock.cancel(k);
        }
    }
}
