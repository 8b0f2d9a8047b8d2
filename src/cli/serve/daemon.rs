//! `--daemonize` and `--pidfile`: the process side of the daemon.
//!
//! `--daemonize` forks before anything else runs (no reactor, no worker thread yet); the parent
//! waits on a pipe until the child says start-up is complete, then exits 0, or 1 when the child
//! failed (the child has printed why). The child leaves the session of its terminal and, once
//! started, detaches stdio and moves to `/` as QEMU does.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

/// The child's end of the start-up pipe.
pub(super) struct Ready(OwnedFd);

impl Ready {
    /// Start-up is complete: release the parent and detach from the terminal.
    pub(super) fn started(self) {
        use std::io::Write;
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(&[0]);
        drop(f);
        detach_stdio();
        let _ = std::env::set_current_dir("/");
    }
}

/// Fork. In the parent this never returns (it exits with the child's start-up status); in the
/// child it returns the pipe end to signal on.
pub(super) fn daemonize() -> std::io::Result<Option<Ready>> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fresh fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork in the program thread before any other thread of ours (reactor workers)
    // exists; the child only continues this thread's code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: plain syscall.
            unsafe { libc::setsid() };
            Ok(Some(Ready(wr)))
        }
        _ => {
            drop(wr);
            use std::io::Read;
            let mut byte = [1u8];
            let n = std::fs::File::from(rd).read(&mut byte).unwrap_or(0);
            std::process::exit(if n == 1 && byte[0] == 0 { 0 } else { 1 })
        }
    }
}

/// Point stdin, stdout and stderr at /dev/null.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard fds, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// The pidfile, removed when dropped (at the end of a clean shutdown).
pub(super) struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Write our pid to `path` (kept as an absolute path: a daemon later moves to `/`).
pub(super) fn write_pidfile(path: Option<&str>) -> Result<Option<PidFile>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let abs = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
    std::fs::write(&abs, format!("{}\n", std::process::id())).map_err(|e| {
        let why = engine::env::real::host_error(&e);
        format!("cannot create PID file: Could not create '{path}': {why}")
    })?;
    Ok(Some(PidFile(abs)))
}
