//! Requests suspended by blkdebug breakpoints (`break EVENT TAG`), and the verbs that release
//! them: `resume TAG` (the oldest request suspended under TAG), `remove_break TAG` (all of them),
//! `wait_break TAG` (until one is suspended).
//!
//! A suspended request is an entry in a FIFO `Vec` holding the sending half of a one-shot
//! channel; the request awaits the receiving half. If a suspended request's future is dropped,
//! its entries go too, so `is_suspended` never reports a request that no longer exists.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::{Cell, RefCell};

use crate::error::{Errno, Error, Result};
use crate::util::{Notify, OneshotReceiver, OneshotSender, oneshot};

/// One suspension of one request.
struct Suspended {
    id: u64,
    tag: String,
    wake: OneshotSender<()>,
}

/// The suspended requests of one blkdebug node.
#[derive(Default)]
pub(super) struct Breakpoints {
    suspended: RefCell<Vec<Suspended>>,
    next_id: Cell<u64>,
    /// Notified whenever a request is suspended (for `wait_break`).
    changed: Notify,
}

/// A request's pending suspensions: one per matched breakpoint, released in order.
pub(super) struct Parked<'a> {
    breakpoints: &'a Breakpoints,
    waits: Vec<(u64, OneshotReceiver<()>)>,
}

impl Parked<'_> {
    /// Wait until every suspension is resumed (a dropped sender counts as resumed).
    pub(super) async fn wait(mut self) {
        while !self.waits.is_empty() {
            let (_, rx) = &mut self.waits[0];
            let _ = rx.await;
            self.waits.remove(0);
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if self.waits.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.waits.iter().map(|(id, _)| *id).collect();
        self.breakpoints
            .suspended
            .borrow_mut()
            .retain(|s| !ids.contains(&s.id));
    }
}

impl Breakpoints {
    /// Record the calling request as suspended once under each of `tags`.
    pub(super) fn park(&self, tags: Vec<String>) -> Parked<'_> {
        let mut waits = Vec::with_capacity(tags.len());
        for tag in tags {
            let id = self.next_id.get() + 1;
            self.next_id.set(id);
            let (wake, rx) = oneshot();
            self.suspended
                .borrow_mut()
                .push(Suspended { id, tag, wake });
            waits.push((id, rx));
        }
        self.changed.notify_all();
        Parked {
            breakpoints: self,
            waits,
        }
    }

    /// Resume the oldest request suspended under `tag`; false when there is none.
    pub(super) fn resume_first(&self, tag: &str) -> bool {
        let entry = {
            let mut list = self.suspended.borrow_mut();
            list.iter()
                .position(|s| s.tag == tag)
                .map(|i| list.remove(i))
        };
        match entry {
            Some(s) => {
                s.wake.send(());
                true
            }
            None => false,
        }
    }

    /// `resume TAG`, with QEMU's `-ENOENT` when nothing is suspended under `tag`.
    pub(super) fn resume(&self, tag: &str) -> Result<()> {
        if self.resume_first(tag) {
            Ok(())
        } else {
            Err(Error::io_msg(
                Errno::ENOENT,
                format!("Could not resume '{tag}': no request is suspended under this tag"),
            ))
        }
    }

    /// Resume every request suspended under `tag`; true when there was one.
    pub(super) fn resume_all(&self, tag: &str) -> bool {
        let mut any = false;
        while self.resume_first(tag) {
            any = true;
        }
        any
    }

    /// Resume everything (the node is closing).
    pub(super) fn release_all(&self) {
        let all = std::mem::take(&mut *self.suspended.borrow_mut());
        for s in all {
            s.wake.send(());
        }
    }

    /// True while a request is suspended under `tag`.
    pub(super) fn is_suspended(&self, tag: &str) -> bool {
        self.suspended.borrow().iter().any(|s| s.tag == tag)
    }

    /// Complete once a request is suspended under `tag`.
    pub(super) async fn wait_suspended(&self, tag: String) {
        while !self.is_suspended(&tag) {
            self.changed.wait().await;
        }
    }
}
