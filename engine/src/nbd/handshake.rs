//! The server's side of fixed newstyle negotiation: greet, read the client's flags, then answer
//! options until one (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) enters transmission or the client
//! aborts. A malformed option gets an error reply and negotiation goes on; a broken stream (bad
//! magic, an option too big to read through, an unknown export for `EXPORT_NAME`) closes.

use std::rc::Rc;

use super::export::Export;
use super::options::{match_contexts, parse_info, parse_meta};
use super::proto::*;
use super::server::Registry;
use super::wire::{read_array, read_exact, write_parts};
use crate::env::net::Conn;
use crate::error::Result;

/// What negotiation settled for transmission.
pub(super) struct Session {
    /// The export served.
    pub export: Rc<Export>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Context ids selected by `NBD_OPT_SET_META_CONTEXT` for this export.
    pub meta: Vec<u32>,
}

/// Negotiation state between options.
#[derive(Default)]
struct State {
    structured: bool,
    /// The export name and context ids of the last `SET_META_CONTEXT`.
    meta: Option<(String, Vec<u32>)>,
}

/// Run negotiation; `None` when the connection is to be closed.
pub(super) async fn negotiate(conn: &dyn Conn, reg: &Registry) -> Result<Option<Session>> {
    let flags = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
    write_parts(
        conn,
        &[
            &NBDMAGIC.to_be_bytes(),
            &IHAVEOPT.to_be_bytes(),
            &flags.to_be_bytes(),
        ],
    )
    .await?;
    let cflags = be32(&read_array::<4>(conn).await?);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Ok(None);
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    let mut st = State::default();
    loop {
        let Some(h) = OptionHeader::decode(&read_array::<16>(conn).await?) else {
            return Ok(None);
        };
        if h.opt == OPT_EXPORT_NAME {
            return export_name(conn, reg, h.len, no_zeroes, st).await;
        }
        if h.len > MAX_OPTION_PAYLOAD {
            return Ok(None);
        }
        let payload = read_exact(conn, h.len as usize).await?;
        match h.opt {
            OPT_ABORT => {
                let _ = reply(conn, h.opt, REP_ACK, &[]).await;
                return Ok(None);
            }
            OPT_INFO | OPT_GO => {
                if let Some(export) = info(conn, reg, h.opt, &payload).await?
                    && h.opt == OPT_GO
                {
                    return Ok(Some(session(export, st)));
                }
            }
            OPT_LIST if payload.is_empty() => list(conn, reg).await?,
            OPT_STRUCTURED_REPLY if payload.is_empty() && !st.structured => {
                st.structured = true;
                reply(conn, h.opt, REP_ACK, &[]).await?;
            }
            OPT_LIST | OPT_STRUCTURED_REPLY => {
                error(conn, h.opt, REP_ERR_INVALID, "option not valid here").await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta(conn, reg, h.opt, &payload, &mut st).await?;
            }
            OPT_STARTTLS => error(conn, h.opt, REP_ERR_POLICY, "TLS not configured").await?,
            other => {
                let msg = format!("Unsupported option {other}");
                error(conn, other, REP_ERR_UNSUP, &msg).await?;
            }
        }
    }
}

fn session(export: Rc<Export>, st: State) -> Session {
    // A selection made for another export does not carry over.
    let meta = match st.meta {
        Some((name, ids)) if name == export.name => ids,
        _ => Vec::new(),
    };
    Session {
        export,
        structured: st.structured,
        meta,
    }
}

/// `NBD_OPT_EXPORT_NAME`: no error reply exists, so an unknown export closes the connection.
async fn export_name(
    conn: &dyn Conn,
    reg: &Registry,
    len: u32,
    no_zeroes: bool,
    st: State,
) -> Result<Option<Session>> {
    if len > MAX_STRING {
        return Ok(None);
    }
    let name = read_exact(conn, len as usize).await?;
    let Some(export) = String::from_utf8(name).ok().and_then(|n| reg.find(&n)) else {
        return Ok(None);
    };
    let pad = [0u8; 124];
    let pad: &[u8] = if no_zeroes { &[] } else { &pad };
    write_parts(
        conn,
        &[
            &export.size().to_be_bytes(),
            &export.tflags().to_be_bytes(),
            pad,
        ],
    )
    .await?;
    Ok(Some(session(export, st)))
}

