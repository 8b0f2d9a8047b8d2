//! Named dirty bitmaps: marking in the request path (write, write-zeroes, discard, failed
//! writes, resize), the QMP verbs with the figures qemu-storage-daemon 10.0.2 gives for the
//! same writes, and every QMP refusal leaving bitmaps and their bits unchanged.

use std::rc::Rc;

use crate::support::{self, add_mem, run};

use engine::backend::{BackendOptions, BlockBackend};
use engine::io::{IoBuf, ReqFlags};
use engine::{Engine, qmp};
use serde_json::{Value, json};

async fn exec(engine: &Engine, execute: &str, args: Value) -> Value {
    qmp::execute(engine, &json!({"execute": execute, "arguments": args})).await
}

async fn ok(engine: &Engine, execute: &str, args: Value) -> Value {
    let r = exec(engine, execute, args.clone()).await;
    assert!(r.get("return").is_some(), "{execute} {args}: {r}");
    r["return"].clone()
}

/// The `dirty-bitmaps` of node `node` in `query-named-block-nodes` (`null` when none).
async fn bitmaps_of(engine: &Engine, node: &str) -> Value {
    let nodes = ok(engine, "query-named-block-nodes", json!({})).await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .map(|n| n.get("dirty-bitmaps").cloned().unwrap_or(Value::Null))
        .unwrap()
}

async fn sha(engine: &Engine, node: &str, name: &str) -> String {
    let r = ok(
        engine,
        "x-debug-block-dirty-bitmap-sha256",
        json!({"node": node, "name": name}),
    )
    .await;
    r["sha256"].as_str().unwrap().to_string()
}

/// A 1 MiB testmem node `m` with device `d0` on it.
async fn setup(engine: &Engine, extra: Value) -> Rc<BlockBackend> {
    add_mem(engine, "m", extra).await;
    engine
        .device_add("d0", "m", BackendOptions::guest_device(false, false))
        .unwrap()
}

async fn write(bb: &BlockBackend, offset: u64, len: u64) {
    let (_, r) = bb
        .write(offset, IoBuf::filled(len as usize, 0x5a), ReqFlags::NONE)
        .await;
    r.unwrap();
}

/// The writes of the qemu-storage-daemon session that gave the figures below (1 MiB node,
/// bitmaps `a` at 512 bytes and `b` at 64 KiB): `write 0 1`, `write 70000 200000`,
/// `write -z 600000 4096`.
async fn qsd_writes(bb: &BlockBackend) {
    write(bb, 0, 1).await;
    write(bb, 70000, 200_000).await;
    bb.write_zeroes(600_000, 4096, ReqFlags::NONE)
        .await
        .unwrap();
}

#[test]
fn writes_mark_enabled_bitmaps_as_qemu_counts_and_hashes_them() {
    run(1, |engine| async move {
        let bb = setup(&engine, json!({})).await;
        for (name, g) in [("a", 512), ("b", 65536), ("a2", 512)] {
            ok(
                &engine,
                "block-dirty-bitmap-add",
                json!({"node": "m", "name": name, "granularity": g}),
            )
            .await;
        }
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "m", "name": "off", "disabled": true}),
        )
        .await;
        // Empty bitmaps hash as QEMU's: eight zero bytes for a 16-granule bitmap.
        assert_eq!(
            sha(&engine, "m", "b").await,
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
        qsd_writes(&bb).await;
        let list = bitmaps_of(&engine, "m").await;
        assert_eq!(
            list,
            json!([
                {"name": "off", "recording": false, "persistent": false, "busy": false, "granularity": 65536, "count": 0},
                {"name": "a2", "recording": true, "persistent": false, "busy": false, "granularity": 512, "count": 205824},
                {"name": "b", "recording": true, "persistent": false, "busy": false, "granularity": 65536, "count": 393216},
                {"name": "a", "recording": true, "persistent": false, "busy": false, "granularity": 512, "count": 205824},
            ])
        );
        assert_eq!(
            sha(&engine, "m", "a").await,
            "5da5eff3b6b2cda026b1f28e35716ec2f77e3c8bad288a882165db98be3371ec"
        );
        assert_eq!(
            sha(&engine, "m", "b").await,
            "23753494f06d8cb48dbdffb0f40203fb2b6455bb09b5a6c83620a00b1ceaf9ce"
        );
        // A merge across granularities: every 64 KiB granule of b lands as 128 granules of a2.
        ok(
            &engine,
            "block-dirty-bitmap-merge",
            json!({"node": "m", "target": "a2", "bitmaps": ["b"]}),
        )
        .await;
        assert_eq!(
            sha(&engine, "m", "a2").await,
            "3be4dd7382d3f74681180091d94e352205bd7c395988cfc214303cc098e72708"
        );
        // query-block shows the same list under the device's inserted node.
        let blocks = ok(&engine, "query-block", json!({})).await;
        assert_eq!(blocks[0]["inserted"]["dirty-bitmaps"][2]["name"], "b");
    });
}

