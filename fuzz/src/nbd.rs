//! The NBD server against an arbitrary client byte stream: an engine on the simulator exports
//! a writable raw file, the input is sent as one client's whole stream (negotiation, then
//! requests), whatever the server answers is read until it closes or goes quiet, and then a
//! well-behaved client must still negotiate and read. The option and request parsers also see
//! the raw input directly.
//!
//! Invariants: no panic, no simulator deadlock, the server keeps serving, and the file outside
//! what the stream could have written is untouched.

use engine::env::net::NetAddr;
use engine::io::IoBuf;
use engine::nbd::options::{parse_info, parse_meta};
use engine::nbd::proto::*;
use engine::nbd::wire::{read_array, read_exact, write_parts};
use engine::util::{Either, race};
use serde_json::json;

use crate::harness::{engine_of, run, sim_with};

const SOCK: &str = "/fuzz/nbd.sock";
const SIZE: usize = 65536;

/// Run one input.
pub fn session(data: &[u8]) {
    parsers(data);
    let sim = sim_with(&[("disk.img", &[0u8; SIZE])]);
    let engine = engine_of(&sim);
    let env = sim.env();
    run(&sim, async {
        let qmp = |c: serde_json::Value| {
            let engine = engine.clone();
            async move {
                let r = engine::qmp::execute(&engine, &c).await;
                assert!(r.get("return").is_some(), "{c} -> {r}");
            }
        };
        qmp(
            json!({"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "n0",
            "file": {"driver": "file", "filename": "disk.img"}}}),
        )
        .await;
        qmp(json!({"execute": "nbd-server-start",
            "arguments": {"addr": {"type": "unix", "data": {"path": SOCK}}}}))
        .await;
        qmp(
            json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0",
            "node-name": "n0", "name": "exp", "writable": true, "allocation-depth": true}}),
        )
        .await;
        let env_rc = engine.env().clone();
        let net = env_rc.net();
        let addr = NetAddr::Unix(SOCK.into());
        let hostile = net.connect(&addr).await.expect("connect");
        let _ = write_parts(&*hostile, &[data]).await;
        // Read what the server says until it closes or stays quiet for a virtual second.
        loop {
            let quiet = env.sleep(1_000_000_000);
            match race(hostile.read(IoBuf::new(1 << 16)), quiet).await {
                Either::Left((_, Ok(n))) if n > 0 => continue,
                _ => break,
            }
        }
        hostile.shutdown();
        // A well-behaved client is still served.
        let good = net.connect(&addr).await.expect("connect");
        let g = read_array::<18>(&*good).await.expect("greeting");
        assert_eq!(be64(&g), NBDMAGIC);
        write_parts(&*good, &[&FLAG_C_FIXED_NEWSTYLE.to_be_bytes()])
            .await
            .unwrap();
        let name = b"exp";
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name);
        let h = OptionHeader {
            opt: OPT_EXPORT_NAME,
            len: p.len() as u32 - 4,
        }
        .encode();
        write_parts(&*good, &[&h, name]).await.unwrap();
        let info = read_exact(&*good, 10 + 124).await.expect("export info");
        assert_eq!(be64(&info), SIZE as u64);
        let req = Request {
            flags: 0,
            cmd: CMD_READ,
            cookie: 1,
            offset: 0,
            len: 512,
        }
        .encode();
        write_parts(&*good, &[&req]).await.unwrap();
        let r = read_array::<16>(&*good).await.expect("reply");
        assert_eq!((be32(&r[4..]), be64(&r[8..])), (0, 1));
        read_exact(&*good, 512).await.expect("data");
        good.shutdown();
        let _ = engine.shutdown().await;
    });
}

/// The pure parsers on the raw input: never a panic.
fn parsers(data: &[u8]) {
    let _ = parse_info(data);
    let _ = parse_meta(data);
    for c in data.chunks(REQUEST_LEN) {
        if let Ok(b) = <&[u8; REQUEST_LEN]>::try_from(c) {
            let _ = Request::decode(b);
        }
    }
    if let Ok(b) = <&[u8; 16]>::try_from(data.get(..16).unwrap_or(&[])) {
        let _ = OptionHeader::decode(b);
    }
}

#[cfg(test)]
mod tests {
    /// The harness itself on a well-formed stream, a truncated one and junk.
    #[test]
    fn sessions_run_to_the_end() {
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"IHAVEOPT\0\0\0\x07\0\0\0\x09\0\0\0\x03exp\0\0");
        let req = engine::nbd::proto::Request {
            flags: 0,
            cmd: 1,
            cookie: 1,
            offset: 0,
            len: 4,
        };
        go.extend_from_slice(&req.encode());
        go.extend_from_slice(b"abcd");
        super::session(&go);
        super::session(&go[..go.len() - 2]);
        super::session(b"NBDMAGIC junk");
        super::session(&[]);
    }
}