/// `NBD_OPT_INFO`/`GO`: the export's information, or an error reply (`None`).
async fn info(
    conn: &dyn Conn,
    reg: &Registry,
    opt: u32,
    payload: &[u8],
) -> Result<Option<Rc<Export>>> {
    let req = match parse_info(payload) {
        Ok(r) => r,
        Err(m) => {
            error(conn, opt, REP_ERR_INVALID, m.0).await?;
            return Ok(None);
        }
    };
    let Some(export) = reg.find(&req.name) else {
        let msg = format!("export '{}' not present", req.name);
        error(conn, opt, REP_ERR_UNKNOWN, &msg).await?;
        return Ok(None);
    };
    if req.infos.contains(&INFO_NAME) {
        info_item(conn, opt, INFO_NAME, export.name.as_bytes()).await?;
    }
    if let Some(d) = export
        .description
        .as_ref()
        .filter(|_| req.infos.contains(&INFO_DESCRIPTION))
    {
        info_item(conn, opt, INFO_DESCRIPTION, d.as_bytes()).await?;
    }
    let mut sizes = Vec::with_capacity(12);
    for v in [1u32, 4096, MAX_PAYLOAD] {
        sizes.extend_from_slice(&v.to_be_bytes());
    }
    info_item(conn, opt, INFO_BLOCK_SIZE, &sizes).await?;
    let mut ex = export.size().to_be_bytes().to_vec();
    ex.extend_from_slice(&export.tflags().to_be_bytes());
    info_item(conn, opt, INFO_EXPORT, &ex).await?;
    reply(conn, opt, REP_ACK, &[]).await?;
    Ok(Some(export))
}

async fn info_item(conn: &dyn Conn, opt: u32, ty: u16, data: &[u8]) -> Result<()> {
    let mut p = ty.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    reply(conn, opt, REP_INFO, &p).await
}

/// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, then an ack.
async fn list(conn: &dyn Conn, reg: &Registry) -> Result<()> {
    for e in reg.exports() {
        let mut p = (e.name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(e.name.as_bytes());
        if let Some(d) = &e.description {
            p.extend_from_slice(d.as_bytes());
        }
        reply(conn, OPT_LIST, REP_SERVER, &p).await?;
    }
    reply(conn, OPT_LIST, REP_ACK, &[]).await
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
async fn meta(
    conn: &dyn Conn,
    reg: &Registry,
    opt: u32,
    payload: &[u8],
    st: &mut State,
) -> Result<()> {
    let set = opt == OPT_SET_META_CONTEXT;
    // Listing is harmless; selecting contexts only makes sense with structured replies.
    if set && !st.structured {
        return error(
            conn,
            opt,
            REP_ERR_INVALID,
            "request structured replies first",
        )
        .await;
    }
    let req = match parse_meta(payload) {
        Ok(r) => r,
        Err(m) => return error(conn, opt, REP_ERR_INVALID, m.0).await,
    };
    let Some(export) = reg.find(&req.export) else {
        let msg = format!("export '{}' not present", req.export);
        return error(conn, opt, REP_ERR_UNKNOWN, &msg).await;
    };
    let names: Vec<String> = export.contexts().iter().map(|c| c.name()).collect();
    let ids = match_contexts(&names, &req.queries, !set);
    for &id in &ids {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(names[id as usize].as_bytes());
        reply(conn, opt, REP_META_CONTEXT, &p).await?;
    }
    if set {
        st.meta = Some((export.name.clone(), ids));
    }
    reply(conn, opt, REP_ACK, &[]).await
}

async fn reply(conn: &dyn Conn, opt: u32, rep: u32, payload: &[u8]) -> Result<()> {
    let h = option_reply(opt, rep, payload.len() as u32);
    write_parts(conn, &[&h, payload]).await
}

async fn error(conn: &dyn Conn, opt: u32, rep: u32, msg: &str) -> Result<()> {
    reply(conn, opt, rep, msg.as_bytes()).await
}
