//! Read-only nodes that block-stream and block-commit write: the job reopens them read-write
//! when it is created and read-only again when it ends, as QEMU does (backing images opened from
//! an image header are read-only). A reopen that fails (a host file that cannot be opened for
//! writing, a driver that cannot reopen) refuses the command and changes nothing.

use crate::support;

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::drivers::qcow2::{CreateOptions, check_node, create};
use engine::graph::Node;
use engine::io::{IoBuf, ReqFlags};
use serde_json::{Value, json};
use support::chain::{SIZE, header_backing, mkimg};
use support::run;

async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

/// (file, offset, len, pattern) of the four layers, bottom first.
const LAYERS: [(&str, u64, u64, u8); 4] = [
    ("l0.qcow2", 0, 1 << 20, 0x10),
    ("l1.qcow2", 1 << 20, 1 << 20, 0x11),
    ("l2.qcow2", 2 << 20, 512 << 10, 0x12),
    ("l3.qcow2", 3 << 20, 512 << 10, 0x13),
];

/// Create `l0 <- l1 <- l2 <- l3` (backing file names in the headers), each layer holding its
/// pattern, then open only `l3` as node "top" with device `drive0`: the layers below come from
/// the headers, read-only. Returns the guest view.
async fn chain_from_headers(engine: &Rc<Engine>) -> Vec<u8> {
    chain_from_headers_with(engine, false).await
}

/// Create `file` with lazy refcounts (qcow2 v3), no backing file.
async fn mkimg_lazy(engine: &Engine, file: &str) {
    let opts = engine::env::OpenOptions {
        write: true,
        create: true,
        ..Default::default()
    };
    drop(engine.env().fs().open(file, opts).unwrap());
    engine
        .blockdev_add(json!({"driver": "file", "node-name": "mk", "filename": file}))
        .await
        .unwrap();
    let bb = engine
        .device_add("mkdev", "mk", BackendOptions::tool(false))
        .unwrap();
    let opts = CreateOptions {
        size: SIZE,
        lazy_refcounts: true,
        ..CreateOptions::default()
    };
    create(&bb.root().unwrap(), &opts).await.unwrap();
    engine.device_del("mkdev").await.unwrap();
    engine.blockdev_del("mk").await.unwrap();
}

/// The incompatible-features word of the header of `file`.
async fn header_incompat(engine: &Engine, file: &str) -> u64 {
    let f = engine
        .env()
        .fs()
        .open(file, engine::env::OpenOptions::default())
        .unwrap();
    let (buf, r) = f.read_at(IoBuf::new(8), 72).await;
    r.unwrap();
    u64::from_be_bytes(buf.as_slice().try_into().unwrap())
}

