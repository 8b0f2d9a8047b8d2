//! The server's request loop: read a request (and a write's payload), then in a task of its own
//! check it, run it through the export's BlockBackend, and reply (simple or structured). A write whose payload does not
//! arrive whole is never issued; a request the stream cannot recover from (bad magic, a write
//! payload over the limit) closes the connection; every other bad request gets an NBD error.

use super::handshake::Session;
use super::proto::*;
use super::wire::{read_array, read_exact, write_parts};
use std::cell::Cell;
use std::rc::Rc;

use crate::env::Env;
use crate::env::net::Conn;
use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};
use crate::util::Notify;

/// A request's successful result.
enum Done {
    /// No payload.
    Ok,
    /// Read data.
    Data(IoBuf),
    /// Block status: per selected context, its id and extents.
    Status(Vec<(u32, Vec<(u32, u32)>)>),
}

/// The requests of one connection in flight. Each runs as its own task, so a client that keeps
/// several requests in flight gets them served at once; they take their place in the export's
/// change tracking in arrival order (`turn`), and their replies go out whole, one at a time
/// (`writing`).
#[derive(Default)]
struct Flight {
    in_flight: Cell<u32>,
    /// The ticket whose turn it is to be tracked.
    turn: Cell<u64>,
    writing: Cell<bool>,
    changed: Notify,
}

impl Flight {
    async fn wait_turn(&self, ticket: u64) {
        while self.turn.get() != ticket {
            self.changed.wait().await;
        }
    }

    fn next_turn(&self) {
        self.turn.set(self.turn.get() + 1);
        self.changed.notify_all();
    }

    async fn write_lock(&self) -> WriteGuard<'_> {
        while self.writing.get() {
            self.changed.wait().await;
        }
        self.writing.set(true);
        WriteGuard(self)
    }

    fn done(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.changed.notify_all();
    }
}

struct WriteGuard<'a>(&'a Flight);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.0.writing.set(false);
        self.0.changed.notify_all();
    }
}

/// Serve requests until the client disconnects or the stream breaks; returns once every
/// request read has been answered (or found its connection gone).
pub(super) async fn serve(env: Rc<dyn Env>, conn: Rc<dyn Conn>, s: Rc<Session>) -> Result<()> {
    let flight = Rc::new(Flight::default());
    let mut ticket = 0;
    let r = loop {
        let Ok(hdr) = read_array::<REQUEST_LEN>(&*conn).await else {
            break Ok(());
        };
        let Some(req) = Request::decode(&hdr) else {
            break Err(Error::invalid("NBD request with a bad magic"));
        };
        let payload = if req.has_payload() {
            if req.len > MAX_PAYLOAD {
                // The payload cannot be skipped safely: the stream is lost.
                break Ok(());
            }
            // A client that vanishes mid-payload ends here, before anything is written.
            match read_exact(&*conn, req.len as usize).await {
                Ok(p) => Some(p),
                Err(e) => break Err(e),
            }
        } else {
            None
        };
        if req.cmd == CMD_DISC {
            break Ok(());
        }
        flight.in_flight.set(flight.in_flight.get() + 1);
        let task = run_request(
            s.clone(),
            conn.clone(),
            flight.clone(),
            ticket,
            req,
            payload,
        );
        ticket += 1;
        env.spawn("nbd-request", Box::pin(task));
    };
    while flight.in_flight.get() > 0 {
        flight.changed.wait().await;
    }
    r
}

/// One request, from its turn in the change tracking to its reply.
async fn run_request(
    s: Rc<Session>,
    conn: Rc<dyn Conn>,
    flight: Rc<Flight>,
    ticket: u64,
    req: Request,
    payload: Option<Vec<u8>>,
) {
    flight.wait_turn(ticket).await;
    let checked = check(&s, &req);
    let changes = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    let tracked = (checked.is_ok() && changes).then(|| {
        s.export
            .changes
            .track(req.offset, u64::from(req.len).max(1), true, 1)
    });
    flight.next_turn();
    if let Some(t) = &tracked {
        t.wait_conflicts().await;
    }
    let result = match checked {
        Ok(()) => execute(&s, &req, payload).await,
        Err(e) => Err(e),
    };
    drop(tracked);
    {
        let _w = flight.write_lock().await;
        // A connection gone meanwhile: nobody to tell.
        let _ = match result {
            Ok(done) => send_done(&*conn, &s, &req, done).await,
            Err(e) => {
                let msg = e.message();
                send_error(&*conn, &s, &req, nbd_errno(e.errno()), &msg).await
            }
        };
    }
    flight.done();
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

/// Run a checked request through the export's backend.
async fn execute(s: &Session, req: &Request, payload: Option<Vec<u8>>) -> Result<Done> {
    let bb = s.export.backend();
    let (off, len) = (req.offset, u64::from(req.len));
    let fua = req.flags & CMD_FLAG_FUA != 0;
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
