//! Blocking host syscalls shared by both backends: the worker pool runs them on its threads, the
//! io_uring backend runs the few that have no opcode (lseek, fstat, ftruncate on old kernels)
//! inline, as QEMU's file-posix does for `lseek(SEEK_DATA)`.
//!
//! Everything returns `Result<_, i32>` with a positive errno, so callers can map it once.

use std::os::fd::RawFd;

use crate::error::{Errno, Error};
use crate::io::IoBuf;

/// The `fallocate` mode that deallocates a range and keeps the file size.
pub(super) const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// The `fallocate` mode that zeroes a range (and may grow the file).
pub(super) const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;

/// The current thread's errno.
pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// An engine error for a host errno, with the host's own text for numbers the engine does not
/// name (so the message is never just "Unknown error").
pub(super) fn io_error(code: i32) -> Error {
    match Errno::from_code(code) {
        e @ Errno::Other(_) => {
            let text = std::io::Error::from_raw_os_error(code).to_string();
            let text = text
                .split(" (os error")
                .next()
                .unwrap_or("Unknown error")
                .to_owned();
            Error::io_msg(e, text)
        }
        e => Error::io(e),
    }
}

/// An engine error for a host `std::io::Error` (strerror's words, without Rust's
/// " (os error N)"), for tools that touch host files outside the engine.
pub fn host_error(e: &std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(code) => io_error(code),
        None => Error::generic(e.to_string()),
    }
}

/// Map a `-errno`/`0` completion code to a result.
pub(super) fn check(res: i32) -> crate::error::Result<()> {
    if res < 0 { Err(io_error(-res)) } else { Ok(()) }
}

/// Retry a syscall returning -1/errno on `EINTR`.
fn retry(mut f: impl FnMut() -> isize) -> Result<usize, i32> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = errno();
        if e != libc::EINTR && e != libc::EAGAIN {
            return Err(e);
        }
    }
}

/// `pread` all of `buf` from `offset`; bytes past the end of the file are zero-filled.
pub(super) fn read_full(fd: RawFd, buf: &mut IoBuf, offset: u64) -> Result<(), i32> {
    let len = buf.len();
    let base = buf.as_mut_ptr();
    let mut done = 0usize;
    while done < len {
        // SAFETY: base+done..base+len lies inside the buffer we exclusively own.
        let n = retry(|| unsafe {
            libc::pread(
                fd,
                base.add(done).cast(),
                len - done,
                (offset + done as u64) as i64,
            )
        })?;
        done += n;
        if done < len && (n == 0 || at_eof(fd, offset + done as u64)) {
            buf.as_mut_slice()[done..].fill(0);
            break;
        }
    }
    Ok(())
}

/// True when `pos` is at or past the end of the file: a short read there means EOF, and the
/// rest of the buffer reads as zeroes. (Checked rather than retried: under `O_DIRECT` the retry
/// offset may be unaligned.)
pub(super) fn at_eof(fd: RawFd, pos: u64) -> bool {
    file_len(fd).is_ok_and(|eof| pos >= eof)
}

/// `pwrite` all of `buf` at `offset`, resubmitting short writes. With `dsync`, the data is durable
/// on return (`RWF_DSYNC`, or `fdatasync` where the kernel lacks it).
pub(super) fn write_full(fd: RawFd, buf: &IoBuf, offset: u64, dsync: bool) -> Result<(), i32> {
    let data = buf.as_slice();
    let mut done = 0usize;
    let mut flags = if dsync { libc::RWF_DSYNC } else { 0 };
    while done < data.len() {
        let rest = &data[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut _,
            iov_len: rest.len(),
        };
        let pos = (offset + done as u64) as i64;
        // SAFETY: iov points into a live buffer for the duration of the call.
        let r = retry(|| unsafe { libc::pwritev2(fd, &iov, 1, pos, flags) as isize });
        match r {
            Ok(0) => return Err(libc::ENOSPC),
            Ok(n) => done += n,
            Err(libc::EOPNOTSUPP | libc::ENOSYS) if flags != 0 => flags = 0,
            Err(e) => return Err(e),
        }
    }
    if dsync && flags == 0 {
        fdatasync(fd)?;
    }
    Ok(())
}

/// `fdatasync`.
pub(super) fn fdatasync(fd: RawFd) -> Result<(), i32> {
    // SAFETY: plain syscall on an fd we keep open.
    retry(|| unsafe { libc::fdatasync(fd) as isize }).map(drop)
}

/// `fallocate(fd, mode, offset, len)`.
pub(super) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: plain syscall.
    retry(|| unsafe { libc::fallocate(fd, mode, offset as i64, len as i64) as isize }).map(drop)
}

/// `ftruncate`.
pub(super) fn ftruncate(fd: RawFd, len: u64) -> Result<(), i32> {
    // SAFETY: plain syscall.
    retry(|| unsafe { libc::ftruncate(fd, len as i64) as isize }).map(drop)
}

