//! `HostNet` on real sockets: unix and TCP listeners and streams, all non-blocking and driven by
//! the reactor, so the single-threaded engine never blocks on a socket.
//!
//! Every operation first makes its syscall at once (`accept4`, `recv`, `send`, `connect` with
//! `MSG_DONTWAIT`/`O_NONBLOCK`); only on `EAGAIN` does it wait for readiness, as an
//! `OpKind::Poll` on the backend (an io_uring `POLL_ADD`, or the loop's own `ppoll` on the worker
//! pool backend), then tries again. A socket travels in the slab as an `Rc<File>` like a file,
//! so its fd stays open while a poll on it is in the kernel.

use std::cell::Cell;
use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::dispatch::OpFuture;
use super::op::{Op, OpKind};
use super::reactor::Core;
use super::sock::{self, RawAddr};
use super::sys::io_error;
use crate::env::LocalBoxFuture;
use crate::env::net::{Conn, HostNet, Listener, NetAddr};
use crate::error::{Error, Result};
use crate::io::{BufResult, IoBuf};

/// The host's network as seen through the reactor.
pub(super) struct RealNet {
    /// The reactor whose backend waits for readiness.
    core: Rc<Core>,
}

impl RealNet {
    /// The network of `core`.
    pub(super) fn new(core: Rc<Core>) -> RealNet {
        RealNet { core }
    }
}

/// A socket fd on the reactor.
struct Sock {
    /// The reactor.
    core: Rc<Core>,
    /// The socket, shared with in-flight polls (see the module doc).
    fd: Rc<File>,
}

impl Sock {
    fn new(core: &Rc<Core>, fd: OwnedFd) -> Sock {
        Sock {
            core: core.clone(),
            fd: Rc::new(File::from(fd)),
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wait until the socket is ready for `events`; an error only if the wait itself failed.
    async fn ready(&self, events: i16) -> Result<()> {
        let op = Op {
            kind: OpKind::Poll { events },
            file: self.fd.clone(),
            offset: 0,
            len: 0,
            buf: None,
        };
        let (_, r) = OpFuture::new(&self.core.io, op).await;
        if r < 0 { Err(io_error(-r)) } else { Ok(()) }
    }
}

/// The host's error text for an errno (strerror's words).
fn strerror(code: i32) -> String {
    io_error(code).to_string()
}

/// Resolve `host:port`, as QEMU words a failure.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let fail = |why: String| {
        Error::generic(format!(
            "address resolution failed for {host}:{port}: {why}"
        ))
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            let text = e.to_string();
            // std says "failed to lookup address information: WHY".
            fail(text.rsplit(": ").next().unwrap_or(&text).to_owned())
        })?
        .collect();
    if addrs.is_empty() {
        return Err(fail("no address".into()));
    }
    Ok(addrs)
}

impl HostNet for RealNet {
    fn listen(&self, addr: &NetAddr) -> Result<Rc<dyn Listener>> {
        let fail = |e: std::io::Error, what: String| {
            let code = e.raw_os_error().unwrap_or(libc::EIO);
            Error::io_msg(
                crate::error::Errno::from_code(code),
                format!("{what}: {}", strerror(code)),
            )
        };
        let (fd, local, path): (OwnedFd, NetAddr, Option<String>) = match addr {
            NetAddr::Unix(path) => {
                let l = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| fail(e, format!("Failed to bind socket to {path}")))?;
                l.set_nonblocking(true)
                    .map_err(|e| fail(e, "Failed to set O_NONBLOCK".into()))?;
                (l.into(), addr.clone(), Some(path.clone()))
            }
            NetAddr::Inet { host, port } => {
                let addrs = resolve(host, *port)?;
                let l = std::net::TcpListener::bind(&addrs[..])
                    .map_err(|e| fail(e, "Failed to bind socket".into()))?;
                l.set_nonblocking(true)
                    .map_err(|e| fail(e, "Failed to set O_NONBLOCK".into()))?;
                let port = l.local_addr().map_or(*port, |a| a.port());
                let local = NetAddr::Inet {
                    host: host.clone(),
                    port,
                };
                (l.into(), local, None)
            }
        };
        Ok(Rc::new(RealListener {
            sock: Sock::new(&self.core, fd),
            local,
            path,
            closed: Cell::new(false),
        }))
    }

    fn connect(&self, addr: &NetAddr) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>> {
        let addr = addr.clone();
        Box::pin(async move {
            let targets = match &addr {
                NetAddr::Unix(path) => vec![RawAddr::unix(path).map_err(io_error)?],
                NetAddr::Inet { host, port } => {
                    resolve(host, *port)?.iter().map(RawAddr::inet).collect()
                }
            };
            let mut last = libc::ECONNREFUSED;
            for target in &targets {
                match self.connect_one(target).await {
                    Ok(conn) => return Ok(Rc::new(RealConn::new(conn, addr.to_string())) as _),
                    Err(code) => last = code,
                }
            }
            // QEMU names a unix socket by its bare path.
            let name = match &addr {
                NetAddr::Unix(path) => path.clone(),
                inet => inet.to_string(),
            };
            Err(io_error(last).context(format!("Failed to connect to '{name}'")))
        })
    }
}