/// As [`chain_from_headers`]; with `lazy_base` the bottom image uses lazy refcounts.
async fn chain_from_headers_with(engine: &Rc<Engine>, lazy_base: bool) -> Vec<u8> {
    let mut view = vec![0u8; SIZE as usize];
    let mut below: Option<&str> = None;
    for (file, off, len, pat) in LAYERS {
        if lazy_base && below.is_none() {
            mkimg_lazy(engine, file).await;
        } else {
            mkimg(engine, file, below).await;
        }
        engine
            .blockdev_add(json!({"driver": "qcow2", "node-name": "w", "backing": null,
                                 "file": {"driver": "file", "filename": file}}))
            .await
            .unwrap();
        let bb = engine
            .device_add("fill", "w", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb
            .write(off, IoBuf::filled(len as usize, pat), ReqFlags::NONE)
            .await;
        r.unwrap();
        bb.flush().await.unwrap();
        engine.device_del("fill").await.unwrap();
        engine.blockdev_del("w").await.unwrap();
        view[off as usize..(off + len) as usize].fill(pat);
        below = Some(file);
    }
    engine
        .blockdev_add(json!({"driver": "qcow2", "node-name": "top",
                             "file": {"driver": "file", "filename": "l3.qcow2"}}))
        .await
        .unwrap();
    engine
        .device_add("drive0", "top", BackendOptions::guest_device(false, false))
        .unwrap();
    view
}

/// The node `depth` images below `top` in the chain.
fn below(engine: &Engine, depth: usize) -> Rc<Node> {
    let mut n = engine.node("top").unwrap();
    for _ in 0..depth {
        n = n.backing().unwrap().child_node();
    }
    n
}

/// The node and its file node are read-only, and nobody holds write or resize on them.
fn assert_read_only(node: &Rc<Node>) {
    let file = node.child("file").unwrap().child_node();
    for n in [node, &file] {
        assert!(n.is_read_only(), "{n:?} should be read-only again");
        let (perm, _) = n.cumulative_perms();
        assert!(
            !perm.intersects(engine::types::Perms::WRITE | engine::types::Perms::RESIZE),
            "{n:?} still taken for writing: {perm:?}"
        );
    }
}

async fn read_node(engine: &Engine, node: &Rc<Node>, off: u64, len: u64) -> Vec<u8> {
    let bb = engine
        .device_add("rd", node.name(), BackendOptions::tool(true))
        .unwrap();
    let (buf, r) = bb.read(off, IoBuf::new(len as usize)).await;
    r.unwrap();
    engine.device_del("rd").await.unwrap();
    buf.as_slice().to_vec()
}

async fn read_dev(engine: &Engine) -> Vec<u8> {
    let bb = engine.backend("drive0").unwrap();
    let (buf, r) = bb.read(0, IoBuf::new(SIZE as usize)).await;
    r.unwrap();
    buf.as_slice().to_vec()
}

async fn run_job(engine: &Engine, cmd: Value) {
    let r = qmp(engine, cmd.clone()).await;
    assert!(r.get("error").is_none(), "{cmd}: {r}");
    let job = engine.jobs().get("j").expect("job created");
    job.wait_concluded().await;
    let events: Vec<String> = engine
        .take_events()
        .into_iter()
        .filter(|e| e.name == "BLOCK_JOB_COMPLETED")
        .map(|e| e.data.to_string())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!events[0].contains("\"error\""), "{events:?}");
}

#[test]
fn commit_into_a_base_opened_read_only_from_the_header() {
    for seed in 0..3 {
        run(seed, |engine| async move {
            let view = chain_from_headers(&engine).await;
            let (l0, l1, l2) = (below(&engine, 3), below(&engine, 2), below(&engine, 1));
            for n in [&l0, &l1, &l2] {
                assert!(
                    n.is_read_only(),
                    "{n:?} opened from the header is read-only"
                );
            }
            engine.take_events();
            // Commit l1 into l0: the base l0 is written and the overlay l2's header rewritten,
            // both read-only images.
            run_job(
                &engine,
                json!({"execute": "block-commit", "arguments": {"device": "drive0",
                       "job-id": "j", "top-node": l1.name(), "base-node": l0.name()}}),
            )
            .await;
            assert!(Rc::ptr_eq(&l2.backing().unwrap().child_node(), &l0));
            assert_eq!(header_backing(&engine, "l2.qcow2").await, json!("l0.qcow2"));
            // The data landed in the base, and both images are read-only again.
            let (o, n, p) = (LAYERS[1].1, LAYERS[1].2, LAYERS[1].3);
            assert_eq!(read_node(&engine, &l0, o, n).await, vec![p; n as usize]);
            assert_read_only(&l0);
            assert_read_only(&l2);
            assert_eq!(read_dev(&engine).await, view);
            let r = qmp(&engine, json!({"execute": "query-named-block-nodes"})).await;
            let ro: Vec<(String, bool)> = r["return"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["drv"] == "qcow2")
                .map(|n| {
                    (
                        n["node-name"].as_str().unwrap().to_string(),
                        n["ro"].as_bool().unwrap(),
                    )
                })
                .collect();
            let want = |n: &Rc<Node>, ro| (n.name().to_string(), ro);
            for entry in [want(&l0, true), want(&l2, true), ("top".to_string(), false)] {
                assert!(ro.contains(&entry), "{entry:?} not in {ro:?}");
            }
        });
    }
}

#[test]
fn stream_into_a_read_only_intermediate_image() {
    run(7, |engine| async move {
        let view = chain_from_headers(&engine).await;
        let (l0, l2) = (below(&engine, 3), below(&engine, 1));
        assert!(l2.is_read_only());
        run_job(
            &engine,
            json!({"execute": "block-stream", "arguments": {"device": l2.name(),
                   "job-id": "j", "base-node": l0.name()}}),
        )
        .await;
        assert!(Rc::ptr_eq(&l2.backing().unwrap().child_node(), &l0));
        assert_eq!(header_backing(&engine, "l2.qcow2").await, json!("l0.qcow2"));
        let (o, n, p) = (LAYERS[1].1, LAYERS[1].2, LAYERS[1].3);
        assert_eq!(read_node(&engine, &l2, o, n).await, vec![p; n as usize]);
        assert_read_only(&l2);
        assert_eq!(read_dev(&engine).await, view);
    });
}