#[test]
fn discard_marks_only_where_the_node_unmaps_and_failed_writes_mark_too() {
    run(2, |engine| async move {
        let bb = setup(&engine, json!({"discard": "unmap"})).await;
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "m", "name": "b", "granularity": 4096}),
        )
        .await;
        bb.discard(10_000, 100).await.unwrap();
        let b = engine.node("m").unwrap().bitmaps().find("b").unwrap();
        // Nothing aligned reached the driver, yet the range may read differently: marked.
        assert_eq!(b.count(), 4096);
        support::mem("m").fail_writes.set(Some(engine::Errno::EIO));
        let (_, r) = bb.write(65536, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        assert!(r.is_err());
        assert!(
            b.bits().any_dirty(65536, 512),
            "a failed write may have changed data"
        );
    });
    run(3, |engine| async move {
        let bb = setup(&engine, json!({})).await;
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        bb.discard(0, 1 << 20).await.unwrap();
        let b = engine.node("m").unwrap().bitmaps().find("b").unwrap();
        assert_eq!(b.count(), 0, "discard=ignore never reaches the node");
    });
}

#[test]
fn disabled_bitmaps_do_not_record_and_enable_resumes() {
    run(4, |engine| async move {
        let bb = setup(&engine, json!({})).await;
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "m", "name": "b", "granularity": 512}),
        )
        .await;
        ok(
            &engine,
            "block-dirty-bitmap-disable",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        write(&bb, 0, 4096).await;
        let b = engine.node("m").unwrap().bitmaps().find("b").unwrap();
        assert_eq!(b.count(), 0);
        ok(
            &engine,
            "block-dirty-bitmap-enable",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        write(&bb, 8192, 4096).await;
        assert_eq!(b.count(), 4096);
        ok(
            &engine,
            "block-dirty-bitmap-clear",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        assert_eq!(b.count(), 0);
        ok(
            &engine,
            "block-dirty-bitmap-remove",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        assert_eq!(bitmaps_of(&engine, "m").await, Value::Null);
    });
}

#[test]
fn bitmaps_follow_a_resize() {
    run(5, |engine| async move {
        let bb = setup(&engine, json!({})).await;
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "m", "name": "b"}),
        )
        .await;
        write(&bb, (1 << 20) - 512, 512).await;
        ok(
            &engine,
            "block_resize",
            json!({"node-name": "m", "size": 3 << 20}),
        )
        .await;
        let b = engine.node("m").unwrap().bitmaps().find("b").unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert_eq!(b.count(), 65536);
        write(&bb, (3 << 20) - 512, 512).await;
        assert_eq!(b.count(), 2 * 65536);
        ok(
            &engine,
            "block_resize",
            json!({"node-name": "m", "size": 1 << 20}),
        )
        .await;
        assert_eq!((b.len(), b.count()), (1 << 20, 65536));
    });
}

