//! Socket syscalls for `net`: non-blocking socket creation, connect, accept, send and recv, and
//! the conversion of addresses to `sockaddr`s. Each call returns at once; `EAGAIN` tells the
//! caller to wait for readiness on the reactor (an `OpKind::Poll`).
//!
//! Results are `Result<_, i32>` with a positive errno, as in `sys`.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::sys::errno;

/// Retry `f` (returning -1/errno) on `EINTR` only: `EAGAIN` goes back to the caller.
fn no_eintr(mut f: impl FnMut() -> isize) -> Result<usize, i32> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// A new non-blocking, close-on-exec stream socket of `family`.
pub(super) fn socket(family: i32) -> Result<OwnedFd, i32> {
    // SAFETY: plain syscall; a valid result is a fresh fd we take ownership of.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a fresh, valid fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr` and its length.
pub(super) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// The address family.
    pub(super) fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero bytes are a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }

    /// The `sockaddr_un` of `path`; `ENAMETOOLONG` past the kernel's 107 bytes.
    pub(super) fn unix(path: &str) -> Result<RawAddr, i32> {
        let mut a = RawAddr::empty();
        // SAFETY: sockaddr_storage is large enough and aligned for any sockaddr type.
        let un = unsafe { &mut *(&mut a.storage as *mut _ as *mut libc::sockaddr_un) };
        let bytes = path.as_bytes();
        if bytes.len() >= un.sun_path.len() {
            return Err(libc::ENAMETOOLONG);
        }
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &s) in un.sun_path.iter_mut().zip(bytes) {
            *d = s as libc::c_char;
        }
        a.len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(a)
    }

    /// The `sockaddr_in`/`sockaddr_in6` of `addr`.
    pub(super) fn inet(addr: &SocketAddr) -> RawAddr {
        let mut a = RawAddr::empty();
        match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
                let sin = unsafe { &mut *(&mut a.storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                a.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut a.storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_scope_id = v6.scope_id();
                a.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        a
    }
}

/// Start connecting `fd` to `addr`: `Ok(())` when connected, `Err(EINPROGRESS | EAGAIN)` when
/// the caller must wait for the socket to become writable.
pub(super) fn connect(fd: RawFd, addr: &RawAddr) -> Result<(), i32> {
    // SAFETY: the sockaddr lives across the call and `len` is its real length.
    no_eintr(|| unsafe {
        libc::connect(
            fd,
            &addr.storage as *const _ as *const libc::sockaddr,
            addr.len,
        ) as isize
    })
    .map(drop)
}

/// The pending error of a non-blocking connect (`SO_ERROR`), 0 once connected.
pub(super) fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `err`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 { errno() } else { err }
}

/// Accept one connection as a non-blocking, close-on-exec socket.
pub(super) fn accept(fd: RawFd) -> Result<OwnedFd, i32> {
    // SAFETY: no address is asked for; a valid result is a fresh fd we take ownership of.
    let r = no_eintr(|| unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        ) as isize
    })?;
    // SAFETY: `r` is a fresh, valid fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `recv` without blocking into `buf`.
pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: writes at most buf.len() bytes into the live slice.
    no_eintr(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// `send` without blocking from `buf` (never raising `SIGPIPE`).
pub(super) fn send(fd: RawFd, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: reads at most buf.len() bytes from the live slice.
    no_eintr(|| unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Shut both directions of `fd` down (wakes every poll on it; errors are of no interest).
pub(super) fn shutdown(fd: RawFd) {
    // SAFETY: plain syscall.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
