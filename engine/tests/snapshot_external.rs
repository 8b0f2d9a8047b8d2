//! External snapshots (`blockdev-snapshot-sync`, `blockdev-snapshot`) and `change-backing-file`
//! through QMP on the simulator's files: the overlay goes on top of the chain (the device moves
//! to it, the old node becomes read-only, the overlay's header names the old image), and each
//! of QEMU's refusals (class and message from qemu-storage-daemon 10.0.2) leaves the graph, the
//! image files and the file system exactly as they were. One test per refusal.

use crate::support;

use engine::Engine;
use engine::io::{IoBuf, ReqFlags};
use serde_json::{Value, json};
use support::chain::{build, chain_names, header_backing, mkimg, read_dev};
use support::{host_files, merge_args, qmp_ok, refused, run};

const G: &str = "GenericError";
const FILES: [&str; 3] = ["base.qcow2", "mid.qcow2", "top.qcow2"];

fn sync(extra: Value) -> Value {
    let args = json!({"device": "drive0", "snapshot-file": "s1.qcow2",
                      "snapshot-node-name": "s1", "format": "qcow2"});
    json!({"execute": "blockdev-snapshot-sync", "arguments": merge_args(args, extra)})
}

/// `cmd` is refused with `desc`; graph, jobs, images and the file s1.qcow2 are unchanged.
fn case(setup_extra: fn(&Engine) -> Vec<Value>, cmd: Value, desc: &'static str) {
    run(1, move |engine| async move {
        build(&engine).await;
        make_ov(&engine).await;
        for c in setup_extra(&engine) {
            qmp_ok(&engine, c).await;
        }
        let names = [&FILES[..], &["s1.qcow2", "ov.qcow2"]].concat();
        let before = host_files(&engine, &names).await;
        refused(&engine, cmd, G, desc).await;
        assert_eq!(host_files(&engine, &names).await, before, "files changed");
    });
}

fn nothing(_: &Engine) -> Vec<Value> {
    Vec::new()
}

macro_rules! refusal {
    ($name:ident, $setup:expr, $cmd:expr, $desc:expr) => {
        #[test]
        fn $name() {
            case($setup, $cmd, $desc);
        }
    };
}

refusal!(
    sync_unknown_device,
    nothing,
    sync(json!({"device": "nope"})),
    "Cannot find device='nope' nor node-name=''"
);
refusal!(
    sync_node_name_without_overlay_name,
    nothing,
    sync(json!({"device": null, "node-name": "top", "snapshot-node-name": null})),
    "New overlay node-name missing"
);
refusal!(
    sync_overlay_name_in_use,
    nothing,
    sync(json!({"snapshot-node-name": "mid"})),
    "New overlay node-name already in use"
);
refusal!(
    sync_raw_overlay,
    nothing,
    sync(json!({"format": "raw"})),
    "Backing file not supported for file format 'raw'"
);
refusal!(
    sync_unknown_format,
    nothing,
    sync(json!({"format": "vmdkx"})),
    "Unknown file format 'vmdkx'"
);
refusal!(
    sync_existing_missing_file,
    nothing,
    sync(json!({"mode": "existing"})),
    "Could not open 's1.qcow2': No such file or directory"
);
refusal!(
    sync_bad_mode,
    nothing,
    sync(json!({"mode": "bogus"})),
    "Parameter 'mode' does not accept value 'bogus'"
);
refusal!(
    sync_on_a_backing_node,
    nothing,
    sync(json!({"device": null, "node-name": "mid"})),
    "Node 'mid' is busy: node is used as backing hd of 'top'"
);

fn snap(node: &str, overlay: &str) -> Value {
    json!({"execute": "blockdev-snapshot", "arguments": {"node": node, "overlay": overlay}})
}

/// A free qcow2 node `ov` on ov.qcow2 (no backing).
fn free_overlay(_: &Engine) -> Vec<Value> {
    vec![
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "ov",
        "backing": null, "file": {"driver": "file", "filename": "ov.qcow2"}}}),
    ]
}

refusal!(
    snapshot_unknown_node,
    nothing,
    snap("nope", "top"),
    "Cannot find device='nope' nor node-name='nope'"
);
refusal!(
    snapshot_unknown_overlay,
    nothing,
    snap("top", "nope"),
    "Cannot find device='nope' nor node-name='nope'"
);
refusal!(
    snapshot_overlay_in_use,
    nothing,
    snap("top", "top"),
    "The overlay is already in use"
);
refusal!(
    snapshot_overlay_with_backing,
    |_| vec![
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
        "node-name": "ov", "backing": "mid",
        "file": {"driver": "file", "filename": "ov.qcow2"}}})
    ],
    snap("top", "ov"),
    "The overlay already has a backing image"
);
refusal!(
    snapshot_overlay_without_backing_support,
    |_| vec![
        json!({"execute": "blockdev-add", "arguments": {"driver": "raw",
        "node-name": "ov", "file": {"driver": "file", "filename": "ov.qcow2"}}})
    ],
    snap("top", "ov"),
    "The overlay does not support backing images"
);

async fn make_ov(engine: &Engine) {
    mkimg(engine, "ov.qcow2", None).await;
}

