//! `nbd`: the protocol driver that reads and writes an export of a remote NBD server
//! (`blockdev-add driver=nbd server={type=unix|inet,..} export=NAME`), over the env's network.
//!
//! Requests go one at a time over one connection (`exchange.rs`), negotiated with structured
//! replies and `base:allocation` (`negotiate.rs`) so block status reaches the remote layer.
//! When the connection is lost, requests wait while the driver reconnects, for at most
//! `reconnect-delay` seconds counted from the loss, and are then sent again on the new
//! connection; past the delay they fail with `EIO`. `open-timeout` retries the first connection
//! for that long.

mod exchange;
mod negotiate;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::json;

use crate::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use crate::env::net::{Conn, NetAddr};
use crate::env::{Env, LocalBoxFuture};
use crate::error::{Errno, Error, Result};
use crate::graph::OpenCtx;
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use crate::nbd::proto::*;
use crate::util::{Either, Notify, Options, race};

use exchange::{Answer, exchange};
use negotiate::{ExportInfo, negotiate};

const NS: u64 = 1_000_000_000;
/// First pause between reconnection attempts; it doubles up to `MAX_RETRY_NS`.
const FIRST_RETRY_NS: u64 = 10_000_000;
const MAX_RETRY_NS: u64 = NS;

/// A negotiated connection.
struct Link {
    conn: Rc<dyn Conn>,
    info: ExportInfo,
}

struct NbdClient {
    env: Rc<dyn Env>,
    addr: NetAddr,
    export: String,
    reconnect_delay_ns: u64,
    caps: DriverCaps,
    size: u64,
    link: RefCell<Option<Rc<Link>>>,
    /// When the connection was lost, while it has not been replaced.
    lost_at: Cell<Option<u64>>,
    busy: Cell<bool>,
    idle: Notify,
    next_cookie: Cell<u64>,
}

fn server_address(mut s: Options) -> Result<NetAddr> {
    let addr = crate::nbd::addr::socket_address_flat(&mut s)?;
    s.finish()?;
    Ok(addr)
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let server = opts
            .take_dict("server")?
            .ok_or_else(|| Error::param_missing("server"))?;
        let addr = server_address(server)?;
        let export = opts.take_str("export")?.unwrap_or_default();
        let reconnect_delay = opts.take_u64("reconnect-delay")?.unwrap_or(0);
        let open_timeout = opts.take_u64("open-timeout")?.unwrap_or(0);
        if opts.take_str("tls-creds")?.is_some() {
            return Err(Error::generic("TLS is not supported by this NBD client"));
        }
        let _ = opts.take_str("x-dirty-bitmap")?;
        opts.finish()?;
        let env = ctx.env();
        let deadline = env.now_ns() + open_timeout * NS;
        let link = connect(&env, &addr, &export, deadline).await?;
        let info = &link.info;
        let mut write_flags = ReqFlags::NONE;
        if info.tflags & TFLAG_SEND_FUA != 0 {
            write_flags = ReqFlags::FUA;
        }
        let mut zero_flags = write_flags.union(ReqFlags::MAY_UNMAP);
        if info.tflags & TFLAG_SEND_FAST_ZERO != 0 {
            zero_flags = zero_flags.union(ReqFlags::NO_FALLBACK);
        }
        Ok(Box::new(NbdClient {
            caps: DriverCaps {
                name: "nbd",
                kind: DriverKind::Protocol,
                supports_backing: false,
                write_flags,
                zero_flags,
                reopen: true,
            },
            size: info.size,
            env,
            addr,
            export,
            reconnect_delay_ns: reconnect_delay * NS,
            link: RefCell::new(Some(Rc::new(link))),
            lost_at: Cell::new(None),
            busy: Cell::new(false),
            idle: Notify::new(),
            next_cookie: Cell::new(1),
        }) as Box<dyn BlockDriver>)
    })
}

