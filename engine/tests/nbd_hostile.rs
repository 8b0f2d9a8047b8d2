//! Hostile and careless NBD peers, spoken to by hand: malformed negotiation, unknown options and
//! commands, lengths past the export or over the limit, disconnects mid-payload. Each gets the
//! right NBD error or a closed connection; the server keeps serving others; nothing is
//! half-written. Also the metadata contexts as a client sees them on the wire.

use engine::nbd::proto::*;
use serde_json::json;

use crate::nbd_support::*;
use crate::support::{mem, qmp_ok, run};

#[test]
fn negotiation_errors_get_error_replies_and_negotiation_goes_on() {
    run(11, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        let c = Raw::connect(&engine).await;
        c.option(77, b"junk").await;
        assert_eq!(
            c.reply().await,
            (REP_ERR_UNSUP, b"Unsupported option 77".to_vec())
        );
        c.option(OPT_GO, &[0, 0, 0, 9, b'x']).await; // a name longer than the payload
        assert_eq!(c.reply().await.0, REP_ERR_INVALID);
        c.option(OPT_INFO, &info_payload("nope")).await;
        assert_eq!(
            c.reply().await,
            (REP_ERR_UNKNOWN, b"export 'nope' not present".to_vec())
        );
        c.option(OPT_LIST, b"x").await;
        assert_eq!(c.reply().await.0, REP_ERR_INVALID);
        c.option(
            OPT_SET_META_CONTEXT,
            &meta_payload("exp", &[CTX_BASE_ALLOCATION]),
        )
        .await;
        assert_eq!(
            c.reply().await.0,
            REP_ERR_INVALID,
            "structured replies come first"
        );
        c.option(OPT_STARTTLS, &[]).await;
        assert_eq!(c.reply().await.0, REP_ERR_POLICY);
        c.option(OPT_LIST, &[]).await;
        let r = c.replies().await;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (REP_SERVER, [&[0, 0, 0, 3][..], b"exp"].concat()));
        c.option(OPT_INFO, &info_payload("exp")).await;
        let r = c.replies().await;
        let export = r
            .iter()
            .find(|(t, p)| *t == REP_INFO && be16(p) == INFO_EXPORT)
            .unwrap();
        assert_eq!(be64(&export.1[2..]), 1 << 20);
        assert_eq!(be16(&export.1[10..]) & TFLAG_READ_ONLY, 0);
        c.go("exp").await;
        c.request(CMD_READ, 0, 9, 0, 512, &[]).await;
        assert_eq!(c.simple().await, (0, 9));
        let data = engine::nbd::wire::read_exact(&*c.conn, 512).await.unwrap();
        assert_eq!(data, vec![0; 512]);
        c.request(CMD_DISC, 0, 10, 0, 0, &[]).await;
        assert!(c.closed().await);
    });
}

#[test]
fn broken_streams_close_the_connection_and_the_server_serves_others() {
    run(12, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        // Bad option magic.
        let c = Raw::connect(&engine).await;
        c.send(&[0u8; 16]).await;
        assert!(c.closed().await);
        // Unknown client flags.
        let conn = engine.env().net().connect(&addr()).await.unwrap();
        engine::nbd::wire::read_exact(&*conn, 18).await.unwrap();
        engine::nbd::wire::write(&*conn, &0x8000_0000u32.to_be_bytes())
            .await
            .unwrap();
        assert!(Raw { conn }.closed().await);
        // EXPORT_NAME of an unknown export has no error reply: closed.
        let c = Raw::connect(&engine).await;
        c.option(OPT_EXPORT_NAME, b"nope").await;
        assert!(c.closed().await);
        // Bad request magic in transmission.
        let c = Raw::connect(&engine).await;
        c.go("exp").await;
        c.send(&[0xffu8; REQUEST_LEN]).await;
        assert!(c.closed().await);
        // A write payload over the 32 MiB limit cannot be skipped: closed.
        let c = Raw::connect(&engine).await;
        c.go("exp").await;
        c.request(CMD_WRITE, 0, 1, 0, MAX_PAYLOAD + 1, &[]).await;
        assert!(c.closed().await);
        // Meanwhile a well-behaved client is served.
        let good = Raw::connect(&engine).await;
        good.option(OPT_EXPORT_NAME, b"exp").await;
        let h = engine::nbd::wire::read_exact(&*good.conn, 10)
            .await
            .unwrap();
        assert_eq!(be64(&h), 1 << 20);
        good.request(CMD_FLUSH, 0, 5, 0, 0, &[]).await;
        assert_eq!(good.simple().await, (0, 5));
    });
}