#[test]
fn a_successor_records_while_a_job_holds_the_bitmap() {
    run(6, |engine| async move {
        let bb = setup(&engine, json!({})).await;
        let b = engine
            .bitmap_add(&engine::engine::BitmapAddArgs {
                node: "m".into(),
                name: "b".into(),
                granularity: Some(4096),
                ..Default::default()
            })
            .unwrap();
        write(&bb, 0, 4096).await;
        b.create_successor().unwrap();
        assert!(b.busy() && b.recording());
        assert_eq!(
            b.create_successor().unwrap_err().message(),
            "Bitmap 'b' is currently in use by another operation and cannot be used"
        );
        write(&bb, 8192, 4096).await;
        assert_eq!(b.count(), 4096, "writes go to the successor");
        b.reclaim().unwrap();
        assert!(!b.busy() && b.recording());
        assert_eq!(b.count(), 8192, "reclaim loses nothing");
        b.create_successor().unwrap();
        write(&bb, 65536, 4096).await;
        b.abdicate().unwrap();
        assert_eq!(
            b.count(),
            4096,
            "abdicate keeps only writes since the job began"
        );
        assert!(b.bits().any_dirty(65536, 1));
        assert_eq!(
            b.abdicate().unwrap_err().message(),
            "Cannot relinquish control if there's no successor present"
        );
    });
}

/// Every bitmap of every node with its bits, to compare before and after a refusal.
async fn state(engine: &Engine) -> Vec<(String, Value, Vec<String>)> {
    let mut out = Vec::new();
    for n in engine.graph().nodes() {
        let list = bitmaps_of(engine, n.name()).await;
        let mut shas = Vec::new();
        for b in n.bitmaps().all() {
            shas.push(sha(engine, n.name(), &b.name()).await);
        }
        out.push((n.name().to_string(), list, shas));
    }
    out
}

/// A qcow2 node `q` over `q.qcow2` and a raw node `r` (1 MiB each, 512 KiB node `s`), each
/// with bitmaps holding bits; `ro` on `q` read-only, `inc` on `q` inconsistent, `busy` on `q`
/// held by a job.
async fn refusal_setup(engine: &Rc<Engine>) {
    support::chain::mkimg(engine, "q.qcow2", None).await;
    engine
        .blockdev_add(json!({"driver": "qcow2", "node-name": "q",
                             "file": {"driver": "file", "filename": "q.qcow2"}}))
        .await
        .unwrap();
    add_mem(engine, "r", json!({"size": 4 << 20})).await;
    add_mem(engine, "s", json!({"size": 512 << 10})).await;
    let bb = engine
        .device_add("d0", "r", BackendOptions::guest_device(false, false))
        .unwrap();
    for (node, name) in [
        ("q", "a"),
        ("r", "a"),
        ("s", "a"),
        ("q", "ro"),
        ("q", "inc"),
        ("q", "busy"),
    ] {
        ok(
            engine,
            "block-dirty-bitmap-add",
            json!({"node": node, "name": name}),
        )
        .await;
    }
    write(&bb, 0, 70000).await;
    let q = engine.node("q").unwrap();
    for b in q.bitmaps().all() {
        b.set_range(65536 * 3, 1);
    }
    q.bitmaps().find("ro").unwrap().set_readonly(true);
    let inc = q.bitmaps().find("inc").unwrap();
    inc.set_persistent(true);
    inc.set_inconsistent();
    q.bitmaps().find("busy").unwrap().set_busy(true);
}