/// Connect and negotiate, retrying until `deadline` (one attempt when it has passed).
async fn connect(env: &Rc<dyn Env>, addr: &NetAddr, export: &str, deadline: u64) -> Result<Link> {
    let mut pause = FIRST_RETRY_NS;
    loop {
        let attempt = async {
            let conn = env
                .net()
                .connect(addr)
                .await
                .map_err(|e| connect_error(addr, e))?;
            let info = negotiate(&*conn, export).await;
            if info.is_err() {
                // Tell the server we give up, as QEMU's client does, rather than vanish.
                let abort = OptionHeader {
                    opt: OPT_ABORT,
                    len: 0,
                }
                .encode();
                let _ = crate::nbd::wire::write(&*conn, &abort).await;
                conn.shutdown();
            }
            Ok::<_, Error>(Link { conn, info: info? })
        };
        // A connection that hangs (a partitioned network) gives up at the deadline; a single
        // attempt (no deadline ahead) takes as long as the connection does, as QEMU's.
        let outcome = if deadline > env.now_ns() {
            race(attempt, env.sleep_until(deadline)).await
        } else {
            Either::Left(attempt.await)
        };
        let err = match outcome {
            Either::Left(Ok(link)) => return Ok(link),
            Either::Left(Err(e)) => e,
            Either::Right(()) => Error::io_msg(Errno::Other(110), "Connection timed out"),
        };
        let now = env.now_ns();
        if now >= deadline {
            return Err(err);
        }
        env.sleep_until((now + pause).min(deadline)).await;
        pause = (pause * 2).min(MAX_RETRY_NS);
    }
}

fn connect_error(addr: &NetAddr, e: Error) -> Error {
    let target = match addr {
        NetAddr::Unix(p) => p.clone(),
        a => a.to_string(),
    };
    let msg = e.message();
    if msg.starts_with("Failed to connect") {
        return e;
    }
    let why = e.errno().map_or(msg, |n| n.description().to_string());
    let why = if why == "Unknown error" {
        e.message()
    } else {
        why
    };
    Error::io_msg(
        e.errno().unwrap_or(Errno::EIO),
        format!("Failed to connect to '{target}': {why}"),
    )
}

/// Requests go one at a time: held while one is on the wire.
struct Turn<'a>(&'a NbdClient);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        self.0.idle.notify_all();
    }
}

impl NbdClient {
    async fn turn(&self) -> Turn<'_> {
        while self.busy.get() {
            self.idle.wait().await;
        }
        self.busy.set(true);
        Turn(self)
    }

    /// The current connection, reconnecting if it was lost (within `reconnect-delay`).
    async fn link(&self) -> Result<Rc<Link>> {
        if let Some(l) = self.link.borrow().clone() {
            return Ok(l);
        }
        let lost = *self.lost_at.get().get_or_insert(self.env.now_ns());
        self.lost_at.set(Some(lost));
        let deadline = lost.saturating_add(self.reconnect_delay_ns);
        let link = connect(&self.env, &self.addr, &self.export, deadline)
            .await
            .map_err(|e| {
                Error::io_msg(Errno::EIO, format!("reconnecting failed: {}", e.message()))
            })?;
        if link.info.size != self.size {
            link.conn.shutdown();
            return Err(Error::io_msg(
                Errno::EIO,
                "NBD export size changed across a reconnect",
            ));
        }
        let link = Rc::new(link);
        self.lost_at.set(None);
        *self.link.borrow_mut() = Some(link.clone());
        Ok(link)
    }

    /// Run one request, resending it on a new connection when the old one is lost.
    async fn request(
        &self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        mut buf: Option<&mut IoBuf>,
    ) -> Result<Answer> {
        let _turn = self.turn().await;
        let mut cause: Option<Error> = None;
        loop {
            let link = self.link().await.map_err(|e| match &cause {
                Some(c) => Error::io_msg(
                    Errno::EIO,
                    format!("NBD connection lost ({}); {}", c.message(), e.message()),
                ),
                None => e,
            })?;
            let cookie = self.next_cookie.get();
            self.next_cookie.set(cookie + 1);
            let req = Request {
                flags,
                cmd,
                cookie,
                offset,
                len,
            };
            match exchange(&*link.conn, &link.info, &req, payload, buf.as_deref_mut()).await {
                Ok(answer) => return answer,
                Err(lost) => {
                    cause = Some(lost.0);
                    link.conn.shutdown();
                    *self.link.borrow_mut() = None;
                    self.lost_at.set(Some(self.env.now_ns()));
                }
            }
        }
    }

    fn max_payload(&self) -> u32 {
        self.link
            .borrow()
            .as_ref()
            .map_or(MAX_PAYLOAD, |l| l.info.max_payload)
    }

    fn tflags(&self) -> u16 {
        self.link.borrow().as_ref().map_or(0, |l| l.info.tflags)
    }
}

