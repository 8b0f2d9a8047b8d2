//! Dispatch of host I/O to the reactor's backend, and the future a caller awaits.
//!
//! [`Backend`] is the user's choice of mechanism;
//! [`Io`] is the backend of one reactor (enum dispatch: io_uring or the worker pool);
//! [`OpFuture`] starts an [`Op`] on it when first polled and yields `(buffer, 0 | -errno)`.
//! Dropping the future before completion orphans the slot (see `slab`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::op::Op;
use super::pool::PoolIo;
use super::shared::Shared;
use super::uring::Uring;
use crate::io::IoBuf;

/// Which mechanism performs host file I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: requests are submitted in batches and completed by the kernel.
    Uring,
    /// Blocking syscalls on a small pool of worker threads.
    ThreadPool,
}

impl Backend {
    /// The backend asked for by a value of `BLK_IO_BACKEND`: `threads` (or `pool`) selects the
    /// worker pool; anything else, or nothing, io_uring where the host allows it.
    pub fn from_env_value(value: Option<&str>) -> Backend {
        match value.map(str::trim) {
            Some("threads" | "thread" | "pool" | "threadpool") => Backend::ThreadPool,
            _ => Backend::Uring,
        }
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
            Io::Uring(u) => u.try_borrow_mut().map(|mut u| u.cancel(index)),
            Io::Pool(p) => p.try_borrow_mut().map(|mut p| p.cancel(index)),
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
                let mut p = p.borrow_mut();
                p.flush();
                if p.has_polls() {
                    // Readiness polls are answered here, by the loop: wait on their fds and
                    // the eventfd together (without blocking when the loop is busy).
                    p.wait_polls(shared.efd.raw(), block.unwrap_or(Some(0)));
                    if block.is_some() {
                        shared.awake();
                    }
                } else if let Some(timeout) = block {
                    drop(p);
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