#[test]
fn bad_requests_get_nbd_errors() {
    run(13, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        let c = Raw::connect(&engine).await;
        c.go("exp").await;
        let cases: [(u16, u16, u64, u32, u32); 7] = [
            (CMD_READ, 0, (1 << 20) - 512, 1024, NBD_EINVAL),
            (CMD_WRITE_ZEROES, 0, 1 << 20, 1, NBD_ENOSPC),
            (CMD_TRIM, 0, u64::MAX - 10, 20, NBD_EINVAL),
            (CMD_READ, 0, 0, MAX_PAYLOAD + 1, NBD_EINVAL),
            (99, 0, 0, 0, NBD_EINVAL),
            (CMD_READ, CMD_FLAG_FUA, 0, 512, NBD_EINVAL),
            (CMD_BLOCK_STATUS, 0, 0, 512, NBD_EINVAL),
        ];
        for (i, (cmd, flags, off, len, err)) in cases.into_iter().enumerate() {
            c.request(cmd, flags, i as u64, off, len, &[]).await;
            assert_eq!(c.simple().await, (err, i as u64), "case {i}");
        }
        // A write past the end: its payload is read, then refused; the stream stays in step.
        c.request(CMD_WRITE, 0, 50, (1 << 20) - 256, 512, &[9u8; 512])
            .await;
        assert_eq!(c.simple().await, (NBD_ENOSPC, 50));
        assert!(
            mem("m0").data.borrow().iter().all(|&b| b == 0),
            "nothing half-written"
        );
        c.request(CMD_FLUSH, 0, 51, 0, 0, &[]).await;
        assert_eq!(c.simple().await, (0, 51));
    });
}

#[test]
fn a_client_vanishing_mid_payload_writes_nothing() {
    run(14, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        let c = Raw::connect(&engine).await;
        c.go("exp").await;
        let req = Request {
            flags: 0,
            cmd: CMD_WRITE,
            cookie: 1,
            offset: 0,
            len: 4096,
        }
        .encode();
        c.send(&[&req[..], &[0x5a; 1000]].concat()).await;
        c.conn.shutdown();
        drop(c);
        // The server notices, drops the client, and keeps serving.
        let c2 = Raw::connect(&engine).await;
        c2.go("exp").await;
        c2.request(CMD_FLUSH, 0, 2, 0, 0, &[]).await;
        assert_eq!(c2.simple().await, (0, 2));
        assert!(mem("m0").data.borrow().iter().all(|&b| b == 0));
        assert_eq!(engine.nbd().clients(), 1);
    });
}

#[test]
fn read_only_export_refuses_every_write_with_eperm() {
    run(15, |engine| async move {
        serve_mem(&engine, 1 << 20, false).await;
        let c = Raw::connect(&engine).await;
        c.go("exp").await;
        c.request(CMD_WRITE, 0, 1, 0, 512, &[1u8; 512]).await;
        assert_eq!(c.simple().await, (NBD_EPERM, 1));
        c.request(CMD_TRIM, 0, 2, 0, 512, &[]).await;
        assert_eq!(c.simple().await, (NBD_EPERM, 2));
        c.request(CMD_WRITE_ZEROES, 0, 3, 0, 512, &[]).await;
        assert_eq!(c.simple().await, (NBD_EPERM, 3));
        assert!(mem("m0").data.borrow().iter().all(|&b| b == 0));
    });
}