impl RealNet {
    /// Connect one socket to `target` without blocking the loop.
    async fn connect_one(&self, target: &RawAddr) -> std::result::Result<Sock, i32> {
        let s = Sock::new(&self.core, sock::socket(target.family())?);
        loop {
            match sock::connect(s.raw(), target) {
                Ok(()) => break,
                // A unix socket whose backlog is full says EAGAIN: wait and try again.
                Err(libc::EAGAIN) => s.ready(libc::POLLOUT).await.map_err(|_| libc::EIO)?,
                Err(libc::EINPROGRESS) => {
                    s.ready(libc::POLLOUT).await.map_err(|_| libc::EIO)?;
                    match sock::socket_error(s.raw()) {
                        0 => break,
                        e => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if target.family() != libc::AF_UNIX {
            set_nodelay(s.raw());
        }
        Ok(s)
    }
}

/// `TCP_NODELAY`: requests and replies are small and latency-bound (QMP, NBD).
fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `len` bytes from a live int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// An accepted TCP connection with `TCP_NODELAY` set, and its peer's address.
fn tcp_peer(fd: OwnedFd) -> (OwnedFd, String) {
    set_nodelay(fd.as_raw_fd());
    let s = std::net::TcpStream::from(fd);
    let peer = s.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    (s.into(), peer)
}

/// A listening socket.
struct RealListener {
    sock: Sock,
    /// The address really bound.
    local: NetAddr,
    /// The unix socket's path, removed on close.
    path: Option<String>,
    /// `close` was called.
    closed: Cell<bool>,
}

impl RealListener {
    fn closed_error(&self) -> Error {
        Error::io_msg(
            crate::error::Errno::from_code(libc::EBADF),
            format!("Listener on {} is closed", self.local),
        )
    }
}

impl Listener for RealListener {
    fn accept(&self) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>> {
        Box::pin(async move {
            loop {
                if self.closed.get() {
                    return Err(self.closed_error());
                }
                match sock::accept(self.sock.raw()) {
                    Ok(fd) => {
                        let (fd, peer) = match self.path {
                            Some(_) => (fd, self.local.to_string()),
                            None => tcp_peer(fd),
                        };
                        let conn = RealConn::new(Sock::new(&self.sock.core, fd), peer);
                        return Ok(Rc::new(conn) as _);
                    }
                    // A connection that went away before we took it: take the next one.
                    Err(libc::EAGAIN | libc::ECONNABORTED) => self.sock.ready(libc::POLLIN).await?,
                    Err(_) if self.closed.get() => return Err(self.closed_error()),
                    Err(e) => return Err(io_error(e).context("Failed to accept a connection")),
                }
            }
        })
    }

    fn local_addr(&self) -> NetAddr {
        self.local.clone()
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        // Wakes a pending accept (its poll sees the socket shut down).
        sock::shutdown(self.sock.raw());
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for RealListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A connected stream.
struct RealConn {
    sock: Sock,
    /// The peer, for messages.
    peer: String,
}

impl RealConn {
    fn new(sock: Sock, peer: String) -> RealConn {
        RealConn { sock, peer }
    }
}

impl Conn for RealConn {
    fn read(&self, mut buf: IoBuf) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            loop {
                match sock::recv(self.sock.raw(), buf.as_mut_slice()) {
                    Ok(n) => return (buf, Ok(n)),
                    Err(libc::EAGAIN) => {
                        if let Err(e) = self.sock.ready(libc::POLLIN).await {
                            return (buf, Err(e));
                        }
                    }
                    Err(e) => return (buf, Err(io_error(e))),
                }
            }
        })
    }

    fn write_all(&self, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let mut done = 0;
            while done < buf.len() {
                match sock::send(self.sock.raw(), &buf.as_slice()[done..]) {
                    Ok(n) => done += n,
                    Err(libc::EAGAIN) => {
                        if let Err(e) = self.sock.ready(libc::POLLOUT).await {
                            return (buf, Err(e));
                        }
                    }
                    Err(e) => return (buf, Err(io_error(e))),
                }
            }
            (buf, Ok(()))
        })
    }

    fn shutdown(&self) {
        sock::shutdown(self.sock.raw());
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}
