//! One request and its reply on a negotiated connection: simple replies, and structured replies
//! chunk by chunk (data, holes, block status, errors) until the chunk flagged done.
//!
//! Two failure levels: the outer `Err` means the connection is unusable (closed, reset, or the
//! server broke the protocol) and the request may be retried on a new one; the inner one is the
//! server's answer to this request.

use super::negotiate::ExportInfo;
use crate::env::net::Conn;
use crate::error::{Errno, Error, Result};
use crate::io::{BlockStatus, IoBuf, Mapping};
use crate::nbd::proto::*;
use crate::nbd::wire::{read_array, read_exact, write_parts};

/// The connection failed: retry elsewhere.
pub(super) struct Lost(pub Error);

impl From<Error> for Lost {
    fn from(e: Error) -> Lost {
        Lost(e)
    }
}

fn broken(msg: &str) -> Lost {
    Lost(Error::io_msg(Errno::EIO, msg))
}

/// What a successful reply carried.
#[derive(Default)]
pub(super) struct Answer {
    /// Block status of the allocation context, if asked.
    pub status: Option<BlockStatus>,
}

/// Send `req` (with `payload` for a write) and read its reply; a read's data lands in `buf`.
pub(super) async fn exchange(
    conn: &dyn Conn,
    info: &ExportInfo,
    req: &Request,
    payload: &[u8],
    buf: Option<&mut IoBuf>,
) -> std::result::Result<Result<Answer>, Lost> {
    write_parts(conn, &[&req.encode(), payload]).await?;
    let magic = read_array::<4>(conn).await?;
    match be32(&magic) {
        SIMPLE_REPLY_MAGIC => simple(conn, req, buf).await,
        STRUCTURED_REPLY_MAGIC if info.structured => structured(conn, info, req, buf).await,
        _ => Err(broken("Invalid reply magic from the NBD server")),
    }
}

async fn simple(
    conn: &dyn Conn,
    req: &Request,
    buf: Option<&mut IoBuf>,
) -> std::result::Result<Result<Answer>, Lost> {
    let rest = read_array::<12>(conn).await?;
    let (error, cookie) = (be32(&rest[0..4]), be64(&rest[4..12]));
    if cookie != req.cookie {
        return Err(broken("NBD reply for an unknown request"));
    }
    if error != 0 {
        return Ok(Err(Error::io(host_errno(error))));
    }
    if let Some(buf) = buf {
        let data = read_exact(conn, buf.len()).await?;
        buf.as_mut_slice().copy_from_slice(&data);
    }
    Ok(Ok(Answer::default()))
}

async fn structured(
    conn: &dyn Conn,
    info: &ExportInfo,
    req: &Request,
    mut buf: Option<&mut IoBuf>,
) -> std::result::Result<Result<Answer>, Lost> {
    let mut answer = Answer::default();
    let mut failure: Option<Error> = None;
    let mut first = true;
    loop {
        let rest = if first {
            read_array::<16>(conn).await?
        } else {
            let h = read_array::<20>(conn).await?;
            if be32(&h[0..4]) != STRUCTURED_REPLY_MAGIC {
                return Err(broken("Invalid reply magic from the NBD server"));
            }
            let mut r = [0u8; 16];
            r.copy_from_slice(&h[4..20]);
            r
        };
        first = false;
        let (flags, ty, cookie, len) = (
            be16(&rest[0..2]),
            be16(&rest[2..4]),
            be64(&rest[4..12]),
            be32(&rest[12..16]),
        );
        if cookie != req.cookie {
            return Err(broken("NBD reply for an unknown request"));
        }
        if len > MAX_PAYLOAD + 8 {
            return Err(broken("NBD reply chunk too long"));
        }
        let p = read_exact(conn, len as usize).await?;
        match ty {
            REPLY_TYPE_NONE => {}
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                place(&p, ty, req, buf.as_deref_mut())?;
            }
            REPLY_TYPE_BLOCK_STATUS if p.len() >= 12 => {
                if Some(be32(&p)) == info.alloc_ctx {
                    answer.status = Some(extent(req.offset, be32(&p[4..8]), be32(&p[8..12])));
                }
            }
            t if t & (1 << 15) != 0 && p.len() >= 6 => {
                let n = usize::from(be16(&p[4..6])).min(p.len() - 6);
                let msg = String::from_utf8_lossy(&p[6..6 + n]).into_owned();
                let errno = host_errno(be32(&p));
                failure.get_or_insert(if msg.is_empty() {
                    Error::io(errno)
                } else {
                    Error::io_msg(errno, msg)
                });
            }
            _ => return Err(broken("Unexpected NBD reply chunk")),
        }
        if flags & REPLY_FLAG_DONE != 0 {
            return Ok(failure.map_or(Ok(answer), Err));
        }
    }
}

/// Put a data or hole chunk into the read buffer, after checking it lies inside the request.
fn place(
    p: &[u8],
    ty: u16,
    req: &Request,
    buf: Option<&mut IoBuf>,
) -> std::result::Result<(), Lost> {
    let Some(buf) = buf else {
        return Err(broken("NBD data chunk for a request that reads nothing"));
    };
    if p.len() < 8 || (ty == REPLY_TYPE_OFFSET_HOLE && p.len() != 12) {
        return Err(broken("Malformed NBD data chunk"));
    }
    let off = be64(p);
    let len = if ty == REPLY_TYPE_OFFSET_DATA {
        (p.len() - 8) as u64
    } else {
        u64::from(be32(&p[8..12]))
    };
    let start = off
        .checked_sub(req.offset)
        .ok_or_else(|| broken("NBD chunk outside its request"))?;
    if start + len > buf.len() as u64 {
        return Err(broken("NBD chunk outside its request"));
    }
    let dst = &mut buf.as_mut_slice()[start as usize..(start + len) as usize];
    if ty == REPLY_TYPE_OFFSET_DATA {
        dst.copy_from_slice(&p[8..]);
    } else {
        dst.fill(0);
    }
    Ok(())
}

/// The first extent of `base:allocation` as the engine's block status.
fn extent(offset: u64, len: u32, flags: u32) -> BlockStatus {
    let mapping = match (flags & STATE_HOLE != 0, flags & STATE_ZERO != 0) {
        (true, true) => Mapping::Zero { host: None },
        (false, true) => Mapping::DataZero { host: Some(offset) },
        _ => Mapping::Data { host: Some(offset) },
    };
    BlockStatus {
        len: u64::from(len.max(1)),
        mapping,
    }
}
