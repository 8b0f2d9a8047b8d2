//! `HostFs` and `HostFile` on top of the reactor's backend.
//!
//! Data operations become [`Op`]s on the backend (io_uring or the pool); composite operations
//! (write_zeroes and its fallbacks, FUA without `RWF_DSYNC`) are sequences of them. Metadata
//! queries (`len`, `allocation`) are single cheap syscalls made inline on the loop thread, as
//! QEMU's file-posix does for `lseek(SEEK_DATA)`.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;

use super::dispatch::OpFuture;
use super::op::{Op, OpKind};
use super::reactor::Core;
use super::sys::{self, PUNCH_HOLE, ZERO_RANGE, check, io_error};
use crate::env::{Allocation, HostFile, HostFs, LocalBoxFuture, OpenOptions};
use crate::error::{Error, Result};
use crate::io::{BufResult, IoBuf};

/// Largest zero buffer written when the file system cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// The host file system as seen through the reactor.
pub(super) struct RealFs {
    /// The reactor whose backend runs the files' operations.
    core: Rc<Core>,
}

impl RealFs {
    /// The file system of `core`.
    pub(super) fn new(core: Rc<Core>) -> RealFs {
        RealFs { core }
    }

    /// `open`, returning the concrete type (tests reach the fallback switches through it).
    pub(super) fn open_file(&self, path: &str, opts: OpenOptions) -> Result<RealFile> {
        // The error is the bare OS error: callers name the file in their own words (the file
        // driver as QEMU does, "Could not open 'PATH': ...").
        // Creating or truncating a file without write access is meaningless (and refused by
        // std), so those imply write.
        let write = opts.write || opts.create || opts.create_new || opts.truncate;
        let mut o = std::fs::OpenOptions::new();
        o.read(true)
            .write(write)
            .create(opts.create)
            .create_new(opts.create_new);
        o.truncate(opts.truncate);
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path).map_err(|e| match e.raw_os_error() {
            Some(code) => io_error(code),
            None => Error::invalid(e.to_string()),
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(io_error(libc::EISDIR));
        }
        let align = if opts.direct {
            sys::probe_direct_align(file.as_raw_fd())
        } else {
            1
        };
        Ok(RealFile {
            core: self.core.clone(),
            file: Rc::new(file),
            align,
            zero_range: Cell::new(true),
            punch_hole: Cell::new(true),
        })
    }
}

impl HostFs for RealFs {
    fn open(&self, path: &str, opts: OpenOptions) -> Result<Rc<dyn HostFile>> {
        Ok(Rc::new(self.open_file(path, opts)?))
    }

    fn remove(&self, path: &str) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| match e.raw_os_error() {
            Some(code) => io_error(code).context(format!("Could not remove '{path}'")),
            None => Error::generic(format!("Could not remove '{path}': {e}")),
        })
    }

    fn exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    fn open_lock(&self, path: &str) -> Result<Option<Box<dyn crate::env::HostLock>>> {
        super::lock::open(path).map(Some)
    }
}

/// An open host file.
pub(super) struct RealFile {
    /// The reactor whose backend runs this file's operations.
    core: Rc<Core>,
    /// Shared with in-flight slots, so the fd outlives every operation on it.
    file: Rc<File>,
    /// `O_DIRECT` alignment, 1 when not direct.
    align: u32,
    /// `FALLOC_FL_ZERO_RANGE` has not been refused yet.
    pub(super) zero_range: Cell<bool>,
    /// `FALLOC_FL_PUNCH_HOLE` has not been refused yet.
    pub(super) punch_hole: Cell<bool>,
}