fn fua(flags: ReqFlags) -> u16 {
    if flags.contains(ReqFlags::FUA) {
        CMD_FLAG_FUA
    } else {
        0
    }
}

impl BlockDriver for NbdClient {
    fn caps(&self) -> &DriverCaps {
        &self.caps
    }

    fn limits(&self) -> Limits {
        Limits {
            max_transfer: self.max_payload(),
            max_discard: self.max_payload(),
            max_write_zeroes: self.max_payload(),
            ..Limits::default()
        }
    }

    fn len(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: IoBuf, _flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let mut buf = buf;
            let len = buf.len() as u32;
            let r = self
                .request(CMD_READ, 0, offset, len, &[], Some(&mut buf))
                .await;
            (buf, r.map(|_| ()))
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let len = buf.len() as u32;
            let r = self
                .request(CMD_WRITE, fua(flags), offset, len, buf.as_slice(), None)
                .await;
            (buf, r.map(|_| ()))
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.tflags() & TFLAG_SEND_WRITE_ZEROES == 0 {
                return Err(Error::io(Errno::ENOTSUP));
            }
            let mut f = fua(flags);
            if !flags.contains(ReqFlags::MAY_UNMAP) {
                f |= CMD_FLAG_NO_HOLE;
            }
            if flags.contains(ReqFlags::NO_FALLBACK) {
                f |= CMD_FLAG_FAST_ZERO;
            }
            self.request(CMD_WRITE_ZEROES, f, offset, len as u32, &[], None)
                .await
                .map(|_| ())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.tflags() & TFLAG_SEND_TRIM == 0 {
                return Ok(());
            }
            self.request(CMD_TRIM, 0, offset, len as u32, &[], None)
                .await
                .map(|_| ())
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.tflags() & TFLAG_SEND_FLUSH == 0 {
                return Ok(());
            }
            self.request(CMD_FLUSH, 0, 0, 0, &[], None)
                .await
                .map(|_| ())
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            let data = BlockStatus {
                len,
                mapping: Mapping::Data { host: Some(offset) },
            };
            let has_ctx = self
                .link
                .borrow()
                .as_ref()
                .is_some_and(|l| l.info.alloc_ctx.is_some());
            if !has_ctx {
                return Ok(data);
            }
            let len32 = len.min(u64::from(u32::MAX) & !0xfff).max(1) as u32;
            let a = self
                .request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, offset, len32, &[], None)
                .await?;
            Ok(a.status.map_or(data, |s| BlockStatus {
                len: s.len.min(len),
                ..s
            }))
        })
    }

    fn truncate(
        &self,
        len: u64,
        _exact: bool,
        _prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if len == self.size {
                return Ok(());
            }
            Err(Error::io_msg(Errno::ENOTSUP, "Cannot resize NBD nodes"))
        })
    }

    fn close(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let link = self.link.borrow_mut().take();
            if let Some(l) = link {
                // A polite disconnect; the reply never comes.
                let req = Request {
                    flags: 0,
                    cmd: CMD_DISC,
                    cookie: 0,
                    offset: 0,
                    len: 0,
                };
                let _ = crate::nbd::wire::write(&*l.conn, &req.encode()).await;
                l.conn.shutdown();
            }
            Ok(())
        })
    }

    fn filename(&self) -> String {
        match &self.addr {
            NetAddr::Unix(p) => format!("nbd+unix:///{}?socket={p}", self.export),
            NetAddr::Inet { host, port } => format!("nbd://{host}:{port}/{}", self.export),
        }
    }

    fn specific_info(&self) -> serde_json::Value {
        json!({"export": self.export})
    }
}
