//! The NBD server through QMP and blk's own client driver: QEMU's messages, data through an
//! export, read-only exports, several clients, export deletion.

use engine::io::{IoBuf, ReqFlags};
use serde_json::json;

use crate::nbd_support::*;
use crate::support::{add_mem, mem, qmp, qmp_ok, run};

fn desc(r: &serde_json::Value) -> &str {
    r["error"]["desc"].as_str().unwrap_or("")
}

#[test]
fn qmp_commands_refuse_with_qemus_messages() {
    run(1, |engine| async move {
        add_mem(&engine, "m0", json!({"size": 1 << 20})).await;
        let add = |id: &str, extra: serde_json::Value| {
            let mut a = json!({"type": "nbd", "id": id, "node-name": "m0"});
            for (k, v) in extra.as_object().unwrap() {
                a[k] = v.clone();
            }
            json!({"execute": "block-export-add", "arguments": a})
        };
        let r = qmp(&engine, add("e0", json!({}))).await;
        assert_eq!(desc(&r), "NBD server not running");
        let r = qmp(&engine, json!({"execute": "nbd-server-stop"})).await;
        assert_eq!(desc(&r), "NBD server not running");
        let r = qmp(
            &engine,
            json!({"execute": "nbd-server-add", "arguments": {"device": "m0"}}),
        )
        .await;
        assert_eq!(desc(&r), "NBD server not running");
        let r = qmp(
            &engine,
            json!({"execute": "nbd-server-start",
            "arguments": {"addr": {"type": "unix", "path": SOCK}}}),
        )
        .await;
        assert_eq!(desc(&r), "Parameter 'addr.data' is missing");
        let start_at = |addr: serde_json::Value| json!({"execute": "nbd-server-start", "arguments": {"addr": addr}});
        let inet = |port: serde_json::Value| {
            start_at(json!({"type": "inet", "data": {"host": "127.0.0.1", "port": port}}))
        };
        let r = qmp(&engine, inet(json!(10810))).await;
        assert_eq!(
            desc(&r),
            "Invalid parameter type for 'addr.data.port', expected: string"
        );
        let r = qmp(&engine, inet(json!("notaport"))).await;
        assert_eq!(
            desc(&r),
            "address resolution failed for 127.0.0.1:notaport: Servname not supported for ai_socktype"
        );
        let r = qmp(&engine, start_at(json!({"type": "bogus", "data": {}}))).await;
        assert_eq!(desc(&r), "Parameter 'type' does not accept value 'bogus'");
        start(&engine).await;
        let r = qmp(
            &engine,
            json!({"execute": "nbd-server-start",
            "arguments": {"addr": {"type": "unix", "data": {"path": "/x"}}}}),
        )
        .await;
        assert_eq!(desc(&r), "NBD server already running");
        let r = qmp(&engine, add("e0", json!({"node-name": "nX"}))).await;
        assert_eq!(desc(&r), "Cannot find device='' nor node-name='nX'");
        let r = qmp(&engine, add("e0", json!({"bitmaps": ["nob"]}))).await;
        assert_eq!(desc(&r), "Bitmap 'nob' is not found");
        let r = qmp(&engine, add("e0", json!({"type": "bogus"}))).await;
        assert_eq!(desc(&r), "Parameter 'type' does not accept value 'bogus'");
        let r = qmp(&engine, add("e0", json!({"bitmap": "nob"}))).await;
        assert_eq!(desc(&r), "Parameter 'bitmap' is unexpected");
        qmp_ok(&engine, add("e0", json!({"name": "exp", "writable": true}))).await;
        let r = qmp(&engine, add("e0", json!({}))).await;
        assert_eq!(desc(&r), "Block export id 'e0' is already in use");
        let r = qmp(&engine, add("e1", json!({"name": "exp"}))).await;
        assert_eq!(desc(&r), "NBD server already has export named 'exp'");
        qmp_ok(
            &engine,
            json!({"execute": "nbd-server-add", "arguments": {"device": "m0", "name": "exp3"}}),
        )
        .await;
        let q = qmp_ok(&engine, json!({"execute": "query-block-exports"})).await;
        assert_eq!(
            q,
            json!([
                {"node-name": "m0", "shutting-down": false, "type": "nbd", "id": "exp3"},
                {"node-name": "m0", "shutting-down": false, "type": "nbd", "id": "e0"},
            ])
        );
        let r = qmp(
            &engine,
            json!({"execute": "block-export-del", "arguments": {"id": "nope"}}),
        )
        .await;
        assert_eq!(desc(&r), "Export 'nope' is not found");
        let r = qmp(
            &engine,
            json!({"execute": "nbd-server-remove", "arguments": {"name": "nope"}}),
        )
        .await;
        assert_eq!(desc(&r), "Export 'nope' is not found");
        engine.take_events();
        qmp_ok(
            &engine,
            json!({"execute": "block-export-del", "arguments": {"id": "e0"}}),
        )
        .await;
        let ev: Vec<_> = engine
            .take_events()
            .into_iter()
            .map(|e| (e.name, e.data))
            .collect();
        assert_eq!(ev, vec![("BLOCK_EXPORT_DELETED", json!({"id": "e0"}))]);
        qmp_ok(&engine, json!({"execute": "nbd-server-stop"})).await;
        let ev: Vec<_> = engine.take_events().into_iter().map(|e| e.data).collect();
        assert_eq!(ev, vec![json!({"id": "exp3"})]);
        let q = qmp_ok(&engine, json!({"execute": "query-block-exports"})).await;
        assert_eq!(q, json!([]));
        // The node is free again: the exports released it.
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "m0"}}),
        )
        .await;
    });
}