/// Each refusal: (command, arguments, QEMU 10.0.2's class and message).
fn refusals() -> Vec<(&'static str, Value, &'static str)> {
    let long = "x".repeat(1024);
    let over = "x".repeat(1100);
    vec![
        (
            "block-dirty-bitmap-add",
            json!({"node": "nope", "name": "n"}),
            "Cannot find device='nope' nor node-name='nope'",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "nope", "name": ""}),
            "Bitmap name cannot be empty",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "a"}),
            "Bitmap already exists: a",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": 1000}),
            "Granularity must be power of 2 and at least 512",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": 256}),
            "Granularity must be power of 2 and at least 512",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": 0}),
            "Granularity must be power of 2 and at least 512",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": 1u64 << 32}),
            "Parameter 'granularity' expects uint32_t",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": -512}),
            "Parameter 'granularity' expects uint32_t",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "granularity": "512"}),
            "Parameter 'granularity' expects uint64",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "a", "persistent": true}),
            "Can't store persistent bitmaps to r: Operation not supported",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "q", "name": long.clone(), "persistent": true}),
            "LONG-PERSISTENT",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "q", "name": over.clone()}),
            "OVER",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r", "name": "n", "foo": 1}),
            "Parameter 'foo' is unexpected",
        ),
        (
            "block-dirty-bitmap-add",
            json!({"node": "r"}),
            "Parameter 'name' is missing",
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "zz", "name": "a"}),
            "Node 'zz' not found",
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "q", "name": "zz"}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "q", "name": "ro"}),
            "Bitmap 'ro' is readonly and cannot be modified",
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "q", "name": "busy"}),
            "Bitmap 'busy' is currently in use by another operation and cannot be used",
        ),
        (
            "block-dirty-bitmap-clear",
            json!({"node": "q", "name": "zz"}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "block-dirty-bitmap-clear",
            json!({"node": "q", "name": "ro"}),
            "Bitmap 'ro' is readonly and cannot be modified",
        ),
        (
            "block-dirty-bitmap-clear",
            json!({"node": "q", "name": "inc"}),
            "Bitmap 'inc' is inconsistent and cannot be used",
        ),
        (
            "block-dirty-bitmap-clear",
            json!({"node": "q", "name": "busy"}),
            "Bitmap 'busy' is currently in use by another operation and cannot be used",
        ),
        (
            "block-dirty-bitmap-enable",
            json!({"node": "q", "name": "inc"}),
            "Bitmap 'inc' is inconsistent and cannot be used",
        ),
        (
            "block-dirty-bitmap-enable",
            json!({"node": "q", "name": "busy"}),
            "Bitmap 'busy' is currently in use by another operation and cannot be used",
        ),
        (
            "block-dirty-bitmap-disable",
            json!({"node": "q", "name": "busy"}),
            "Bitmap 'busy' is currently in use by another operation and cannot be used",
        ),
        (
            "block-dirty-bitmap-disable",
            json!({"node": "q", "name": "zz"}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "x-debug-block-dirty-bitmap-sha256",
            json!({"node": "zz", "name": "a"}),
            "Node 'zz' not found",
        ),
        (
            "x-debug-block-dirty-bitmap-sha256",
            json!({"node": "q", "name": "zz"}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "nope", "target": "a", "bitmaps": ["a"]}),
            "Node 'nope' not found",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "zz", "bitmaps": [{"node": "nope", "name": "x"}]}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": ["ro", "zz"]}),
            "Dirty bitmap 'zz' not found",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": [{"node": "nope", "name": "x"}]}),
            "Node 'nope' not found",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "ro", "bitmaps": ["a"]}),
            "Bitmap 'ro' is readonly and cannot be modified",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "inc", "bitmaps": ["a"]}),
            "Bitmap 'inc' is inconsistent and cannot be used",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": ["ro", "inc"]}),
            "Bitmap 'inc' is inconsistent and cannot be used",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": ["busy"]}),
            "Bitmap 'busy' is currently in use by another operation and cannot be used",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": [{"node": "s", "name": "a"}]}),
            "Bitmaps are of different sizes (destination size is 4194304, source size is 524288) and can't be merged",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": "a"}),
            "Invalid parameter type for 'bitmaps', expected: array",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": [5]}),
            "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": [{"node": "q"}]}),
            "Parameter 'bitmaps[0].name' is missing",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": [{"node": "q", "name": "ro", "x": 1}]}),
            "Parameter 'bitmaps[0].x' is unexpected",
        ),
        (
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a"}),
            "Parameter 'bitmaps' is missing",
        ),
    ]
}

