//! The server's request loop: read a request (and a write's payload), check it, run it through
//! the export's BlockBackend, and reply (simple or structured). A write whose payload does not
//! arrive whole is never issued; a request the stream cannot recover from (bad magic, a write
//! payload over the limit) closes the connection; every other bad request gets an NBD error.

use super::handshake::Session;
use super::proto::*;
use super::wire::{read_array, read_exact, write_parts};
use crate::env::net::Conn;
use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

/// What the loop does after a request.
enum Flow {
    Continue,
    Close,
}

/// A request's successful result.
enum Done {
    /// No payload.
    Ok,
    /// Read data.
    Data(IoBuf),
    /// Block status: per selected context, its id and extents.
    Status(Vec<(u32, Vec<(u32, u32)>)>),
}

/// Serve requests until the client disconnects or the stream breaks.
pub(super) async fn serve(conn: &dyn Conn, s: &Session) -> Result<()> {
    loop {
        let Ok(hdr) = read_array::<REQUEST_LEN>(conn).await else {
            return Ok(());
        };
        let Some(req) = Request::decode(&hdr) else {
            return Err(Error::invalid("NBD request with a bad magic"));
        };
        if let Flow::Close = handle(conn, s, req).await? {
            return Ok(());
        }
    }
}

async fn handle(conn: &dyn Conn, s: &Session, req: Request) -> Result<Flow> {
    let payload = if req.has_payload() {
        if req.len > MAX_PAYLOAD {
            // The payload cannot be skipped safely: the stream is lost.
            return Ok(Flow::Close);
        }
        // A client that vanishes mid-payload ends here, before anything is written.
        Some(read_exact(conn, req.len as usize).await?)
    } else {
        None
    };
    if req.cmd == CMD_DISC {
        return Ok(Flow::Close);
    }
    match execute(s, &req, payload).await {
        Ok(done) => send_done(conn, s, &req, done).await?,
        Err(e) => {
            let msg = e.message();
            send_error(conn, s, &req, nbd_errno(e.errno()), &msg).await?;
        }
    }
    Ok(Flow::Continue)
}

/// The flags each command accepts; `None` for an unknown command.
fn allowed_flags(cmd: u16) -> Option<u16> {
    Some(match cmd {
        CMD_READ => CMD_FLAG_DF,
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        CMD_FLUSH | CMD_CACHE => 0,
        _ => return None,
    })
}

fn einval(msg: impl Into<String>) -> Error {
    Error::io_msg(Errno::EINVAL, msg)
}

/// Check a request against the export; the error a client gets when it is refused.
fn check(s: &Session, req: &Request) -> Result<()> {
    let name = command_name(req.cmd);
    let allowed =
        allowed_flags(req.cmd).ok_or_else(|| einval(format!("unsupported command {}", req.cmd)))?;
    if req.flags & !allowed != 0 {
        return Err(einval(format!(
            "unsupported flags 0x{:x} for {name}",
            req.flags
        )));
    }
    let writes = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && !s.export.writable {
        return Err(Error::io_msg(Errno::EPERM, "export is read-only"));
    }
    if req.cmd == CMD_FLUSH {
        return Ok(());
    }
    let size = s.export.size();
    if req.offset > size || u64::from(req.len) > size - req.offset {
        let errno = if matches!(req.cmd, CMD_WRITE | CMD_WRITE_ZEROES) {
            Errno::ENOSPC
        } else {
            Errno::EINVAL
        };
        return Err(Error::io_msg(
            errno,
            format!("{name} past the end of the export"),
        ));
    }
    if req.cmd == CMD_READ && req.len > MAX_PAYLOAD {
        return Err(einval("read larger than the maximum payload"));
    }
    if req.cmd == CMD_BLOCK_STATUS {
        if !s.structured || s.meta.is_empty() {
            return Err(einval("no metadata context selected"));
        }
        if req.len == 0 {
            return Err(einval("block status of an empty range"));
        }
    }
    Ok(())
}