#[test]
fn data_written_through_the_client_lands_in_the_exported_node() {
    run(2, |engine| async move {
        serve_mem(&engine, 4 << 20, true).await;
        let r = add_client(&engine, "c0", json!({})).await;
        assert_eq!(r, json!({"return": {}}));
        let dev = engine
            .device_add(
                "d0",
                "c0",
                engine::backend::BackendOptions::guest_device(false, false),
            )
            .unwrap();
        assert_eq!(dev.len().unwrap(), 4 << 20);
        dev.write(4096, IoBuf::filled(65536, 0xab), ReqFlags::FUA)
            .await
            .1
            .unwrap();
        dev.write_zeroes(8192, 4096, ReqFlags::MAY_UNMAP)
            .await
            .unwrap();
        dev.flush().await.unwrap();
        {
            let data = mem("m0").data.borrow().clone();
            assert!(data[4096..8192].iter().all(|&b| b == 0xab));
            assert!(data[8192..12288].iter().all(|&b| b == 0));
            assert!(data[12288..4096 + 65536].iter().all(|&b| b == 0xab));
        }
        let (buf, r) = dev.read(0, IoBuf::new(16384)).await;
        r.unwrap();
        assert!(buf.as_slice()[..4096].iter().all(|&b| b == 0));
        assert!(buf.as_slice()[12288..].iter().all(|&b| b == 0xab));
        // Past the end: the device refuses before the wire.
        assert!(dev.read(4 << 20, IoBuf::new(512)).await.1.is_err());
        engine.device_del("d0").await.unwrap();
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "c0"}}),
        )
        .await;
    });
}

#[test]
fn read_only_exports_refuse_writes_with_eperm() {
    run(3, |engine| async move {
        serve_mem(&engine, 1 << 20, false).await;
        mem("m0").data.borrow_mut()[..512].fill(7);
        add_client(&engine, "c0", json!({})).await;
        let dev = engine
            .device_add("d0", "c0", engine::backend::BackendOptions::tool(false))
            .unwrap();
        let (_, r) = dev.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EPERM));
        let (buf, r) = dev.read(0, IoBuf::new(512)).await;
        r.unwrap();
        assert_eq!(buf.as_slice(), &[7u8; 512][..], "nothing was written");
    });
}

