//! The client's side of fixed newstyle negotiation: ask for structured replies and the
//! `base:allocation` context, then `NBD_OPT_GO` for the export, and learn its size and flags.

use crate::env::net::Conn;
use crate::error::{Errno, Error, Result};
use crate::nbd::proto::*;
use crate::nbd::wire::{read_array, read_exact, write_parts};

/// What the server said about the export.
#[derive(Clone, Debug)]
pub(super) struct ExportInfo {
    pub size: u64,
    pub tflags: u16,
    pub structured: bool,
    /// The context id of `base:allocation`, when the server offers it.
    pub alloc_ctx: Option<u32>,
    /// Largest request the server takes.
    pub max_payload: u32,
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::io_msg(Errno::EIO, msg)
}

/// One option reply: its type and payload.
async fn read_reply(conn: &dyn Conn, opt: u32) -> Result<(u32, Vec<u8>)> {
    let h = read_array::<20>(conn).await?;
    if be64(&h[0..8]) != REPLY_MAGIC || be32(&h[8..12]) != opt {
        return Err(protocol("Unexpected option reply from the NBD server"));
    }
    let len = be32(&h[16..20]);
    if len > MAX_OPTION_PAYLOAD {
        return Err(protocol("Option reply from the NBD server is too long"));
    }
    let payload = read_exact(conn, len as usize).await?;
    Ok((be32(&h[12..16]), payload))
}

async fn send_option(conn: &dyn Conn, opt: u32, payload: &[u8]) -> Result<()> {
    let h = OptionHeader {
        opt,
        len: payload.len() as u32,
    }
    .encode();
    write_parts(conn, &[&h, payload]).await
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Negotiate `export` on a fresh connection.
pub(super) async fn negotiate(conn: &dyn Conn, export: &str) -> Result<ExportInfo> {
    let greeting = read_array::<18>(conn).await?;
    if be64(&greeting[0..8]) != NBDMAGIC || be64(&greeting[8..16]) != IHAVEOPT {
        return Err(protocol("Server is not an NBD newstyle server"));
    }
    let sflags = be16(&greeting[16..18]);
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol(
            "Server does not support fixed newstyle negotiation",
        ));
    }
    let mut cflags = FLAG_C_FIXED_NEWSTYLE;
    if sflags & FLAG_NO_ZEROES != 0 {
        cflags |= FLAG_C_NO_ZEROES;
    }
    write_parts(conn, &[&cflags.to_be_bytes()]).await?;

    send_option(conn, OPT_STRUCTURED_REPLY, &[]).await?;
    let structured = read_reply(conn, OPT_STRUCTURED_REPLY).await?.0 == REP_ACK;
    let alloc_ctx = if structured {
        set_meta_context(conn, export).await?
    } else {
        None
    };
    let mut info = go(conn, export).await?;
    info.structured = structured;
    info.alloc_ctx = alloc_ctx;
    Ok(info)
}

async fn set_meta_context(conn: &dyn Conn, export: &str) -> Result<Option<u32>> {
    let mut p = string(export);
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&string(CTX_BASE_ALLOCATION));
    send_option(conn, OPT_SET_META_CONTEXT, &p).await?;
    let mut id = None;
    loop {
        let (rep, payload) = read_reply(conn, OPT_SET_META_CONTEXT).await?;
        match rep {
            REP_META_CONTEXT if payload.len() >= 4 => {
                if &payload[4..] == CTX_BASE_ALLOCATION.as_bytes() {
                    id = Some(be32(&payload));
                }
            }
            REP_ACK => return Ok(id),
            // An error (unsupported, unknown export): go on without block status; GO reports
            // a missing export properly.
            r if r & REP_FLAG_ERROR != 0 => return Ok(None),
            _ => return Err(protocol("Unexpected reply to NBD_OPT_SET_META_CONTEXT")),
        }
    }
}

async fn go(conn: &dyn Conn, export: &str) -> Result<ExportInfo> {
    let mut p = string(export);
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(conn, OPT_GO, &p).await?;
    let mut info = ExportInfo {
        size: 0,
        tflags: 0,
        structured: false,
        alloc_ctx: None,
        max_payload: MAX_PAYLOAD,
    };
    let mut have_export = false;
    loop {
        let (rep, payload) = read_reply(conn, OPT_GO).await?;
        match rep {
            REP_INFO if payload.len() >= 2 => match be16(&payload) {
                INFO_EXPORT if payload.len() == 12 => {
                    info.size = be64(&payload[2..10]);
                    info.tflags = be16(&payload[10..12]);
                    have_export = true;
                }
                INFO_BLOCK_SIZE if payload.len() == 14 => {
                    info.max_payload = be32(&payload[10..14]).clamp(512, MAX_PAYLOAD);
                }
                _ => {}
            },
            REP_ACK if have_export => return Ok(info),
            REP_ACK => return Err(protocol("NBD server did not describe the export")),
            r if r & REP_FLAG_ERROR != 0 => {
                let msg = String::from_utf8_lossy(&payload).into_owned();
                let mut e = Error::io_msg(Errno::EINVAL, "Requested export not available");
                if !msg.is_empty() {
                    e = e.hint(format!("server reported: {msg}"));
                }
                return Err(e);
            }
            _ => return Err(protocol("Unexpected reply to NBD_OPT_GO")),
        }
    }
}
