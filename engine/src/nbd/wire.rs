//! Exact reads and whole writes on an [`env::net::Conn`](crate::env::net::Conn), shared by the
//! server and the client driver.

use crate::env::net::Conn;
use crate::error::{Errno, Error, Result};
use crate::io::IoBuf;

/// The peer closed the connection before a whole message arrived.
pub fn closed() -> Error {
    Error::io_msg(Errno::Other(32), "Connection closed")
}

/// Read exactly `n` bytes (fails with `EPIPE` at end of stream).
pub async fn read_exact(conn: &dyn Conn, n: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let want = (n - out.len()).min(1 << 20);
        let (buf, r) = conn.read(IoBuf::new(want)).await;
        let got = r?;
        if got == 0 {
            return Err(closed());
        }
        out.extend_from_slice(&buf.as_slice()[..got]);
    }
    Ok(out)
}

/// Read exactly `N` bytes into an array.
pub async fn read_array<const N: usize>(conn: &dyn Conn) -> Result<[u8; N]> {
    let v = read_exact(conn, N).await?;
    let mut a = [0u8; N];
    a.copy_from_slice(&v);
    Ok(a)
}

/// Read and throw away `n` bytes.
pub async fn skip(conn: &dyn Conn, mut n: u64) -> Result<()> {
    while n > 0 {
        let chunk = n.min(1 << 16) as usize;
        read_exact(conn, chunk).await?;
        n -= chunk as u64;
    }
    Ok(())
}

/// Write all of `bytes`.
pub async fn write(conn: &dyn Conn, bytes: &[u8]) -> Result<()> {
    let (_, r) = conn.write_all(IoBuf::from_slice(bytes)).await;
    r
}

/// Write the concatenation of `parts` in one write (a message never interleaves with another).
pub async fn write_parts(conn: &dyn Conn, parts: &[&[u8]]) -> Result<()> {
    let total = parts.iter().map(|p| p.len()).sum();
    let mut buf = Vec::with_capacity(total);
    for p in parts {
        buf.extend_from_slice(p);
    }
    write(conn, &buf).await
}
