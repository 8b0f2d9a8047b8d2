//! The vocabulary of host I/O: what an operation does ([`OpKind`]), an operation to start
//! ([`Op`]) and a worker's completion on its way back to the loop ([`Done`]).
//!
//! Types only: the slab that keeps operations in flight is `slab`, the backends are `uring` and
//! `pool`, and the future a caller awaits is in `dispatch`. Import order inside `env/real`:
//! `sys`, `op`, `slab`, `shared` <- `uring`, `pool` <- `dispatch` <- `executor` <- the reactor.

use std::fs::File;
use std::rc::Rc;

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
    /// Wait until the fd (a socket or pipe) is ready for `events` (`POLLIN`, `POLLOUT`); the
    /// caller then makes the non-blocking syscall itself. Never handed to a pool worker: the
    /// loop polls these fds when it waits (see `dispatch`).
    Poll {
        /// `poll(2)` event mask.
        events: i16,
    },
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

/// A worker-pool completion on its way back to the loop.
pub(super) struct Done {
    /// Slot of the operation.
    pub(super) slot: u32,
    /// 0 or `-errno`.
    pub(super) res: i32,
    /// The buffer, returned.
    pub(super) buf: Option<IoBuf>,
}
