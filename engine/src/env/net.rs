//! The network half of the env seam: listening and connecting on unix and inet addresses, and
//! the byte streams between them. The QMP monitor of `blk serve` and the NBD server and client
//! are written against these traits only, so the same protocol code runs on real sockets
//! (`env/real`) and on the simulator's virtual network (seeded latency, partitions, resets).
//!
//! Must not import anything above `io` and `error`.

use std::fmt;
use std::rc::Rc;

use super::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::io::{BufResult, IoBuf};

/// Where a listener listens or a connection goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetAddr {
    /// A unix domain socket at a path.
    Unix(String),
    /// A TCP address: a host name or literal address, and a port.
    Inet {
        /// A host name or a literal IPv4/IPv6 address.
        host: String,
        /// The TCP port (0 when listening: the system picks one).
        port: u16,
    },
}

impl fmt::Display for NetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetAddr::Unix(path) => write!(f, "unix:{path}"),
            NetAddr::Inet { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            NetAddr::Inet { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The host's network.
pub trait HostNet {
    /// Bind and listen on `addr`. Listening is a metadata operation and is done synchronously.
    /// A unix path that already exists is an error (`EADDRINUSE`), as for a real `bind`.
    fn listen(&self, addr: &NetAddr) -> Result<Rc<dyn Listener>>;

    /// Connect to `addr`.
    fn connect(&self, addr: &NetAddr) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>>;
}

/// A listening socket.
pub trait Listener {
    /// The next incoming connection.
    fn accept(&self) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>>;

    /// The address really bound (the port chosen for an inet port 0).
    fn local_addr(&self) -> NetAddr;

    /// Stop listening: pending and later `accept`s fail, and a unix socket's path is removed.
    fn close(&self);
}

/// One connected byte stream. Buffers are owned and travel with the operation, as for
/// [`super::HostFile`].
pub trait Conn {
    /// Read at most `buf.len()` bytes into the front of `buf`; `Ok(0)` means the peer closed
    /// its side (end of stream).
    fn read(&self, buf: IoBuf) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)>;

    /// Write all of `buf` (the peer may still be reading it when this completes).
    fn write_all(&self, buf: IoBuf) -> LocalBoxFuture<'_, BufResult>;

    /// Close both directions; pending and later operations on either end fail or read 0.
    fn shutdown(&self);

    /// The peer, for logs and error messages.
    fn peer(&self) -> String;
}

/// The network of an environment that has none: every operation fails with `ENOTSUP`.
pub struct NoNet;

impl HostNet for NoNet {
    fn listen(&self, addr: &NetAddr) -> Result<Rc<dyn Listener>> {
        Err(no_network(addr))
    }

    fn connect(&self, addr: &NetAddr) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>> {
        let err = no_network(addr);
        Box::pin(async move { Err(err) })
    }
}

fn no_network(addr: &NetAddr) -> Error {
    Error::io_msg(
        Errno::ENOTSUP,
        format!("Cannot use {addr}: this environment has no network"),
    )
}
