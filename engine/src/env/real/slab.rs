//! The slab of host I/O operations in flight, shared by both backends.
//!
//! The slab, not the caller's future, owns an in-flight operation's buffer and a reference to its
//! file (so the fd cannot be closed and reused under the kernel). Dropping the future marks the
//! slot orphaned; the slot, the buffer and the file reference go when the completion arrives.
//! Slots are reused through a free list, so a request costs no allocation here.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::op::{Op, OpKind};
use crate::io::IoBuf;

/// Lifecycle of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    /// On the free list.
    Free,
    /// Submitted (or queued for submission); the backend holds it.
    InFlight,
    /// Completed; the result waits for the future.
    Done,
    /// The future was dropped; free the slot on completion.
    Orphaned,
}

/// One operation's slot.
pub(super) struct OpSlot {
    /// Lifecycle.
    pub(super) state: SlotState,
    /// What to do.
    pub(super) kind: OpKind,
    /// Raw fd of `file`.
    pub(super) fd: RawFd,
    /// Keeps the fd open while the backend uses it.
    pub(super) file: Option<Rc<File>>,
    /// Byte offset.
    pub(super) offset: u64,
    /// Length or new size (non-data ops).
    pub(super) len: u64,
    /// The buffer (absent while a worker thread holds it).
    pub(super) buf: Option<IoBuf>,
    /// Bytes already transferred (io_uring resubmits the rest of a short transfer).
    pub(super) done: usize,
    /// Final result: 0 or `-errno`.
    pub(super) res: i32,
    /// Who to wake on completion.
    pub(super) waker: Option<Waker>,
}

/// The slab of operation slots.
#[derive(Default)]
pub(super) struct OpTable {
    /// Slots by index.
    pub(super) slots: Vec<OpSlot>,
    /// Indices of free slots.
    free: Vec<u32>,
    /// Slots started and not yet completed.
    in_flight: usize,
}

impl OpTable {
    /// Store `op` in a free slot, in flight, and return its index.
    pub(super) fn insert(&mut self, op: Op, waker: &Waker) -> u32 {
        let slot = OpSlot {
            state: SlotState::InFlight,
            kind: op.kind,
            fd: op.file.as_raw_fd(),
            file: Some(op.file),
            offset: op.offset,
            len: op.len,
            buf: op.buf,
            done: 0,
            res: 0,
            waker: Some(waker.clone()),
        };
        self.in_flight += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Record the final result of slot `index`: wake its future, or free it if orphaned.
    pub(super) fn complete(&mut self, index: u32, res: i32) {
        let slot = &mut self.slots[index as usize];
        self.in_flight -= 1;
        slot.res = res.min(0);
        slot.file = None;
        match slot.state {
            SlotState::InFlight => {
                slot.state = SlotState::Done;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
            SlotState::Orphaned => self.release(index),
            s => unreachable!("completion for a slot in state {s:?}"),
        }
    }

    /// Return slot `index` to the free list, dropping what it held.
    fn release(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.state = SlotState::Free;
        slot.buf = None;
        slot.file = None;
        slot.waker = None;
        self.free.push(index);
    }

    /// Poll slot `index` for its result.
    pub(super) fn poll(&mut self, index: u32, cx: &mut Context<'_>) -> Poll<(Option<IoBuf>, i32)> {
        let slot = &mut self.slots[index as usize];
        if slot.state == SlotState::Done {
            let out = (slot.buf.take(), slot.res);
            self.release(index);
            return Poll::Ready(out);
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The future of slot `index` was dropped.
    pub(super) fn cancel(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        match slot.state {
            SlotState::Done => self.release(index),
            SlotState::InFlight => {
                slot.state = SlotState::Orphaned;
                slot.waker = None;
            }
            s => unreachable!("cancel of a slot in state {s:?}"),
        }
    }

    /// Operations started and not yet completed (including orphaned ones).
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }
}