/// The file size (`fstat`).
pub(super) fn file_len(fd: RawFd) -> Result<u64, i32> {
    Ok(fstat(fd)?.st_size as u64)
}

/// The bytes the file system really holds for the file (`st_blocks` of 512 bytes).
pub(super) fn allocated_bytes(fd: RawFd) -> Result<u64, i32> {
    Ok(fstat(fd)?.st_blocks as u64 * 512)
}

fn fstat(fd: RawFd) -> Result<libc::stat, i32> {
    // SAFETY: `libc::stat` is plain data, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into the struct we pass, which lives across the call.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(errno());
    }
    Ok(st)
}

/// `lseek(fd, offset, whence)`; `Ok(None)` for `ENXIO` (no data/hole at or after `offset`).
pub(super) fn seek(fd: RawFd, offset: u64, whence: i32) -> Result<Option<u64>, i32> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd, offset as i64, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    match errno() {
        libc::ENXIO => Ok(None),
        e => Err(e),
    }
}

/// The `O_DIRECT` alignment of `fd` (offsets, lengths and buffers), found like QEMU does: ask the
/// kernel (`statx` `STATX_DIOALIGN`), else probe reads of growing size, else assume 4096.
pub(super) fn probe_direct_align(fd: RawFd) -> u32 {
    // SAFETY: `libc::statx` is plain data, for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx fills the struct we pass, which lives across the call; the path is a valid
    // empty C string, which with AT_EMPTY_PATH means `fd` itself.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        return stx.stx_dio_offset_align.max(stx.stx_dio_mem_align).max(1);
    }
    // A read probe needs a full block of data at offset 0: a short or empty file answers any
    // size with a short read, which says nothing, so assume the safe maximum.
    const MAX: usize = 4096;
    if file_len(fd).unwrap_or(0) < MAX as u64 {
        return MAX as u32;
    }
    let mut buf = IoBuf::with_align(2 * MAX, MAX);
    let base = buf.as_mut_ptr();
    // SAFETY: every probe reads at most MAX bytes starting within the first MAX bytes of buf.
    let works = |ptr: *mut u8, len: usize| unsafe {
        libc::pread(fd, ptr.cast(), len, 0) >= 0 || errno() != libc::EINVAL
    };
    let Some(req) = [512usize, 1024, 2048, 4096]
        .into_iter()
        .find(|&a| works(base, a))
    else {
        return MAX as u32;
    };
    // SAFETY: base + a + req <= base + 2 * MAX.
    let mem = [512usize, 1024, 2048]
        .into_iter()
        .find(|&a| works(unsafe { base.add(a) }, req));
    req.max(mem.unwrap_or(MAX)) as u32
}

/// A non-blocking, close-on-exec eventfd: the loop sleeps on it, other threads write it to wake
/// the loop.
pub(super) struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    /// Create one; panics only if the host is out of file descriptors at start-up.
    pub(super) fn new() -> EventFd {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a fresh fd we take ownership of.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(
            fd >= 0,
            "eventfd failed: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh, valid fd (checked above) that nothing else owns.
        EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// The raw fd, for polling.
    pub(super) fn raw(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Make the fd readable (wake the sleeper).
    pub(super) fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array; EAGAIN (counter full) still leaves it readable.
        unsafe { libc::write(self.raw(), one.as_ptr().cast(), 8) };
    }

    /// Reset the counter after a wake-up.
    pub(super) fn drain(&self) {
        drain_eventfd(self.raw());
    }

    /// Sleep until the fd is readable or `timeout_ns` passes (`None`: no timeout).
    pub(super) fn wait(&self, timeout_ns: Option<u64>) {
        let mut pfd = [libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        }];
        ppoll(&mut pfd, timeout_ns);
        self.drain();
    }
}

/// `ppoll` on `fds` for at most `timeout_ns` (`None`: no limit); the number of ready fds, 0 on
/// timeout, -1 on error (`EINTR`: a signal ended the wait early, which is fine).
pub(super) fn ppoll(fds: &mut [libc::pollfd], timeout_ns: Option<u64>) -> i32 {
    let ts = timeout_ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: fds and ts outlive the call.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            tsp,
            std::ptr::null(),
        )
    }
}

/// Reset the counter of the (non-blocking) eventfd `fd`.
pub(super) fn drain_eventfd(fd: RawFd) {
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a live array; EAGAIN when already drained is fine.
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
}

/// Fill `buf` from the kernel's random pool (`getrandom(2)`), retrying interrupted and
/// partial calls.
pub fn random_bytes(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            done += n as usize;
        } else {
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::Interrupted,
                "getrandom failed: {err}"
            );
        }
    }
}

/// CPU time used by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
