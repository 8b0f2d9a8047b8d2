//! THE seam between the engine and the outside world: clock, timers, task spawning, host files,
//! the network (`net`).
//!
//! Everything the engine needs from the world comes through an [`Env`] handed to
//! `Engine::new`; nothing is global. `real.rs` is production (a single-threaded reactor with real
//! time and io_uring, a worker pool where io_uring is unavailable); the `sim` crate implements the
//! same traits with a virtual clock, a seeded scheduler and a fault-injecting virtual disk.
//!
//! Only `env/real.rs` may use `std::fs`, `std::time`, `std::thread` or OS randomness (a test
//! enforces it). Must not import anything above `io` and `error`.

pub mod net;
pub mod real;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::error::Result;
use crate::io::{BufResult, IoBuf};

/// A boxed, non-`Send` future: the engine is single-threaded.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The world as the engine sees it.
pub trait Env {
    /// Short name of the environment ("real", "sim"), for reports.
    fn kind(&self) -> &'static str;

    /// Monotonic time in nanoseconds since the environment started. Virtual in the simulator.
    fn now_ns(&self) -> u64;

    /// Wall-clock time in nanoseconds since the Unix epoch (timestamps written into images).
    /// The simulator derives it from its virtual clock, so it is deterministic too.
    fn wall_clock_ns(&self) -> u64;

    /// A future that completes once `now_ns() >= deadline_ns`.
    fn sleep_until(&self, deadline_ns: u64) -> LocalBoxFuture<'static, ()>;

    /// Run `fut` as a new task on this (single) thread. `name` is shown in deadlock reports.
    fn spawn(&self, name: &str, fut: LocalBoxFuture<'static, ()>);

    /// The host file system.
    fn fs(&self) -> &dyn HostFs;

    /// The network (sockets for the QMP monitor and NBD). An environment without one fails
    /// every operation with `ENOTSUP`.
    fn net(&self) -> &dyn net::HostNet {
        &net::NoNet
    }

    /// Fill `buf` with unpredictable bytes (LUKS master keys, salts, UUIDs): the OS's
    /// randomness in production, the seed's own stream in the simulator.
    fn random_bytes(&self, buf: &mut [u8]);

    /// How many rounds of `work` (which runs as many rounds as it is given) this host does in
    /// `budget_ms` milliseconds: LUKS's `iter-time`. Production measures with real time; the
    /// simulator answers a fixed count, so no real time reaches the engine.
    fn rounds_in(&self, budget_ms: u64, work: &mut dyn FnMut(u32)) -> u64;
}

/// How to open a host file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open for writing too.
    pub write: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail if the file exists (with `create`).
    pub create_new: bool,
    /// Truncate to zero length on open.
    pub truncate: bool,
    /// Bypass the host page cache (`O_DIRECT`): buffers, offsets and lengths must be aligned to
    /// [`HostFile::direct_align`].
    pub direct: bool,
}

/// Whether a range of a host file holds data or is a hole (`SEEK_DATA` / `SEEK_HOLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// The range holds data (or may: a file system without hole reporting says data).
    Data,
    /// The range is a hole and reads as zeroes.
    Hole,
}

/// The host file system.
pub trait HostFs {
    /// Open (or create) a file. Open is a metadata operation and is done synchronously.
    fn open(&self, path: &str, opts: OpenOptions) -> Result<Rc<dyn HostFile>>;

    /// Remove a file.
    fn remove(&self, path: &str) -> Result<()>;

    /// True when a file exists at `path`.
    fn exists(&self, path: &str) -> bool;

    /// A handle on the file at `path` that holds only byte-range locks (QEMU's image locks,
    /// `drivers/file_lock.rs`): a handle of its own, so the locks outlive every reopen of the
    /// data handle. `None` where the environment has no locks (the simulator).
    fn open_lock(&self, path: &str) -> Result<Option<Box<dyn HostLock>>> {
        let _ = path;
        Ok(None)
    }
}

/// Advisory locks on single bytes of a host file, as Linux's open-file-description locks
/// (`F_OFD_SETLK`) are: they belong to the handle, conflict with every other handle (in this
/// process too) and vanish when the handle is dropped.
pub trait HostLock {
    /// Take (`true`) or release (`false`) a shared lock on the byte at `offset`.
    fn set_shared(&self, offset: u64, locked: bool) -> Result<()>;