#[test]
fn every_qmp_refusal_has_qemus_message_and_changes_nothing() {
    run(7, |engine| async move {
        refusal_setup(&engine).await;
        let long = "x".repeat(1024);
        let over = "x".repeat(1100);
        for (cmd, args, want) in refusals() {
            let want = match want {
                "LONG-PERSISTENT" => format!(
                    "Can't make bitmap '{long}' persistent in 'q': Name length exceeds maximum \
                     (1023 characters)"
                ),
                "OVER" => format!("Bitmap name too long: {over}"),
                w => w.to_string(),
            };
            let before = state(&engine).await;
            let r = exec(&engine, cmd, args.clone()).await;
            assert_eq!(
                (r["error"]["class"].as_str(), r["error"]["desc"].as_str()),
                (Some("GenericError"), Some(want.as_str())),
                "{cmd} {args}"
            );
            assert_eq!(state(&engine).await, before, "{cmd} {args} changed state");
        }
    });
}

#[test]
fn allowed_uses_of_read_only_and_inconsistent_bitmaps() {
    run(8, |engine| async move {
        refusal_setup(&engine).await;
        // A read-only bitmap may flip recording and be merged from; an inconsistent one may be
        // removed (QEMU's way out of it) and hashed.
        ok(
            &engine,
            "block-dirty-bitmap-disable",
            json!({"node": "q", "name": "ro"}),
        )
        .await;
        ok(
            &engine,
            "block-dirty-bitmap-enable",
            json!({"node": "q", "name": "ro"}),
        )
        .await;
        ok(
            &engine,
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": ["ro", {"node": "r", "name": "a"}]}),
        )
        .await;
        let inc = bitmaps_of(&engine, "q").await;
        assert_eq!(inc[1]["name"], "inc");
        assert_eq!(inc[1]["inconsistent"], true);
        assert_eq!(inc[1]["recording"], false);
        sha(&engine, "q", "inc").await;
        ok(
            &engine,
            "block-dirty-bitmap-remove",
            json!({"node": "q", "name": "inc"}),
        )
        .await;
        // Persistent on qcow2, and by device name; an empty merge list changes nothing.
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "q", "name": "p", "persistent": true}),
        )
        .await;
        ok(
            &engine,
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "dev"}),
        )
        .await;
        ok(
            &engine,
            "block-dirty-bitmap-merge",
            json!({"node": "q", "target": "a", "bitmaps": []}),
        )
        .await;
        let q = bitmaps_of(&engine, "q").await;
        assert_eq!(q[0]["persistent"], true);
        assert!(engine.node("r").unwrap().bitmaps().find("dev").is_some());
    });
}

/// Create `file` as a 4 MiB qcow2 image with `cluster_size`, open as node `node`.
async fn qcow2_node(engine: &Engine, file: &str, node: &str, cluster_size: u64) {
    let opts = engine::drivers::qcow2::CreateOptions {
        size: 4 << 20,
        cluster_size,
        ..Default::default()
    };
    support::chain::mkimg_with(engine, file, &opts).await;
    engine
        .blockdev_add(json!({"driver": "qcow2", "node-name": node,
                             "file": {"driver": "file", "filename": file}}))
        .await
        .unwrap();
}

#[test]
fn default_granularity_follows_the_cluster_size_clamped_to_4k_64k() {
    // qemu-storage-daemon 10.0.2: 512-byte clusters give 4 KiB, 2 MiB clusters 64 KiB, a
    // node without clusters 64 KiB.
    run(9, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        for (file, node, cs) in [
            ("c512.qcow2", "c512", 512),
            ("c2m.qcow2", "c2m", 2 << 20),
            ("c64k.qcow2", "c64k", 65536),
        ] {
            qcow2_node(&engine, file, node, cs).await;
        }
        for (node, want) in [
            ("m", 65536),
            ("c512", 4096),
            ("c2m", 65536),
            ("c64k", 65536),
        ] {
            ok(
                &engine,
                "block-dirty-bitmap-add",
                json!({"node": node, "name": "d"}),
            )
            .await;
            assert_eq!(
                bitmaps_of(&engine, node).await[0]["granularity"],
                want,
                "{node}"
            );
        }
    });
}
