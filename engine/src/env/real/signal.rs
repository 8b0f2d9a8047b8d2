//! Termination signals (`SIGTERM`, `SIGINT`, `SIGHUP`) as a future on the reactor, for a
//! long-running program (`blk serve`) that must shut down cleanly instead of dying.
//!
//! A self-pipe: the handler, installed process-wide with `sigaction`, writes the signal number
//! to a non-blocking pipe (the only async-signal-safe thing it does); the loop waits for the
//! read end to become readable like any socket. Whichever thread the kernel picks to run the
//! handler (the program's, a pool worker, `main`'s), the byte reaches the loop.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use super::dispatch::OpFuture;
use super::op::{Op, OpKind};
use super::reactor::Core;
use super::sys::errno;

/// The signals that ask a daemon to stop.
pub const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The write end of the pipe, for the handler (-1 before installation).
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = signo as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe (EAGAIN) already holds a signal.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Create the pipe and install the handler for [`TERMINATION_SIGNALS`] (once per process).
fn install() -> std::io::Result<RawFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::from_raw_os_error(errno()));
    }
    WRITE_FD.store(fds[1], Ordering::Relaxed);
    for sig in TERMINATION_SIGNALS {
        // SAFETY: sigaction is plain data; the handler is an extern "C" fn that only writes.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    Ok(fds[0])
}

/// The read end of the pipe, created with the handler once per process.
static READ_FD: OnceLock<std::io::Result<RawFd>> = OnceLock::new();

/// Wait for the next termination signal on `core`'s loop; its number.
pub(super) async fn next(core: &Rc<Core>) -> std::io::Result<i32> {
    let read_fd = match READ_FD.get_or_init(install) {
        Ok(fd) => *fd,
        Err(e) => return Err(std::io::Error::new(e.kind(), e.to_string())),
    };
    // A duplicate of the read end, owned by this wait (the slab keeps it open while polled).
    // SAFETY: dup returns a fresh fd we own.
    let dup = unsafe { libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::from_raw_os_error(errno()));
    }
    // SAFETY: `dup` is a fresh, valid fd nothing else owns.
    let file = Rc::new(File::from(unsafe { OwnedFd::from_raw_fd(dup) }));
    loop {
        let mut b = 0u8;
        // SAFETY: reads one byte into a live u8.
        let n = unsafe { libc::read(file.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            return Ok(i32::from(b));
        }
        let op = Op {
            kind: OpKind::Poll {
                events: libc::POLLIN,
            },
            file: file.clone(),
            offset: 0,
            len: 0,
            buf: None,
        };
        let (_, r) = OpFuture::new(&core.io, op).await;
        if r < 0 {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
    }
}