#[test]
fn several_clients_share_one_export_and_see_each_others_flushed_writes() {
    run(4, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        for c in ["c0", "c1", "c2"] {
            assert_eq!(
                add_client(&engine, c, json!({})).await,
                json!({"return": {}})
            );
        }
        let opts = engine::backend::BackendOptions::guest_device(false, true);
        let d0 = engine.device_add("d0", "c0", opts).unwrap();
        let d1 = engine.device_add("d1", "c1", opts).unwrap();
        let d2 = engine.device_add("d2", "c2", opts).unwrap();
        d0.write(0, IoBuf::filled(4096, 1), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        d1.write(4096, IoBuf::filled(4096, 2), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        d0.flush().await.unwrap();
        d1.flush().await.unwrap();
        let (buf, r) = d2.read(0, IoBuf::new(8192)).await;
        r.unwrap();
        assert!(buf.as_slice()[..4096].iter().all(|&b| b == 1));
        assert!(buf.as_slice()[4096..].iter().all(|&b| b == 2));
    });
}

#[test]
fn safe_delete_refuses_while_connected_and_hard_delete_disconnects() {
    run(5, |engine| async move {
        serve_mem(&engine, 1 << 20, true).await;
        add_client(&engine, "c0", json!({})).await;
        let dev = engine
            .device_add("d0", "c0", engine::backend::BackendOptions::tool(false))
            .unwrap();
        let r = qmp(
            &engine,
            json!({"execute": "block-export-del", "arguments": {"id": "e0"}}),
        )
        .await;
        assert_eq!(desc(&r), "export 'e0' still in use");
        let r = qmp(
            &engine,
            json!({"execute": "block-export-del", "arguments": {"id": "e0", "mode": "bogus"}}),
        )
        .await;
        assert_eq!(desc(&r), "Parameter 'mode' does not accept value 'bogus'");
        engine.take_events();
        qmp_ok(
            &engine,
            json!({"execute": "block-export-del", "arguments": {"id": "e0", "mode": "hard"}}),
        )
        .await;
        assert_eq!(engine.take_events().len(), 1);
        // The client lost its connection and cannot get the export back: EIO.
        let (_, r) = dev.read(0, IoBuf::new(512)).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EIO));
    });
}

#[test]
fn client_open_errors_name_the_socket_and_the_export() {
    run(6, |engine| async move {
        let r = add_client(&engine, "c0", json!({})).await;
        assert_eq!(
            desc(&r),
            "Failed to connect to '/run/nbd.sock': No such file or directory"
        );
        serve_mem(&engine, 1 << 20, true).await;
        let r = add_client(&engine, "c0", json!({"export": "nope"})).await;
        assert_eq!(desc(&r), "Requested export not available");
        assert!(engine.node("c0").is_err(), "a failed open leaves no node");
    });
}

#[test]
fn a_read_only_node_cannot_be_exported_writable() {
    run(7, |engine| async move {
        add_mem(&engine, "m0", json!({"size": 1 << 20, "read-only": true})).await;
        start(&engine).await;
        let r = qmp(
            &engine,
            json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0",
                "node-name": "m0", "writable": true}}),
        )
        .await;
        assert_eq!(desc(&r), "Cannot export read-only node as writable");
        let q = qmp_ok(&engine, json!({"execute": "query-block-exports"})).await;
        assert_eq!(q, json!([]));
    });
}

#[test]
fn storage_daemon_command_line_options_start_the_server_and_add_exports() {
    use engine::qmp::{export_cmdline, nbd_server_cmdline};
    run(8, |engine| async move {
        add_mem(&engine, "m0", json!({"size": 1 << 20})).await;
        let e = export_cmdline(&engine, "type=nbd,id=e0,node-name=m0").unwrap_err();
        assert_eq!(e.message(), "NBD server not running");
        let e = nbd_server_cmdline(&engine, "addr.type=unix").unwrap_err();
        assert_eq!(e.message(), "Parameter 'addr.path' is missing");
        let e = nbd_server_cmdline(&engine, &format!("addr.type=unix,addr.path={SOCK},bogus=1"))
            .unwrap_err();
        assert_eq!(e.message(), "Parameter 'bogus' is unexpected");
        nbd_server_cmdline(
            &engine,
            &format!("addr.type=unix,addr.path={SOCK},max-connections=2"),
        )
        .unwrap();
        let e = export_cmdline(&engine, "type=nbd,id=e0,node-name=m0,bitmap=b").unwrap_err();
        assert_eq!(e.message(), "Parameter 'bitmap' is unexpected");
        let e = export_cmdline(&engine, "type=nbd,id=e0,node-name=m0,bitmaps.0=b").unwrap_err();
        assert_eq!(e.message(), "Bitmap 'b' is not found");
        export_cmdline(&engine, "type=nbd,id=e0,node-name=m0,name=exp,writable=on").unwrap();
        assert_eq!(
            add_client(&engine, "c0", json!({})).await,
            json!({"return": {}})
        );
    });
}