    /// Whether another handle holds a lock on the byte at `offset` (so an exclusive lock
    /// could not be taken there now).
    fn held_elsewhere(&self, offset: u64) -> Result<bool>;
}

/// An open host file. All data operations are asynchronous and never block the event loop.
///
/// Buffers are owned and travel with the request ([`BufResult`]): the backend holds the memory
/// until the operation is really over, even if the caller's future is dropped.
#[allow(clippy::len_without_is_empty)]
pub trait HostFile {
    /// Fill `buf` from `offset`. Bytes beyond the end of the file read as zeroes.
    fn read_at(&self, buf: IoBuf, offset: u64) -> LocalBoxFuture<'_, BufResult>;

    /// Write all of `buf` at `offset`, growing the file if needed. With `fua`, the data is
    /// durable when the future completes.
    fn write_at(&self, buf: IoBuf, offset: u64, fua: bool) -> LocalBoxFuture<'_, BufResult>;

    /// Make every completed write durable (`fdatasync`).
    fn flush(&self) -> LocalBoxFuture<'_, Result<()>>;

    /// The current length.
    fn len(&self) -> Result<u64>;

    /// Grow or shrink the file.
    fn set_len(&self, len: u64) -> LocalBoxFuture<'_, Result<()>>;

    /// Deallocate a range (punch a hole, keeping the size). Afterwards the range reads as zeroes.
    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>>;

    /// Make a range read as zeroes, deallocating it if `may_unmap` allows; grows the file if the
    /// range ends past its end.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> LocalBoxFuture<'_, Result<()>>;

    /// Reserve space for a range without changing its contents (`fallocate` mode 0).
    fn preallocate(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>>;

    /// Whether the range starting at `offset` is data or a hole, and for how many bytes (at most
    /// `len`, at least 1 when `offset` is below the end of the file).
    fn allocation(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<(Allocation, u64)>>;

    /// The alignment `O_DIRECT` requires of offsets, lengths and buffers (1 when not direct).
    fn direct_align(&self) -> u32;

    /// The bytes the storage really holds for the file (a host file's `st_blocks`), when the
    /// backend knows; callers fall back to summing [`HostFile::allocation`]'s data runs.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// One read into `buf[skip..]` from `offset` (the file offset of `buf[skip]`), as one
    /// `pread` does: it may move fewer bytes than asked (0 only at end of file) or fail with a
    /// transient `EAGAIN`/`EINTR`. Returns the bytes moved. The file driver completes the rest
    /// (`drivers/file_io.rs`). The default moves everything with [`HostFile::read_at`].
    fn read_part(
        &self,
        buf: IoBuf,
        skip: usize,
        offset: u64,
    ) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            if skip == 0 {
                let n = buf.len();
                let (buf, r) = self.read_at(buf, offset).await;
                return (buf, r.map(|()| n));
            }
            let n = buf.len() - skip;
            let (part, r) = self
                .read_at(IoBuf::with_align(n, buf.align()), offset)
                .await;
            let mut buf = buf;
            if r.is_ok() {
                buf.as_mut_slice()[skip..].copy_from_slice(part.as_slice());
            }
            (buf, r.map(|()| n))
        })
    }

    /// One write of `buf[skip..]` at `offset`, as one `pwrite` does: it may move fewer bytes
    /// than asked or fail with a transient `EAGAIN`/`EINTR`; returns the bytes moved. The
    /// default moves everything with [`HostFile::write_at`].
    fn write_part(
        &self,
        buf: IoBuf,
        skip: usize,
        offset: u64,
        fua: bool,
    ) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            let n = buf.len() - skip;
            if skip == 0 {
                let (buf, r) = self.write_at(buf, offset, fua).await;
                return (buf, r.map(|()| n));
            }
            let mut part = IoBuf::with_align(n, buf.align());
            part.as_mut_slice().copy_from_slice(&buf.as_slice()[skip..]);
            let (_, r) = self.write_at(part, offset, fua).await;
            (buf, r.map(|()| n))
        })
    }
}
