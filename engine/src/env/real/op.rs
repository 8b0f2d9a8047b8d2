//! Host I/O operations in flight: the slab both backends keep them in, and the future a caller
//! awaits.
//!
//! The slab, not the caller's future, owns an in-flight operation's buffer and a reference to its
//! file (so the fd cannot be closed and reused under the kernel). Dropping the future marks the
//! slot orphaned; the slot, the buffer and the file reference go when the completion arrives.
//! Slots are reused through a free list, so a request costs no allocation here.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::executor::Shared;
use super::pool::PoolIo;
use super::uring::Uring;
use crate::io::IoBuf;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// `pread` into the buffer; past EOF reads as zeroes.
    Read,
    /// `pwrite` from the buffer; `dsync` makes it durable (FUA).
    Write {
        /// `RWF_DSYNC`.
        dsync: bool,
    },
    /// `fdatasync`.
    Fdatasync,
    /// `fallocate` with this mode over `offset..offset+len`.
    Fallocate {
        /// `FALLOC_FL_*` flags.
        mode: i32,
    },
    /// `ftruncate` to `len`.
    Ftruncate,
}

/// An operation to start.
pub(super) struct Op {
    /// What to do.
    pub(super) kind: OpKind,
    /// The file, kept open until the operation is over.
    pub(super) file: Rc<File>,
    /// Byte offset.
    pub(super) offset: u64,
    /// Length for fallocate, new size for ftruncate.
    pub(super) len: u64,
    /// The data buffer of a read or write.
    pub(super) buf: Option<IoBuf>,
}

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
    fn poll(&mut self, index: u32, cx: &mut Context<'_>) -> Poll<(Option<IoBuf>, i32)> {
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
    fn cancel(&mut self, index: u32) {
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

/// The I/O backend of a reactor (enum dispatch: no virtual calls on the hot path). There is one
/// per reactor, so the size difference of the variants costs nothing; boxing would add a pointer
/// chase per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Io {
    /// io_uring.
    Uring(RefCell<Uring>),
    /// Blocking syscalls on worker threads.
    Pool(RefCell<PoolIo>),
}

impl Io {
    /// Start `op` on the backend; returns its slot.
    fn start(&self, op: Op, waker: &Waker) -> u32 {
        match self {
            Io::Uring(u) => u.borrow_mut().start(op, waker),
            Io::Pool(p) => p.borrow_mut().start(op, waker),
        }
    }

    /// Poll the slot of a started operation.
    fn poll(&self, index: u32, cx: &mut Context<'_>) -> Poll<(Option<IoBuf>, i32)> {
        match self {
            Io::Uring(u) => u.borrow_mut().ops.poll(index, cx),
            Io::Pool(p) => p.borrow_mut().ops.poll(index, cx),
        }
    }

    /// Forget the future of a started operation (it was dropped).
    fn cancel(&self, index: u32) {
        // try_borrow: a future dropped while the backend itself is borrowed can only happen at
        // teardown; leaking the slot then is harmless.
        match self {
            Io::Uring(u) => u.try_borrow_mut().map(|mut u| u.ops.cancel(index)),
            Io::Pool(p) => p.try_borrow_mut().map(|mut p| p.ops.cancel(index)),
        }
        .ok();
    }

    /// Operations in flight.
    pub(super) fn in_flight(&self) -> usize {
        match self {
            Io::Uring(u) => u.borrow().ops.in_flight(),
            Io::Pool(p) => p.borrow().ops.in_flight(),
        }
    }

    /// One reactor turn of I/O: submit what was queued, block for at most `block` ns when
    /// `Some` (`Some(None)`: no timeout; the caller has declared the loop asleep in `shared`)
    /// and reap completions.
    pub(super) fn turn(&self, block: Option<Option<u64>>, shared: &Shared) {
        match self {
            Io::Uring(u) => u.borrow_mut().turn(block, shared),
            Io::Pool(p) => {
                p.borrow_mut().flush();
                if let Some(timeout) = block {
                    shared.efd.wait(timeout);
                    shared.awake();
                }
            }
        }
    }
}

/// The future of one operation: starts it on first poll, yields `(buffer, 0 | -errno)`.
pub(super) struct OpFuture<'a> {
    /// The backend.
    io: &'a Io,
    /// The operation, until it is started.
    op: Option<Op>,
    /// The slot, while started and not yet finished.
    index: Option<u32>,
}

impl<'a> OpFuture<'a> {
    /// An operation on `io`, started when first polled.
    pub(super) fn new(io: &'a Io, op: Op) -> OpFuture<'a> {
        OpFuture {
            io,
            op: Some(op),
            index: None,
        }
    }
}

impl Future for OpFuture<'_> {
    type Output = (Option<IoBuf>, i32);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let index = match (this.index, this.op.take()) {
            (Some(i), _) => i,
            (None, Some(op)) => {
                let i = this.io.start(op, cx.waker());
                this.index = Some(i);
                i
            }
            (None, None) => panic!("OpFuture polled after completion"),
        };
        let out = this.io.poll(index, cx);
        if out.is_ready() {
            this.index = None;
        }
        out
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.index {
            self.io.cancel(index);
        }
    }
}