async fn execute(s: &Session, req: &Request, payload: Option<Vec<u8>>) -> Result<Done> {
    check(s, req)?;
    let bb = s.export.backend();
    let (off, len) = (req.offset, u64::from(req.len));
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let tracked = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES)
        .then(|| s.export.changes.track(off, len.max(1), true, 1));
    if let Some(t) = &tracked {
        t.wait_conflicts().await;
    }
    match req.cmd {
        CMD_READ => {
            let (buf, r) = bb.read(off, IoBuf::new(req.len as usize)).await;
            r.map(|()| Done::Data(buf))
        }
        CMD_WRITE => {
            let buf = IoBuf::from_slice(&payload.unwrap_or_default());
            let flags = if fua { ReqFlags::FUA } else { ReqFlags::NONE };
            bb.write(off, buf, flags).await.1.map(|()| Done::Ok)
        }
        CMD_FLUSH => bb.flush().await.map(|()| Done::Ok),
        // Advisory, and the engine keeps no cache that a prefetch would fill.
        CMD_CACHE => Ok(Done::Ok),
        CMD_TRIM => {
            bb.discard(off, len).await?;
            if fua {
                bb.flush().await?;
            }
            Ok(Done::Ok)
        }
        CMD_WRITE_ZEROES => {
            let mut flags = ReqFlags::NONE;
            if req.flags & CMD_FLAG_NO_HOLE == 0 {
                flags = flags.union(ReqFlags::MAY_UNMAP);
            }
            if req.flags & CMD_FLAG_FAST_ZERO != 0 {
                flags = flags.union(ReqFlags::NO_FALLBACK);
            }
            if fua {
                flags = flags.union(ReqFlags::FUA);
            }
            bb.write_zeroes(off, len, flags).await.map(|()| Done::Ok)
        }
        _ => block_status(s, req).await,
    }
}

async fn block_status(s: &Session, req: &Request) -> Result<Done> {
    let one = req.flags & CMD_FLAG_REQ_ONE != 0;
    let mut out = Vec::with_capacity(s.meta.len());
    for &id in &s.meta {
        let ctx = &s.export.contexts()[id as usize];
        let ext = s
            .export
            .extents(ctx, req.offset, u64::from(req.len), one)
            .await?;
        out.push((id, ext));
    }
    Ok(Done::Status(out))
}

async fn send_done(conn: &dyn Conn, s: &Session, req: &Request, done: Done) -> Result<()> {
    let c = req.cookie;
    match done {
        // A data chunk carries at least one byte: an empty read is answered with no chunk.
        Done::Data(buf) if s.structured && !buf.is_empty() => {
            let len = 8 + buf.len() as u32;
            let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, c, len);
            write_parts(conn, &[&h, &req.offset.to_be_bytes(), buf.as_slice()]).await
        }
        Done::Ok | Done::Data(_) if s.structured => {
            write_parts(
                conn,
                &[&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, c, 0)],
            )
            .await
        }
        Done::Data(buf) => write_parts(conn, &[&simple_reply(0, c), buf.as_slice()]).await,
        Done::Ok => write_parts(conn, &[&simple_reply(0, c)]).await,
        Done::Status(contexts) => {
            let n = contexts.len();
            for (i, (id, ext)) in contexts.into_iter().enumerate() {
                let mut p = Vec::with_capacity(4 + 8 * ext.len());
                p.extend_from_slice(&id.to_be_bytes());
                for (l, f) in ext {
                    p.extend_from_slice(&l.to_be_bytes());
                    p.extend_from_slice(&f.to_be_bytes());
                }
                let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
                let h = chunk_header(flags, REPLY_TYPE_BLOCK_STATUS, c, p.len() as u32);
                write_parts(conn, &[&h, &p]).await?;
            }
            Ok(())
        }
    }
}

async fn send_error(
    conn: &dyn Conn,
    s: &Session,
    req: &Request,
    err: u32,
    msg: &str,
) -> Result<()> {
    if !s.structured {
        return write_parts(conn, &[&simple_reply(err, req.cookie)]).await;
    }
    let msg = &msg.as_bytes()[..msg.len().min(1024)];
    let mut p = err.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg);
    let h = chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        req.cookie,
        p.len() as u32,
    );
    write_parts(conn, &[&h, &p]).await
}
