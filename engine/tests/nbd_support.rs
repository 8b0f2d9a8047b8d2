//! Helpers of the NBD tests: a server with one export on the simulator's network, a client
//! node on it, and a raw protocol client for hostile peers.
#![allow(dead_code)]

use std::rc::Rc;

use engine::Engine;
use engine::env::net::{Conn, NetAddr};
use engine::nbd::proto::*;
use engine::nbd::wire::{read_array, read_exact, write_parts};
use serde_json::{Value, json};

use crate::support::{add_mem, qmp, qmp_ok};

/// The server's socket.
pub const SOCK: &str = "/run/nbd.sock";

pub fn addr() -> NetAddr {
    NetAddr::Unix(SOCK.into())
}

/// Start the server and export a `testmem` node `m0` of `size` bytes as `exp`.
pub async fn serve_mem(engine: &Engine, size: u64, writable: bool) {
    add_mem(engine, "m0", json!({"size": size})).await;
    start(engine).await;
    qmp_ok(
        engine,
        json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0",
            "node-name": "m0", "name": "exp", "writable": writable}}),
    )
    .await;
}

pub async fn start(engine: &Engine) {
    qmp_ok(
        engine,
        json!({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": SOCK}}}}),
    )
    .await;
}

/// blockdev-add an `nbd` client node `name` on export `exp`, with extra options.
pub async fn add_client(engine: &Engine, name: &str, extra: Value) -> Value {
    let mut args = json!({"driver": "nbd", "node-name": name,
        "server": {"type": "unix", "path": SOCK}, "export": "exp"});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    qmp(
        engine,
        json!({"execute": "blockdev-add", "arguments": args}),
    )
    .await
}

/// A raw client: speaks the protocol by hand so tests can break it.
pub struct Raw {
    pub conn: Rc<dyn Conn>,
}

impl Raw {
    /// Connect and read the greeting; send the client flags.
    pub async fn connect(engine: &Engine) -> Raw {
        let conn = engine.env().net().connect(&addr()).await.unwrap();
        let g = read_array::<18>(&*conn).await.unwrap();
        assert_eq!(be64(&g), NBDMAGIC);
        assert_eq!(be64(&g[8..]), IHAVEOPT);
        assert_eq!(be16(&g[16..]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        write_parts(
            &*conn,
            &[&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()],
        )
        .await
        .unwrap();
        Raw { conn }
    }

    pub async fn send(&self, bytes: &[u8]) {
        write_parts(&*self.conn, &[bytes]).await.unwrap();
    }

    pub async fn option(&self, opt: u32, payload: &[u8]) {
        let h = OptionHeader {
            opt,
            len: payload.len() as u32,
        }
        .encode();
        write_parts(&*self.conn, &[&h, payload]).await.unwrap();
    }

    /// One option reply: (type, payload).
    pub async fn reply(&self) -> (u32, Vec<u8>) {
        let h = read_array::<20>(&*self.conn).await.unwrap();
        assert_eq!(be64(&h), REPLY_MAGIC);
        let len = be32(&h[16..]) as usize;
        (be32(&h[12..]), read_exact(&*self.conn, len).await.unwrap())
    }

    /// Replies until the ack (or an error), returned last.
    pub async fn replies(&self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let r = self.reply().await;
            let end = r.0 == REP_ACK || r.0 & REP_FLAG_ERROR != 0;
            out.push(r);
            if end {
                return out;
            }
        }
    }

    /// `NBD_OPT_GO` on `name`, expecting success.
    pub async fn go(&self, name: &str) {
        self.option(OPT_GO, &info_payload(name)).await;
        let r = self.replies().await;
        assert_eq!(r.last().unwrap().0, REP_ACK, "GO {name}: {r:?}");
    }

    pub async fn request(
        &self,
        cmd: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let req = Request {
            flags,
            cmd,
            cookie,
            offset,
            len,
        }
        .encode();
        write_parts(&*self.conn, &[&req, payload]).await.unwrap();
    }

    /// A simple reply: (error, cookie).
    pub async fn simple(&self) -> (u32, u64) {
        let h = read_array::<16>(&*self.conn).await.unwrap();
        assert_eq!(be32(&h), SIMPLE_REPLY_MAGIC);
        (be32(&h[4..]), be64(&h[8..]))
    }

    /// A structured chunk: (flags, type, payload).
    pub async fn chunk(&self) -> (u16, u16, Vec<u8>) {
        let h = read_array::<20>(&*self.conn).await.unwrap();
        assert_eq!(be32(&h), STRUCTURED_REPLY_MAGIC);
        let len = be32(&h[16..]) as usize;
        (
            be16(&h[4..]),
            be16(&h[6..]),
            read_exact(&*self.conn, len).await.unwrap(),
        )
    }

    /// True once the server closed the connection.
    pub async fn closed(&self) -> bool {
        let (_, r) = self.conn.read(engine::io::IoBuf::new(1)).await;
        matches!(r, Ok(0) | Err(_))
    }
}

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn info_payload(name: &str) -> Vec<u8> {
    let mut v = string(name);
    v.extend_from_slice(&0u16.to_be_bytes());
    v
}

pub fn meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = string(export);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&string(q));
    }
    v
}