#[test]
fn a_lazy_refcounts_base_is_written_back_and_marked_clean_when_read_only_again() {
    run(5, |engine| async move {
        let view = chain_from_headers_with(&engine, true).await;
        let (l0, l1) = (below(&engine, 3), below(&engine, 2));
        assert_eq!(header_incompat(&engine, "l0.qcow2").await & 1, 0);
        run_job(
            &engine,
            json!({"execute": "block-commit", "arguments": {"device": "drive0",
                   "job-id": "j", "top-node": l1.name(), "base-node": l0.name()}}),
        )
        .await;
        assert_read_only(&l0);
        // The commit's writes set the dirty bit; the switch back to read-only wrote every
        // cached table back and cleared it, so the image is consistent as it is on disk.
        assert_eq!(header_incompat(&engine, "l0.qcow2").await & 1, 0);
        let report = check_node(&l0, None).await.unwrap();
        assert_eq!(
            (report.corruptions, report.leaks, report.check_errors),
            (0, 0, 0),
            "{report:?}"
        );
        assert_eq!(read_dev(&engine).await, view);
    });
}

async fn snapshot(engine: &Engine) -> (Value, Value, Value) {
    (
        qmp(engine, json!({"execute": "x-debug-query-block-graph"})).await,
        qmp(engine, json!({"execute": "query-named-block-nodes"})).await,
        qmp(engine, json!({"execute": "query-jobs"})).await,
    )
}

async fn refused(engine: &Engine, cmd: Value, desc: &str) {
    let before = snapshot(engine).await;
    let r = qmp(engine, cmd.clone()).await;
    assert_eq!(
        r["error"]["desc"].as_str(),
        Some(desc),
        "{cmd}: {r} (wanted {desc})"
    );
    assert_eq!(snapshot(engine).await, before, "{cmd} changed the graph");
}

#[test]
fn a_base_file_that_cannot_be_opened_for_writing_refuses_the_commit() {
    run(2, |engine| async move {
        let view = chain_from_headers(&engine).await;
        let (l0, l1) = (below(&engine, 3), below(&engine, 2));
        // The host file went away under the open image: it cannot be reopened for writing.
        engine.env().fs().remove("l0.qcow2").unwrap();
        refused(
            &engine,
            json!({"execute": "block-commit", "arguments": {"device": "drive0",
                   "job-id": "j", "top-node": l1.name(), "base-node": l0.name()}}),
            // qemu-storage-daemon 10.0.2 gives exactly this for a base whose file is gone.
            "Could not open 'l0.qcow2': No such file or directory",
        )
        .await;
        assert_read_only(&l0);
        assert!(engine.jobs().get("j").is_none());
        assert_eq!(read_dev(&engine).await, view);
    });
}

#[test]
fn a_driver_that_cannot_reopen_refuses_the_commit() {
    run(4, |engine| async move {
        mkimg(&engine, "b.qcow2", None).await;
        mkimg(&engine, "m.qcow2", Some("b.qcow2")).await;
        mkimg(&engine, "t.qcow2", Some("m.qcow2")).await;
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "b", "read-only": true,
                "backing": null,
                "file": {"driver": "blkdebug", "node-name": "dbg", "read-only": true,
                         "image": {"driver": "file", "filename": "b.qcow2",
                                   "read-only": true}}}),
            )
            .await
            .unwrap();
        for (name, file, backing) in [("m", "m.qcow2", "b"), ("t", "t.qcow2", "m")] {
            engine
                .blockdev_add(
                    json!({"driver": "qcow2", "node-name": name, "backing": backing,
                                     "file": {"driver": "file", "filename": file}}),
                )
                .await
                .unwrap();
        }
        refused(
            &engine,
            json!({"execute": "block-commit", "arguments": {"device": "t",
                   "job-id": "j", "top-node": "m", "base-node": "b"}}),
            "Block format 'blkdebug' used by node 'dbg' does not support reopening files",
        )
        .await;
        assert!(engine.node("b").unwrap().is_read_only());
        assert!(engine.node("dbg").unwrap().is_read_only());
    });
}