impl RealFile {
    /// The raw fd, for inline syscalls.
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Run one operation; `(buffer, 0 | -errno)`.
    fn op(&self, kind: OpKind, offset: u64, len: u64, buf: Option<IoBuf>) -> OpFuture<'_> {
        let op = Op {
            kind,
            file: self.file.clone(),
            offset,
            len,
            buf,
        };
        OpFuture::new(&self.core.io, op)
    }

    /// `fallocate`, as `0 | -errno`.
    async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> i32 {
        self.op(OpKind::Fallocate { mode }, offset, len, None)
            .await
            .1
    }

    /// Grow the file to `end` if it is shorter (never shrinks). Inline: two metadata syscalls
    /// back to back, so no other request of this loop can slip in between.
    fn grow_to(&self, end: u64) -> Result<()> {
        if sys::file_len(self.fd()).map_err(io_error)? < end {
            sys::ftruncate(self.fd(), end).map_err(io_error)?;
        }
        Ok(())
    }

    /// Zero a range by writing zero buffers (the file system cannot do it for us).
    async fn write_zero_buffers(&self, mut offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let align = (self.align as usize).max(crate::io::DEFAULT_BUF_ALIGN);
        let mut buf = IoBuf::with_align((len as usize).min(ZERO_CHUNK), align);
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            if n != buf.len() {
                buf = IoBuf::with_align(n, align);
            }
            let (b, r) = self
                .op(OpKind::Write { dsync: false }, offset, 0, Some(buf))
                .await;
            check(r)?;
            buf = b.expect("write returns its buffer");
            offset += n as u64;
        }
        Ok(())
    }

    /// The body of [`HostFile::write_zeroes`]: QEMU's order of attempts.
    async fn zero_range(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let unsupported = |r: i32| r == -libc::EOPNOTSUPP || r == -libc::ENOSYS;
        if len == 0 {
            return Ok(());
        }
        if may_unmap && self.punch_hole.get() {
            match self.fallocate(PUNCH_HOLE, offset, len).await {
                0 => return self.grow_to(offset + len),
                r if unsupported(r) => self.punch_hole.set(false),
                r => return check(r),
            }
        }
        if self.zero_range.get() {
            // Without KEEP_SIZE, so a range past the end grows the file atomically.
            match self.fallocate(ZERO_RANGE, offset, len).await {
                r if unsupported(r) => self.zero_range.set(false),
                r => return check(r),
            }
        }
        if self.punch_hole.get() {
            // Punch, then allocate again: zeroes that stay allocated.
            match self.fallocate(PUNCH_HOLE, offset, len).await {
                0 => {
                    return match self.fallocate(0, offset, len).await {
                        r if unsupported(r) => self.grow_to(offset + len),
                        r => check(r),
                    };
                }
                r if unsupported(r) => self.punch_hole.set(false),
                r => return check(r),
            }
        }
        self.write_zero_buffers(offset, len).await
    }

    /// The body of [`HostFile::allocation`] (inline `lseek`).
    fn query_allocation(&self, offset: u64, len: u64) -> Result<(Allocation, u64)> {
        let eof = sys::file_len(self.fd()).map_err(io_error)?;
        if offset >= eof || len == 0 {
            return Ok((Allocation::Hole, len));
        }
        let end = eof.min(offset.saturating_add(len));
        let whole = end - offset;
        match sys::seek(self.fd(), offset, libc::SEEK_DATA) {
            // No data at or after offset: a hole up to the end of the file.
            Ok(None) => Ok((Allocation::Hole, whole)),
            Ok(Some(data)) if data > offset => Ok((Allocation::Hole, data.min(end) - offset)),
            Ok(Some(_)) => match sys::seek(self.fd(), offset, libc::SEEK_HOLE) {
                Ok(Some(hole)) if hole > offset => Ok((Allocation::Data, hole.min(end) - offset)),
                _ => Ok((Allocation::Data, whole)),
            },
            // No hole reporting on this file system: everything is data.
            Err(_) => Ok((Allocation::Data, whole)),
        }
    }
}

impl HostFile for RealFile {
    fn read_at(&self, buf: IoBuf, offset: u64) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let (buf, r) = self.op(OpKind::Read, offset, 0, Some(buf)).await;
            (buf.expect("read returns its buffer"), check(r))
        })
    }

    fn write_at(&self, buf: IoBuf, offset: u64, fua: bool) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let (buf, r) = self
                .op(OpKind::Write { dsync: fua }, offset, 0, Some(buf))
                .await;
            let buf = buf.expect("write returns its buffer");
            if !(fua && r == -libc::EOPNOTSUPP) {
                return (buf, check(r));
            }
            // RWF_DSYNC refused: write, then fdatasync.
            let (buf, r) = self
                .op(OpKind::Write { dsync: false }, offset, 0, Some(buf))
                .await;
            let buf = buf.expect("write returns its buffer");
            if r < 0 {
                return (buf, check(r));
            }
            (buf, check(self.op(OpKind::Fdatasync, 0, 0, None).await.1))
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move { check(self.op(OpKind::Fdatasync, 0, 0, None).await.1) })
    }

    fn len(&self) -> Result<u64> {
        sys::file_len(self.fd()).map_err(io_error)
    }

    fn allocated_bytes(&self) -> Option<u64> {
        sys::allocated_bytes(self.fd()).ok()
    }

    fn set_len(&self, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move { check(self.op(OpKind::Ftruncate, 0, len, None).await.1) })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if len == 0 {
                return Ok(());
            }
            check(self.fallocate(PUNCH_HOLE, offset, len).await)
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.zero_range(offset, len, may_unmap))
    }

    fn preallocate(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if len == 0 {
                return Ok(());
            }
            check(self.fallocate(0, offset, len).await)
        })
    }

    fn allocation(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<(Allocation, u64)>> {
        Box::pin(async move { self.query_allocation(offset, len) })
    }

    fn direct_align(&self) -> u32 {
        self.align
    }
}
