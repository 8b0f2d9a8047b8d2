//! Image locks on real files: Linux open-file-description byte-range locks (`F_OFD_SETLK`,
//! `F_OFD_GETLK`), the mechanism QEMU's file-posix uses, so blk and QEMU's tools see each
//! other's locks.
//!
//! A lock handle is a read-only descriptor of its own: OFD locks belong to the open file
//! description, so locks on it conflict with every other open of the file (this process's data
//! handles included) and are released when it is dropped. Which bytes mean what is the file
//! driver's business (`drivers/file_lock.rs`); this file only moves single bytes.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::sys::io_error;
use crate::env::HostLock;
use crate::error::{Error, Result};

/// The lock handle of one file.
pub(super) struct RealLock {
    file: File,
}

/// Open a lock handle on `path` (read-only: a shared lock needs read access, and the handle
/// never moves data).
pub(super) fn open(path: &str) -> Result<Box<dyn HostLock>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) => io_error(code),
            None => Error::invalid(e.to_string()),
        })?;
    Ok(Box::new(RealLock { file }))
}

impl RealLock {
    /// One `fcntl` on the byte at `offset` with lock type `kind`; the (possibly updated) lock
    /// description, or the errno.
    fn fcntl(&self, cmd: i32, kind: i32, offset: u64) -> std::result::Result<libc::flock, i32> {
        // SAFETY: a zeroed flock is a valid value (all-integer struct); OFD commands require
        // l_pid to be 0, which zeroing gives.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = offset as libc::off_t;
        fl.l_len = 1;
        // SAFETY: the fd is open for the lifetime of `self.file`; `fl` is a valid flock.
        let r = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) };
        if r == -1 {
            return Err(super::sys::errno());
        }
        Ok(fl)
    }
}

impl HostLock for RealLock {
    fn set_shared(&self, offset: u64, locked: bool) -> Result<()> {
        let kind = if locked { libc::F_RDLCK } else { libc::F_UNLCK };
        self.fcntl(libc::F_OFD_SETLK, kind, offset)
            .map(|_| ())
            .map_err(io_error)
    }

    fn held_elsewhere(&self, offset: u64) -> Result<bool> {
        // GETLK with an exclusive lock type reports any lock another description holds on the
        // byte (our own description's locks never conflict with it).
        let fl = self
            .fcntl(libc::F_OFD_GETLK, libc::F_WRLCK, offset)
            .map_err(io_error)?;
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }
}