#[test]
fn sync_snapshot_appends_an_overlay_above_the_device_node() {
    run(3, |engine| async move {
        let view = build(&engine).await;
        qmp_ok(&engine, sync(json!({}))).await;
        assert_eq!(chain_names(&engine, "s1"), ["s1", "top", "mid", "base"]);
        let blk = qmp_ok(&engine, json!({"execute": "query-block"})).await;
        assert_eq!(blk[0]["inserted"]["node-name"], "s1");
        assert_eq!(
            header_backing(&engine, "s1.qcow2").await,
            json!("top.qcow2")
        );
        assert!(engine.node("top").unwrap().is_read_only());
        assert_eq!(read_dev(&engine, "drive0").await, view);
        // A guest write lands in the overlay; the old image keeps its data.
        let top_before = host_files(&engine, &["top.qcow2"]).await;
        let bb = engine.backend("drive0").unwrap();
        let r = bb
            .write(0, IoBuf::filled(65536, 0x77), ReqFlags::NONE)
            .await;
        r.1.unwrap();
        bb.flush().await.unwrap();
        assert_eq!(host_files(&engine, &["top.qcow2"]).await, top_before);
        let mut expect = view.clone();
        expect[..65536].fill(0x77);
        assert_eq!(read_dev(&engine, "drive0").await, expect);
    });
}

#[test]
fn snapshot_of_an_existing_overlay_node() {
    run(4, |engine| async move {
        let view = build(&engine).await;
        make_ov(&engine).await;
        for c in free_overlay(&engine) {
            qmp_ok(&engine, c).await;
        }
        qmp_ok(&engine, snap("top", "ov")).await;
        assert_eq!(chain_names(&engine, "ov"), ["ov", "top", "mid", "base"]);
        assert_eq!(read_dev(&engine, "drive0").await, view);
        // The overlay stays the monitor's: not deletable while the device uses it.
        let r = support::qmp(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "ov"}}),
        )
        .await;
        assert!(r.get("error").is_some(), "{r}");
    });
}

#[test]
fn snapshot_sync_existing_mode_opens_without_its_recorded_backing() {
    run(5, |engine| async move {
        let view = build(&engine).await;
        // The image names some other backing file; mode=existing ignores it.
        mkimg(&engine, "s1.qcow2", Some("base.qcow2")).await;
        qmp_ok(&engine, sync(json!({"mode": "existing"}))).await;
        assert_eq!(chain_names(&engine, "s1"), ["s1", "top", "mid", "base"]);
        assert_eq!(read_dev(&engine, "drive0").await, view);
    });
}

fn cbf(device: &str, image: &str, file: &str) -> Value {
    json!({"execute": "change-backing-file", "arguments": {"device": device,
        "image-node-name": image, "backing-file": file}})
}

#[test]
fn change_backing_file_rewrites_a_read_only_node_header_only() {
    run(6, |engine| async move {
        let view = build(&engine).await;
        qmp_ok(&engine, sync(json!({}))).await;
        let graph = engine.block_graph();
        qmp_ok(&engine, cbf("drive0", "top", "elsewhere.qcow2")).await;
        assert_eq!(
            header_backing(&engine, "top.qcow2").await,
            json!("elsewhere.qcow2")
        );
        assert!(
            engine.node("top").unwrap().is_read_only(),
            "read-only again"
        );
        assert_eq!(engine.block_graph(), graph, "the graph is not changed");
        assert_eq!(read_dev(&engine, "drive0").await, view);
    });
}

refusal!(
    change_backing_unknown_device,
    nothing,
    cbf("nope", "top", "x"),
    "Cannot find device='nope' nor node-name='nope'"
);
refusal!(
    change_backing_unknown_image,
    nothing,
    cbf("drive0", "nope", "x"),
    "Cannot find device='' nor node-name='nope'"
);
refusal!(
    change_backing_without_backing,
    nothing,
    cbf("drive0", "base", "x"),
    "not allowing backing file change on an image without a backing file"
);
refusal!(
    change_backing_not_in_chain,
    |_| vec![
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
        "node-name": "other", "backing": "base",
        "file": {"driver": "file", "filename": "ov.qcow2"}}})
    ],
    cbf("drive0", "other", "x"),
    "'drive0' and image file are not in the same chain"
);

#[test]
fn an_overlay_over_a_blkdebug_file_reopens_with_its_backing() {
    // The old node's file is a blkdebug filter: the overlay's header names it with QEMU's
    // protocol form (`blkdebug::top.qcow2`), which must open again (a restart, qemu-img).
    run(7, |engine| async move {
        mkimg(&engine, "top.qcow2", None).await;
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
                "node-name": "top", "file": {"driver": "blkdebug",
                "image": {"driver": "file", "filename": "top.qcow2"}}}}),
        )
        .await;
        engine
            .device_add(
                "drive0",
                "top",
                engine::backend::BackendOptions::guest_device(false, false),
            )
            .unwrap();
        qmp_ok(&engine, sync(json!({}))).await;
        assert_eq!(
            header_backing(&engine, "s1.qcow2").await,
            json!("blkdebug::top.qcow2")
        );
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
                "node-name": "again", "read-only": true,
                "file": {"driver": "file", "filename": "s1.qcow2"}}}),
        )
        .await;
        let again = engine.node("again").unwrap();
        let backing = again.backing().unwrap().child_node();
        assert_eq!(backing.driver_name(), "qcow2");
    });
}
