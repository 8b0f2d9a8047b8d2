//! Live named bitmaps and the persistent bitmaps of a qcow2 image, connected as QEMU connects
//! them: loaded at open (in use on a writable node, inconsistent when found in use, read-only
//! on a read-only node), stored at close and at a switch to read-only, marked in use again at a
//! switch to read-write; `block-dirty-bitmap-add persistent=true` stored at close and `-remove`
//! removing from the image at once. Interop: a bitmap blk adds and fills is listed by
//! `qemu-img info` and hashed like blk by qemu-storage-daemon; an image a killed
//! qemu-storage-daemon left with an in-use bitmap loads it inconsistent.

use std::rc::Rc;

use crate::qcow2_bitmaps::{
    DISK, assert_check, bits, bm, qemu_bitmaps, qsd_sha256, qsd_spawn, sim_image, with_node,
};
use crate::qcow2_support::*;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::engine::BitmapAddArgs;
use engine::graph::{Node, reopen_set_read_only};
use engine::io::{IoBuf, ReqFlags};
use sim::{Sim, View};

/// Run `f` on the engine, device and node "q" of qcow2 `file` (read-only with `ro`), closing
/// the node after.
fn with_q<T>(
    sim: &Sim,
    file: &str,
    ro: bool,
    f: impl AsyncFnOnce(Rc<Engine>, Rc<BlockBackend>, Rc<Node>) -> T,
) -> T {
    let engine = engine_of(sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", file, ro).await.unwrap();
        let out = f(engine.clone(), bb, engine.node("q").unwrap()).await;
        engine.device_del("dev-q").await.unwrap();
        engine.blockdev_del("q").await.unwrap();
        out
    })
    .unwrap()
}

/// The image's stored bitmaps: (name, in use, enabled).
async fn stored(node: &Node) -> Vec<(String, bool, bool)> {
    let ops = node.driver().format_ops().unwrap();
    ops.stored_bitmaps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.in_use, s.auto))
        .collect()
}

/// The live bitmaps: (name, persistent, recording, inconsistent, read-only).
fn live(node: &Node) -> Vec<(String, bool, bool, bool, bool)> {
    node.bitmaps()
        .all()
        .iter()
        .map(|b| {
            let flags = (
                b.persistent(),
                b.recording(),
                b.inconsistent(),
                b.readonly(),
            );
            (b.name(), flags.0, flags.1, flags.2, flags.3)
        })
        .collect()
}

fn s(name: &str) -> String {
    name.to_string()
}

async fn write(bb: &BlockBackend, offset: u64, len: usize) {
    let (_, r) = bb
        .write(offset, IoBuf::from_slice(&vec![7u8; len]), ReqFlags::NONE)
        .await;
    r.unwrap();
}

/// An image holding bitmaps "on" (enabled, granule 1 set) and "off" (disabled, 7..9).
fn image_on_off() -> Sim {
    let sim = sim_image(65536);
    let n = DISK / 65536;
    let (on, off) = (bits(n, &[(1, 2)]), bits(n, &[(7, 9)]));
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let set = [bm("on", 65536, true, &on), bm("off", 65536, false, &off)];
        ops.store_bitmaps(&set).await.unwrap();
    });
    sim
}

#[test]
fn read_write_open_marks_in_use_and_close_stores_the_live_bits() {
    let sim = image_on_off();
    let n = DISK / 65536;
    with_q(&sim, "img", false, async |_e, bb, node| {
        // The directory's last entry is the newest: listed first, as QEMU lists them.
        assert_eq!(
            live(&node),
            [
                (s("off"), true, false, false, false),
                (s("on"), true, true, false, false)
            ]
        );
        assert_eq!(
            stored(&node).await,
            [(s("on"), true, true), (s("off"), true, false)],
            "in use from the open on"
        );
        write(&bb, 5 * 65536, 512).await;
        let on = node.bitmaps().find("on").unwrap();
        assert_eq!(on.bits().bits(), &bits(n, &[(1, 2), (5, 6)]));
    });
    with_q(&sim, "img", true, async |_e, _bb, node| {
        assert_eq!(
            stored(&node).await,
            [(s("on"), false, true), (s("off"), false, false)],
            "stored clean at close"
        );
        let ops = node.driver().format_ops().unwrap();
        assert_eq!(
            ops.load_bitmap("on").await.unwrap(),
            bits(n, &[(1, 2), (5, 6)])
        );
        assert_eq!(ops.load_bitmap("off").await.unwrap(), bits(n, &[(7, 9)]));
        assert!(
            live(&node).iter().all(|b| b.4),
            "read-only on a read-only node"
        );
        assert_check(&node, 0).await;
    });
    // A read-only open changed nothing.
    with_q(&sim, "img", true, async |_e, _bb, node| {
        assert!(stored(&node).await.iter().all(|b| !b.1));
    });
}

