//! The state the loop shares with other threads: the inbox that wakers and pool workers deliver
//! to, and the eventfd that wakes a sleeping loop.
//!
//! Wakers must be `Send + Sync` (std's contract) even though tasks are `!Send`, so a waker only
//! names its task by key; the queue it pushes to is behind a mutex that the loop takes once per
//! turn. Worker-pool completions travel through the same mutex, so "is there anything to do?"
//! and "I am going to sleep" are decided atomically, and a wake from another thread signals the
//! eventfd only when the loop really sleeps.

use std::sync::Arc;

use parking_lot::Mutex;

use super::op::Done;
use super::sys::EventFd;

/// What other threads (and wakers on this thread) hand to the loop.
#[derive(Default)]
pub(super) struct Inbox {
    /// Keys (`index | generation << 32`) of woken tasks, in wake order.
    pub(super) ready: Vec<u64>,
    /// The `block_on` future was woken.
    pub(super) main: bool,
    /// Worker-pool completions.
    pub(super) done: Vec<Done>,
    /// The loop is (about to be) blocked and must be signalled through the eventfd.
    sleeping: bool,
}

/// The state shared with wakers and worker threads.
pub(super) struct Shared {
    /// The inbox, locked once per loop turn and once per delivery.
    inbox: Mutex<Inbox>,
    /// Readable when the sleeping loop must wake.
    pub(super) efd: EventFd,
}

impl Shared {
    /// A fresh inbox and eventfd.
    pub(super) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            efd: EventFd::new(),
        })
    }

    /// Deliver something to the loop: `f` edits the inbox under the lock; the eventfd is written
    /// only if the loop had declared itself asleep.
    pub(super) fn deliver(&self, f: impl FnOnce(&mut Inbox)) {
        let wake = {
            let mut inbox = self.inbox.lock();
            f(&mut inbox);
            std::mem::replace(&mut inbox.sleeping, false)
        };
        if wake {
            self.efd.signal();
        }
    }

    /// Append everything delivered to `ready` and `done`; returns whether the main future was
    /// woken. Both sides keep their capacity, so this allocates nothing in steady state.
    pub(super) fn collect(&self, ready: &mut Vec<u64>, done: &mut Vec<Done>) -> bool {
        let mut inbox = self.inbox.lock();
        ready.append(&mut inbox.ready);
        done.append(&mut inbox.done);
        std::mem::take(&mut inbox.main)
    }

    /// Declare the loop asleep unless something is pending; true when it may block.
    pub(super) fn try_sleep(&self) -> bool {
        let mut inbox = self.inbox.lock();
        let idle = inbox.ready.is_empty() && !inbox.main && inbox.done.is_empty();
        inbox.sleeping = idle;
        idle
    }

    /// The loop is awake again: later deliveries need no eventfd write.
    pub(super) fn awake(&self) {
        self.inbox.lock().sleeping = false;
    }
}