/// Negotiate structured replies and `contexts` on `exp`; the context ids the server gave.
async fn with_contexts(c: &Raw, contexts: &[&str]) -> Vec<(u32, String)> {
    c.option(OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(c.reply().await.0, REP_ACK);
    c.option(OPT_SET_META_CONTEXT, &meta_payload("exp", contexts))
        .await;
    let r = c.replies().await;
    assert_eq!(r.last().unwrap().0, REP_ACK);
    r[..r.len() - 1]
        .iter()
        .map(|(_, p)| (be32(p), String::from_utf8(p[4..].to_vec()).unwrap()))
        .collect()
}

#[test]
fn block_status_reports_allocation_depth_and_dirty_bitmaps() {
    run(16, |engine| async move {
        use crate::support::chain::{add_layer, fill, mkimg};
        mkimg(&engine, "base.qcow2", None).await;
        mkimg(&engine, "top.qcow2", Some("base.qcow2")).await;
        add_layer(&engine, "base", None).await;
        add_layer(&engine, "top", Some("base")).await;
        fill(&engine, "base", 0, 65536, 1).await;
        qmp_ok(
            &engine,
            json!({"execute": "block-dirty-bitmap-add",
            "arguments": {"node": "top", "name": "b0", "granularity": 65536}}),
        )
        .await;
        fill(&engine, "top", 131072, 65536, 2).await;
        start(&engine).await;
        qmp_ok(
            &engine,
            json!({"execute": "block-export-add", "arguments": {"type": "nbd",
            "id": "e0", "node-name": "top", "name": "exp", "allocation-depth": true,
            "bitmaps": ["b0"]}}),
        )
        .await;
        let c = Raw::connect(&engine).await;
        // LIST with "qemu:" names QEMU's contexts only.
        c.option(OPT_STRUCTURED_REPLY, &[]).await;
        c.reply().await;
        c.option(OPT_LIST_META_CONTEXT, &meta_payload("exp", &["qemu:"]))
            .await;
        let names: Vec<_> = c
            .replies()
            .await
            .into_iter()
            .filter(|r| r.0 == REP_META_CONTEXT)
            .map(|r| String::from_utf8(r.1[4..].to_vec()).unwrap())
            .collect();
        assert_eq!(names, ["qemu:allocation-depth", "qemu:dirty-bitmap:b0"]);
        drop(c);
        let c = Raw::connect(&engine).await;
        let ids = with_contexts(
            &c,
            &[
                CTX_BASE_ALLOCATION,
                CTX_ALLOCATION_DEPTH,
                "qemu:dirty-bitmap:b0",
            ],
        )
        .await;
        assert_eq!(ids.len(), 3);
        c.go("exp").await;
        c.request(CMD_BLOCK_STATUS, 0, 7, 0, 262144, &[]).await;
        let mut got = Vec::new();
        loop {
            let (flags, ty, p) = c.chunk().await;
            assert_eq!(ty, REPLY_TYPE_BLOCK_STATUS);
            let ext: Vec<(u32, u32)> = p[4..].chunks(8).map(|e| (be32(e), be32(&e[4..]))).collect();
            got.push((be32(&p), ext));
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        let by_name = |n: &str| {
            let id = ids.iter().find(|(_, name)| name == n).unwrap().0;
            got.iter().find(|(i, _)| *i == id).unwrap().1.clone()
        };
        let k = 65536;
        assert_eq!(
            by_name(CTX_BASE_ALLOCATION),
            vec![(k, 0), (k, 3), (k, 0), (k, 3)]
        );
        assert_eq!(
            by_name(CTX_ALLOCATION_DEPTH),
            vec![(k, 2), (k, 0), (k, 1), (k, 0)]
        );
        assert_eq!(
            by_name("qemu:dirty-bitmap:b0"),
            vec![(2 * k, 0), (k, 1), (k, 0)]
        );
        // REQ_ONE: one extent per context.
        c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 8, 0, 262144, &[])
            .await;
        for i in 0..3 {
            let (flags, _, p) = c.chunk().await;
            assert_eq!(p.len(), 12);
            assert_eq!(flags & REPLY_FLAG_DONE != 0, i == 2);
        }
        // Structured reads and errors.
        c.request(CMD_READ, 0, 9, 131072, 16, &[]).await;
        let (flags, ty, p) = c.chunk().await;
        assert_eq!((flags, ty), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA));
        assert_eq!(be64(&p), 131072);
        assert_eq!(&p[8..], &[2u8; 16]);
        c.request(CMD_READ, 0, 11, 0, 0, &[]).await;
        let (flags, ty, p) = c.chunk().await;
        assert_eq!((flags, ty, p.len()), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0));
        c.request(CMD_READ, 0, 10, 1 << 30, 16, &[]).await;
        let (_, ty, p) = c.chunk().await;
        assert_eq!((ty, be32(&p)), (REPLY_TYPE_ERROR, NBD_EINVAL));
    });
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_limit() {
    run(17, |engine| async move {
        crate::support::add_mem(&engine, "m0", json!({"size": 1 << 20})).await;
        qmp_ok(
            &engine,
            json!({"execute": "nbd-server-start", "arguments": {
            "addr": {"type": "unix", "data": {"path": SOCK}},
            "max-connections": 1, "handshake-max-seconds": 2}}),
        )
        .await;
        let silent = engine.env().net().connect(&addr()).await.unwrap();
        let t0 = engine.env().now_ns();
        engine::nbd::wire::read_exact(&*silent, 18).await.unwrap();
        assert!(Raw { conn: silent }.closed().await);
        let waited = engine.env().now_ns() - t0;
        assert!(
            (2_000_000_000..2_100_000_000).contains(&waited),
            "waited {waited} ns"
        );
        // Its slot is free again.
        let c = Raw::connect(&engine).await;
        c.option(OPT_LIST, &[]).await;
        assert_eq!(c.replies().await.last().unwrap().0, REP_ACK);
    });
}