#[test]
fn a_bitmap_found_in_use_loads_inconsistent_until_removed() {
    let sim = image_on_off();
    // What a crash leaves: the bitmaps marked in use, never stored again.
    with_node(&sim, "img", false, async |_bb, node| {
        node.bitmaps().remove("on");
        node.bitmaps().remove("off");
        let ops = node.driver().format_ops().unwrap();
        ops.mark_bitmaps_in_use().await.unwrap();
    });
    with_q(&sim, "img", false, async |_e, bb, node| {
        assert_eq!(
            live(&node),
            [
                (s("off"), true, false, true, false),
                (s("on"), true, false, true, false)
            ]
        );
        let on = node.bitmaps().find("on").unwrap();
        assert_eq!(on.count(), 0, "its bits are not even read");
        write(&bb, 0, 512).await;
        assert_eq!(on.count(), 0, "an inconsistent bitmap never records");
    });
    with_q(&sim, "img", false, async |engine, _bb, node| {
        assert_eq!(
            stored(&node).await,
            [(s("on"), true, true), (s("off"), true, false)],
            "a close does not make it consistent"
        );
        engine.bitmap_remove("q", "on").await.unwrap();
        assert_eq!(
            stored(&node).await,
            [(s("off"), true, false)],
            "removed at once"
        );
        assert_check(&node, 0).await;
    });
}

#[test]
fn added_persistent_bitmaps_are_stored_at_close_and_removed_at_once() {
    let sim = sim_image(65536);
    with_q(&sim, "img", false, async |engine, bb, node| {
        let args = BitmapAddArgs {
            node: s("q"),
            name: s("p"),
            granularity: Some(4096),
            persistent: true,
            disabled: false,
        };
        engine.bitmap_add(&args).unwrap();
        assert!(
            stored(&node).await.is_empty(),
            "stored when the node closes"
        );
        write(&bb, 1 << 20, 8192).await;
    });
    with_q(&sim, "img", false, async |engine, _bb, node| {
        assert_eq!(stored(&node).await, [(s("p"), true, true)]);
        let p = node.bitmaps().find("p").unwrap();
        assert_eq!(p.bits().bits(), &bits(DISK / 4096, &[(256, 258)]));
        engine.bitmap_remove("q", "p").await.unwrap();
        assert!(stored(&node).await.is_empty());
    });
    with_q(&sim, "img", true, async |_e, _bb, node| {
        assert!(node.bitmaps().all().is_empty());
        assert_check(&node, 0).await;
    });
}

#[test]
fn reopen_read_only_stores_and_read_write_marks_in_use_again() {
    let sim = image_on_off();
    let n = DISK / 65536;
    with_q(&sim, "img", false, async |engine, bb, node| {
        write(&bb, 3 * 65536, 512).await;
        // The writer goes first (a read-only node refuses it), and comes back at the end.
        engine.device_del("dev-q").await.unwrap();
        reopen_set_read_only(&node, true).await.unwrap();
        assert_eq!(
            stored(&node).await,
            [(s("on"), false, true), (s("off"), false, false)]
        );
        let ops = node.driver().format_ops().unwrap();
        let want = bits(n, &[(1, 2), (3, 4)]);
        assert_eq!(ops.load_bitmap("on").await.unwrap(), want);
        assert!(live(&node).iter().all(|b| b.4));
        let e = engine.bitmap_clear("q", "on").unwrap_err();
        assert_eq!(
            e.message(),
            "Bitmap 'on' is readonly and cannot be modified"
        );
        reopen_set_read_only(&node, false).await.unwrap();
        assert!(stored(&node).await.iter().all(|b| b.1));
        assert!(live(&node).iter().all(|b| !b.4));
        engine.bitmap_clear("q", "on").unwrap();
        engine
            .device_add("dev-q", "q", BackendOptions::tool(false))
            .unwrap();
    });
    with_q(&sim, "img", true, async |_e, _bb, node| {
        let ops = node.driver().format_ops().unwrap();
        assert_eq!(ops.load_bitmap("on").await.unwrap().count(), 0);
        assert_check(&node, 0).await;
    });
}

