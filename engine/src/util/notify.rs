//! A single-threaded wait queue: tasks wait until someone calls `notify_all`.
//!
//! Used for drain polling, quiesced BlockBackends and tracked-request overlap waits. Waiters are
//! woken in the order they started waiting (a FIFO), so wake order is deterministic.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A wait queue. `wait()` completes at the next `notify_all()` after it was first polled.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// An empty queue.
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wake every waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    /// True when somebody waits.
    pub fn has_waiters(&self) -> bool {
        !self.waiters.borrow().is_empty()
    }

    /// Wait for the next `notify_all`.
    pub fn wait(&self) -> NotifyWait<'_> {
        NotifyWait {
            notify: self,
            generation: None,
        }
    }
}

/// Future returned by [`Notify::wait`].
pub struct NotifyWait<'a> {
    notify: &'a Notify,
    generation: Option<u64>,
}

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let current = self.notify.generation.get();
        match self.generation {
            Some(started) if started != current => Poll::Ready(()),
            _ => {
                self.generation = Some(current);
                let mut waiters = self.notify.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Give other ready tasks a turn: returns `Pending` once, waking itself.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future returned by [`yield_now`].
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