/// A qcow2 image opened for check/repair keeps its bitmaps as they are: nothing is marked in
/// use before the refcounts are repaired, nothing stored after.
#[test]
fn check_mode_leaves_stored_bitmaps_alone() {
    let sim = image_on_off();
    let engine = engine_of(&sim);
    sim.block_on(async move {
        engine
            .blockdev_add(serde_json::json!({"driver": "qcow2", "node-name": "q",
                "x-check": true, "file": {"driver": "file", "filename": "img"}}))
            .await
            .unwrap();
        let node = engine.node("q").unwrap();
        assert!(live(&node).iter().all(|b| b.4), "read-only while checked");
        assert!(stored(&node).await.iter().all(|b| !b.1));
        engine.blockdev_del("q").await.unwrap();
    })
    .unwrap();
    with_q(&sim, "img", true, async |_e, _bb, node| {
        assert!(stored(&node).await.iter().all(|b| !b.1));
    });
}

/// A bitmap blk adds and fills through the live path is QEMU's: `qemu-img info` lists it with
/// the `auto` flag, `qemu-img check` is clean, qemu-storage-daemon hashes it as blk did.
#[test]
fn blk_live_bitmap_in_qemu() {
    if !have_qemu() {
        return;
    }
    let sim = sim_image(65536);
    let sha = with_q(&sim, "img", false, async |engine, bb, _node| {
        let args = BitmapAddArgs {
            node: s("q"),
            name: s("live"),
            granularity: Some(512),
            persistent: true,
            disabled: false,
        };
        engine.bitmap_add(&args).unwrap();
        write(&bb, 5000, 3000).await;
        write(&bb, 40 << 20, 65536).await;
        engine.bitmap_sha256("q", "live").unwrap()
    });
    let dir = Scratch::new("bitmaps-live");
    export(&sim, "img", View::Durable, &dir, "img.qcow2");
    dir.check("img.qcow2", false);
    let want = serde_json::json!([{"flags": ["auto"], "name": "live", "granularity": 512}]);
    assert_eq!(qemu_bitmaps(&dir, "img.qcow2"), want);
    if let Some(qemu) = qsd_sha256(&dir, "img.qcow2", "live") {
        assert_eq!(qemu, sha);
    }
}

/// Start qemu-storage-daemon on `f` read-write, wait until it has the image open, and kill it
/// (SIGKILL): its bitmaps stay marked in use. False when the daemon cannot run.
fn qsd_killed_holding(dir: &Scratch, f: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Some(mut child) = qsd_spawn(dir, f) else {
        return false;
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-block\"}\n")
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let returns = out
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| l.contains("\"return\""))
        .take(2)
        .count();
    child.kill().unwrap();
    child.wait().unwrap();
    returns == 2
}

/// An image qemu-storage-daemon held read-write with a persistent bitmap when it was killed:
/// QEMU lists the bitmap in use, blk loads it inconsistent (recording nothing, refused for
/// use), and after blk opened and closed it read-write the image still checks clean and the
/// bitmap is still in use.
#[test]
fn bitmap_left_in_use_by_a_killed_qemu_loads_inconsistent() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("bitmaps-killed");
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"],
    );
    dir.run("qemu-img", &["bitmap", "--add", "q.qcow2", "b"]);
    if !qsd_killed_holding(&dir, "q.qcow2") {
        return;
    }
    let want =
        serde_json::json!([{"flags": ["in-use", "auto"], "name": "b", "granularity": 65536}]);
    assert_eq!(qemu_bitmaps(&dir, "q.qcow2"), want);
    let sim = sim_with(17, &[("q", dir.read("q.qcow2"))]);
    with_q(&sim, "q", false, async |engine, _bb, node| {
        assert_eq!(live(&node), [(s("b"), true, false, true, false)]);
        let e = engine.bitmap_clear("q", "b").unwrap_err();
        assert_eq!(e.message(), "Bitmap 'b' is inconsistent and cannot be used");
        assert_eq!(
            engine.node("q").unwrap().bitmaps().info()[0]["inconsistent"],
            true
        );
    });
    export(&sim, "q", View::Durable, &dir, "after.qcow2");
    dir.check("after.qcow2", false);
    assert_eq!(qemu_bitmaps(&dir, "after.qcow2"), want);
}

/// Everything a refused verb must leave alone: live bitmaps with their hashes, and the
/// image's stored bitmaps.
async fn snapshot(
    engine: &Engine,
    node: &Node,
) -> (
    Vec<(String, bool, bool, bool, bool)>,
    Vec<String>,
    Vec<(String, bool, bool)>,
) {
    let hashes = node
        .bitmaps()
        .all()
        .iter()
        .map(|b| engine.bitmap_sha256("q", &b.name()).unwrap())
        .collect();
    (live(node), hashes, stored(node).await)
}

/// Run `verb` on node "q" of `sim`'s "img" (opened read-only with `ro`): it must fail with
/// `want` and change nothing, live or stored.
fn refused(sim: &Sim, ro: bool, verb: impl AsyncFnOnce(&Engine) -> engine::Result<()>, want: &str) {
    with_q(sim, "img", ro, async |engine, _bb, node| {
        let before = snapshot(&engine, &node).await;
        let e = verb(&engine).await.unwrap_err();
        assert_eq!(e.message(), want);
        assert_eq!(snapshot(&engine, &node).await, before);
    });
}

#[test]
fn refused_clear_of_a_bitmap_loaded_read_only() {
    let sim = image_on_off();
    let want = "Bitmap 'on' is readonly and cannot be modified";
    refused(&sim, true, async |e| e.bitmap_clear("q", "on"), want);
}

#[test]
fn refused_remove_of_a_bitmap_loaded_read_only() {
    let sim = image_on_off();
    let want = "Bitmap 'off' is readonly and cannot be modified";
    refused(
        &sim,
        true,
        async |e| e.bitmap_remove("q", "off").await,
        want,
    );
}

#[test]
fn refused_merge_into_a_bitmap_loaded_read_only() {
    let sim = image_on_off();
    let want = "Bitmap 'off' is readonly and cannot be modified";
    let src = [engine::engine::BitmapRef::Local(s("on"))];
    refused(&sim, true, async |e| e.bitmap_merge("q", "off", &src), want);
}

#[test]
fn refused_enable_of_a_bitmap_loaded_inconsistent() {
    let sim = image_on_off();
    with_node(&sim, "img", false, async |_bb, node| {
        node.bitmaps().remove("on");
        node.bitmaps().remove("off");
        node.driver()
            .format_ops()
            .unwrap()
            .mark_bitmaps_in_use()
            .await
            .unwrap();
    });
    let want = "Bitmap 'off' is inconsistent and cannot be used";
    refused(
        &sim,
        false,
        async |e| e.bitmap_set_enabled("q", "off", true),
        want,
    );
}

fn add_persistent(name: &str) -> BitmapAddArgs {
    BitmapAddArgs {
        node: s("q"),
        name: s(name),
        granularity: None,
        persistent: true,
        disabled: false,
    }
}

/// A qcow2 v2 image holding (live) bitmap "x".
fn v2_image_with_x() -> Sim {
    let sim = sim_with(31, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let opts = engine::drivers::qcow2::CreateOptions {
            size: 1 << 20,
            compat: engine::drivers::qcow2::Compat::V2,
            ..Default::default()
        };
        create_on(&engine, "img", &opts).await;
        engine.blockdev_del("f").await.unwrap();
    })
    .unwrap();
    sim
}

#[test]
fn refused_persistent_bitmap_on_a_v2_image() {
    let sim = v2_image_with_x();
    let want =
        "Can't make bitmap 'p' persistent in 'q': Cannot store dirty bitmaps in qcow2 v2 files";
    refused(
        &sim,
        false,
        async |e| e.bitmap_add(&add_persistent("p")).map(drop),
        want,
    );
}

/// QEMU's format asks whether the name is taken before anything else.
#[test]
fn refused_persistent_bitmap_with_a_taken_name_names_the_name_first() {
    let sim = v2_image_with_x();
    with_q(&sim, "img", false, async |engine, _bb, node| {
        let args = BitmapAddArgs {
            persistent: false,
            ..add_persistent("x")
        };
        engine.bitmap_add(&args).unwrap();
        let before = snapshot(&engine, &node).await;
        let e = engine.bitmap_add(&add_persistent("x")).unwrap_err();
        assert_eq!(e.message(), "Bitmap already exists: x");
        assert_eq!(snapshot(&engine, &node).await, before);
    });
}
