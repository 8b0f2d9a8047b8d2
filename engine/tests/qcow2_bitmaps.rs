//! Persistent dirty bitmaps in qcow2 (the bitmaps extension), through the format verbs of
//! `FormatOps` (how they connect to the live bitmaps of a node: `qcow2_bitmaps_live.rs`):
//! store / list / load / remove / mark in use round trips, a resize that keeps
//! them, the refusals of malformed extensions, directories and tables (each its own case,
//! with QEMU's message), and interop both ways: bitmaps blk stores are listed by `qemu-img
//! info` and pass `qemu-img check`; bitmaps QEMU wrote (with bits set by qemu-io writes)
//! load in blk with the same bits.

use std::rc::Rc;

use crate::qcow2_support::*;

use engine::backend::BlockBackend;
use engine::bitmap::HBits;
use engine::driver::BitmapToStore;
use engine::drivers::qcow2::{CreateOptions, check_node};
use engine::graph::Node;
use engine::io::{IoBuf, ReqFlags};
use serde_json::Value;
use sim::{Sim, View};

pub(crate) const DISK: u64 = 64 << 20;

/// A blk-created 64 MiB image (`cluster_size` clusters) in a fresh simulator.
pub(crate) fn sim_image(cluster_size: u64) -> Sim {
    let sim = sim_with(7, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let opts = CreateOptions {
            size: DISK,
            cluster_size,
            ..CreateOptions::default()
        };
        create_on(&engine, "img", &opts).await;
        engine.blockdev_del("f").await.unwrap();
    })
    .unwrap();
    sim
}

/// Run `f` on the qcow2 node of `file` (opened read-write unless `ro`), closing it after.
pub(crate) fn with_node<T>(
    sim: &Sim,
    file: &str,
    ro: bool,
    f: impl AsyncFnOnce(Rc<BlockBackend>, Rc<Node>) -> T,
) -> T {
    let engine = engine_of(sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", file, ro).await.unwrap();
        let out = f(bb, engine.node("q").unwrap()).await;
        engine.device_del("dev-q").await.unwrap();
        engine.blockdev_del("q").await.unwrap();
        out
    })
    .unwrap()
}

/// The error opening `file` gives.
fn open_error(sim: &Sim, file: &str) -> String {
    let engine = engine_of(sim);
    sim.block_on(async move {
        match open_qcow2(&engine, "q", file, true).await {
            Ok(_) => panic!("{file} opened"),
            Err(e) => e.message(),
        }
    })
    .unwrap()
}

/// One bitmap to store.
pub(crate) fn bm<'a>(
    name: &'a str,
    granularity: u64,
    enabled: bool,
    bits: &'a HBits,
) -> BitmapToStore<'a> {
    BitmapToStore {
        name,
        granularity,
        enabled,
        bits,
    }
}

/// blk's check of `node` finds no corruption and `leaks` leaked clusters.
pub(crate) async fn assert_check(node: &Rc<Node>, leaks: u64) {
    let rep = check_node(node, None).await.unwrap();
    assert_eq!(
        (rep.corruptions, rep.leaks),
        (0, leaks),
        "{:?}",
        rep.messages
    );
}

pub(crate) fn bits(n: u64, set: &[(u64, u64)]) -> HBits {
    let mut b = HBits::new(n);
    for &(s, e) in set {
        b.set_range(s, e);
    }
    b
}

#[test]
fn store_list_load_remove_round_trip() {
    let sim = sim_image(65536);
    let n = DISK / 65536;
    let a = bits(n, &[(0, 1), (16, 17), (1000, 1024)]);
    let b = bits(DISK / 512, &[(5, 100_000)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let d = node.driver();
        let ops = d.format_ops().unwrap();
        assert!(ops.stored_bitmaps().await.unwrap().is_empty());
        let set = [bm("a", 65536, true, &a), bm("b", 512, false, &b)];
        ops.store_bitmaps(&set).await.unwrap();
        assert!(ops.has_persistent_bitmaps());
        let l = ops.stored_bitmaps().await.unwrap();
        let names: Vec<(&str, u64, bool, bool)> = l
            .iter()
            .map(|s| (s.name.as_str(), s.granularity, s.in_use, s.auto))
            .collect();
        assert_eq!(names, [("a", 65536, false, true), ("b", 512, false, false)]);
        assert_eq!(ops.load_bitmap("a").await.unwrap(), a);
        assert_eq!(ops.load_bitmap("b").await.unwrap(), b);
        // Replacing one keeps the other; in use, then stored again: clean.
        ops.mark_bitmaps_in_use().await.unwrap();
        assert!(ops.stored_bitmaps().await.unwrap().iter().all(|s| s.in_use));
        let e = ops.load_bitmap("a").await.unwrap_err().message();
        assert_eq!(e, "Bitmap 'a' is inconsistent and cannot be used");
        let a2 = bits(n, &[(3, 4)]);
        let set = [bm("a", 65536, false, &a2)];
        ops.store_bitmaps(&set).await.unwrap();
        let l = ops.stored_bitmaps().await.unwrap();
        assert_eq!((l[0].in_use, l[0].auto, l[1].in_use), (false, false, true));
        assert_eq!(ops.load_bitmap("a").await.unwrap(), a2);
        assert!(ops.remove_bitmap("b").await.unwrap());
        assert!(!ops.remove_bitmap("b").await.unwrap());
        assert_check(&node, 0).await;
        assert!(ops.remove_bitmap("a").await.unwrap());
        assert!(!ops.has_persistent_bitmaps());
        assert_check(&node, 0).await;
    });
}

/// A resize keeps every clean bitmap, resized with the disk (a grown tail clear), stored
/// again so that its table covers exactly the new size.
#[test]
fn resize_keeps_bitmaps() {
    let sim = sim_image(65536);
    let n = DISK / 65536;
    let a = bits(n, &[(0, 3), (n - 1, n)]);
    with_node(&sim, "img", false, async |bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let set = [bm("a", 65536, false, &a)];
        ops.store_bitmaps(&set).await.unwrap();
        for (size, want) in [
            (4 * DISK, bits(4 * n, &[(0, 3), (n - 1, n)])),
            (DISK / 2, bits(n / 2, &[(0, 3)])),
        ] {
            bb.truncate(size).await.unwrap();
            let l = ops.stored_bitmaps().await.unwrap();
            assert!(!l[0].in_use);
            assert_eq!(ops.load_bitmap("a").await.unwrap(), want);
        }
        assert_check(&node, 0).await;
    });
    // And it opens again (QEMU's open checks the table against the disk size).
    with_node(&sim, "img", true, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        assert_eq!(ops.stored_bitmaps().await.unwrap().len(), 1);
    });
}

/// File offset of the bitmaps extension's payload in `img`.
fn ext_payload(img: &[u8]) -> usize {
    let be32 = |o: usize| u32::from_be_bytes(img[o..o + 4].try_into().unwrap());
    let mut off = be32(100) as usize;
    loop {
        let (magic, len) = (be32(off), be32(off + 4) as usize);
        assert_ne!(magic, 0, "no bitmaps extension");
        if magic == 0x2385_2875 {
            return off + 8;
        }
        off += 8 + len.next_multiple_of(8);
    }
}

fn be64_at(img: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(img[o..o + 8].try_into().unwrap())
}

/// A blk image with one clean enabled bitmap "a" (bits 16 and 160), as bytes.
fn image_with_bitmap_a() -> Vec<u8> {
    let sim = sim_image(65536);
    let a = bits(DISK / 65536, &[(16, 17), (160, 161)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let set = [bm("a", 65536, true, &a)];
        ops.store_bitmaps(&set).await.unwrap();
    });
    sim.fs().file_bytes("img").unwrap()
}

/// Break the image of `image_with_bitmap_a` with `mutate(image, extension payload offset,
/// directory offset)`: blk refuses to open it with `want`, and so does QEMU.
fn refused(mutate: impl FnOnce(&mut Vec<u8>, usize, usize), want: &str) {
    let mut img = image_with_bitmap_a();
    let ext = ext_payload(&img);
    let dir = be64_at(&img, ext + 16) as usize;
    mutate(&mut img, ext, dir);
    let sim = sim_with(3, &[("bad", img.clone())]);
    let got = open_error(&sim, "bad");
    assert!(got.ends_with(want), "blk: {got:?}, want {want:?}");
    if have_qemu() {
        let d = Scratch::new("bitmap-bad");
        std::fs::write(d.path("bad.qcow2"), &img).unwrap();
        let (code, text) = d.run_status("qemu-img", &["info", "bad.qcow2"]);
        assert_eq!(code, 1, "{text}");
        assert_eq!(
            text,
            format!("qemu-img: Could not open 'bad.qcow2': {want}\n")
        );
    }
}

fn put32(img: &mut [u8], o: usize, v: u32) {
    img[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(img: &mut [u8], o: usize, v: u64) {
    img[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn bad_extension_length() {
    refused(
        |img, ext, _| put32(img, ext - 4, 16),
        "bitmaps_ext: Invalid extension length",
    );
}

#[test]
fn bad_extension_reserved_field() {
    refused(
        |img, ext, _| put32(img, ext + 4, 1),
        "bitmaps_ext: Reserved field is not zero",
    );
}

#[test]
fn bad_extension_too_many_bitmaps() {
    refused(
        |img, ext, _| put32(img, ext, 65536),
        "bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535",
    );
}

#[test]
fn bad_extension_zero_bitmaps() {
    refused(
        |img, ext, _| put32(img, ext, 0),
        "found bitmaps extension with zero bitmaps",
    );
}

#[test]
fn bad_extension_directory_offset() {
    refused(
        |img, ext, dir| put64(img, ext + 16, dir as u64 + 512),
        "bitmaps_ext: invalid bitmap directory offset",
    );
}

#[test]
fn bad_extension_directory_size() {
    refused(
        |img, ext, _| put64(img, ext + 8, 67_107_841),
        "bitmaps_ext: bitmap directory size (67107841) exceeds the maximum supported size \
         (67107840)",
    );
}

#[test]
fn bad_directory_fewer_entries_than_counted() {
    refused(
        |img, ext, _| put32(img, ext, 2),
        "Less bitmaps found than specified in header extension",
    );
}

#[test]
fn bad_directory_entry_type() {
    refused(
        |img, _, dir| img[dir + 16] = 2,
        "Bitmap 'a' doesn't satisfy the constraints",
    );
}

#[test]
fn bad_directory_granularity() {
    refused(
        |img, _, dir| img[dir + 17] = 40,
        "Bitmap 'a' doesn't satisfy the constraints",
    );
}

#[test]
fn bad_directory_truncated_entry() {
    refused(
        |img, ext, _| put64(img, ext + 8, 20),
        "Broken bitmap directory",
    );
}

#[test]
fn bad_directory_extra_data() {
    refused(
        |img, _, dir| put32(img, dir + 20, 8),
        "Broken bitmap directory",
    );
}

#[test]
fn bad_table_entry_reserved_bits() {
    refused(
        |img, _, dir| {
            let table = be64_at(img, dir) as usize;
            img[table + 7] |= 2;
        },
        "Could not read bitmap_table table from image for bitmap 'a': Invalid argument",
    );
}

#[test]
fn bad_table_size() {
    refused(
        |img, _, dir| put32(img, dir + 8, 2),
        "Could not read bitmap 'a' from image: Invalid argument",
    );
}

/// An extension without autoclear bit 0 (a program without bitmap support wrote the image):
/// the bitmaps are ignored, as QEMU does, and the next store replaces the stale extension.
#[test]
fn stale_extension_is_ignored_and_replaced() {
    let mut img = image_with_bitmap_a();
    img[95] &= !1;
    let sim = sim_with(5, &[("img", img)]);
    let b = bits(DISK / 65536, &[(2, 3)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        assert!(ops.stored_bitmaps().await.unwrap().is_empty());
        assert!(!ops.has_persistent_bitmaps());
        let set = [bm("b", 65536, true, &b)];
        ops.store_bitmaps(&set).await.unwrap();
        let l = ops.stored_bitmaps().await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(ops.load_bitmap("b").await.unwrap(), b);
        // The stale bitmap's clusters (directory, table, data) leak, as in QEMU.
        assert_check(&node, 3).await;
    });
}

/// `qemu-img info --output=json`'s bitmaps of a host image.
pub(crate) fn qemu_bitmaps(dir: &Scratch, f: &str) -> Value {
    let out = dir.run("qemu-img", &["info", "--output=json", f]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["format-specific"]["data"]["bitmaps"].clone()
}

/// Bitmaps blk stores are QEMU's: listed by `qemu-img info` with the same names, flags and
/// granularities, a clean `qemu-img check`, and the same bits when QEMU copies them.
#[test]
fn blk_bitmaps_in_qemu() {
    if !have_qemu() {
        return;
    }
    let sim = sim_image(65536);
    let a = bits(DISK / 65536, &[(16, 17), (160, 161)]);
    let b = bits(DISK / 4096, &[(0, 8192), (16000, 16384)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let set = [bm("a", 65536, true, &a), bm("b", 4096, false, &b)];
        ops.store_bitmaps(&set).await.unwrap();
    });
    let dir = Scratch::new("bitmaps-blk");
    export(&sim, "img", View::Durable, &dir, "img.qcow2");
    dir.check("img.qcow2", false);
    let want = serde_json::json!([
        {"flags": ["auto"], "name": "a", "granularity": 65536},
        {"flags": [], "name": "b", "granularity": 4096},
    ]);
    assert_eq!(qemu_bitmaps(&dir, "img.qcow2"), want);
    // QEMU loads them (opening read-write marks them in use, closing stores them clean again)
    // and its copy holds the same bits.
    dir.run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "--bitmaps",
            "img.qcow2",
            "copy.qcow2",
        ],
    );
    let copy = dir.read("copy.qcow2");
    let sim2 = sim_with(9, &[("copy", copy)]);
    with_node(&sim2, "copy", true, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        assert_eq!(ops.load_bitmap("a").await.unwrap(), a);
        assert_eq!(ops.load_bitmap("b").await.unwrap(), b);
    });
}

/// Bitmaps QEMU wrote, with bits set by qemu-io's writes through an enabled bitmap, load in
/// blk with the same bits; a QEMU bitmap at 512-byte granularity on 512-byte clusters spans
/// several data clusters.
#[test]
fn qemu_bitmaps_in_blk() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("bitmaps-qemu");
    dir.run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "q.qcow2",
            "8M",
        ],
    );
    dir.run("qemu-img", &["bitmap", "--add", "q.qcow2", "b64k"]);
    dir.run(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", "q.qcow2", "b512"],
    );
    dir.run(
        "qemu-img",
        &["bitmap", "--add", "--disable", "q.qcow2", "off"],
    );
    dir.run(
        "qemu-io",
        &[
            "-c",
            "write 1M 64k",
            "-c",
            "write 5000 1k",
            "-c",
            "write 8388096 512",
            "q.qcow2",
        ],
    );
    let img = dir.read("q.qcow2");
    let sim = sim_with(11, &[("q", img)]);
    with_node(&sim, "q", true, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let l = ops.stored_bitmaps().await.unwrap();
        let names: Vec<(&str, u64, bool)> = l
            .iter()
            .map(|s| (s.name.as_str(), s.granularity, s.auto))
            .collect();
        // Default granularity: the cluster size, at least 4 KiB.
        assert_eq!(
            names,
            [
                ("b64k", 4096, true),
                ("b512", 512, true),
                ("off", 4096, false)
            ]
        );
        let n = (8u64 << 20) / 4096;
        let want = bits(n, &[(1, 2), (256, 272), (n - 1, n)]);
        assert_eq!(ops.load_bitmap("b64k").await.unwrap(), want);
        let n = (8u64 << 20) / 512;
        let want = bits(n, &[(9, 12), (2048, 2176), (n - 1, n)]);
        assert_eq!(ops.load_bitmap("b512").await.unwrap(), want);
        assert_eq!(ops.load_bitmap("off").await.unwrap().count(), 0);
    });
}

/// Regression: a read-write open used to clear autoclear bit 0, which told QEMU that every
/// bitmap of the image was invalid (`qemu-img info` listed none afterwards). Now the bit and
/// the bitmaps stay; a disabled bitmap even survives guest writes unchanged.
#[test]
fn read_write_open_keeps_qemu_bitmaps() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("bitmaps-rw");
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"],
    );
    dir.run(
        "qemu-img",
        &["bitmap", "--add", "--disable", "q.qcow2", "frozen"],
    );
    dir.run("qemu-io", &["-c", "write 0 64k", "q.qcow2"]);
    let sim = sim_with(13, &[("q", dir.read("q.qcow2"))]);
    with_node(&sim, "q", false, async |bb, _node| {
        bb.write(1 << 20, IoBuf::from_slice(&[7u8; 4096]), ReqFlags::NONE)
            .await
            .1
            .unwrap();
    });
    export(&sim, "q", View::Durable, &dir, "after.qcow2");
    dir.check("after.qcow2", false);
    let want = serde_json::json!([{"flags": [], "name": "frozen", "granularity": 65536}]);
    assert_eq!(qemu_bitmaps(&dir, "after.qcow2"), want);
}

/// qemu-storage-daemon with the qcow2 image `f` of `dir` as node "q" (read-write) and its
/// QMP monitor on stdin/stdout (None when it cannot start).
pub(crate) fn qsd_spawn(dir: &Scratch, f: &str) -> Option<std::process::Child> {
    use std::process::{Command, Stdio};
    Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!("driver=file,filename={f},node-name=f"),
            "--blockdev",
            "driver=qcow2,file=f,node-name=q",
            "--chardev",
            "stdio,id=c",
            "--monitor",
            "chardev=c",
        ])
        .current_dir(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()
}

/// `x-debug-block-dirty-bitmap-sha256` of bitmap `name` of the qcow2 image `f` in `dir`, as
/// qemu-storage-daemon loads it (None when it gives none).
pub(crate) fn qsd_sha256(dir: &Scratch, f: &str, name: &str) -> Option<String> {
    use std::io::Write;
    let mut child = qsd_spawn(dir, f)?;
    let qmp = format!(
        "{{\"execute\":\"qmp_capabilities\"}}\n\
         {{\"execute\":\"x-debug-block-dirty-bitmap-sha256\",\
           \"arguments\":{{\"node\":\"q\",\"name\":\"{name}\"}}}}\n\
         {{\"execute\":\"quit\"}}\n"
    );
    child.stdin.take()?.write_all(qmp.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        v["return"]["sha256"].as_str().map(str::to_string)
    })
}

/// The SHA-256 QEMU computes over a bitmap: its level-0 words, little-endian.
pub(crate) fn sha256_of(dir: &Scratch, bits: &HBits) -> String {
    std::fs::write(dir.path("leaf.bin"), bits.leaf_bytes()).unwrap();
    let out = dir.run("sha256sum", &["leaf.bin"]);
    out.split_whitespace().next().unwrap().to_string()
}

/// qemu-storage-daemon loads the bitmaps blk stored with exactly blk's bits (the hash QEMU's
/// `x-debug-block-dirty-bitmap-sha256` gives), at two granularities, one spanning several
/// data clusters.
#[test]
fn qemu_storage_daemon_hashes_blk_bitmaps() {
    let qsd = std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_qemu() || !qsd {
        return;
    }
    let sim = sim_image(512);
    let fine = bits(DISK / 512, &[(0, 1), (4095, 4100), (50_000, 60_000)]);
    let coarse = bits(DISK / 65536, &[(3, 4), (1023, 1024)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let set = [
            bm("fine", 512, true, &fine),
            bm("coarse", 65536, false, &coarse),
        ];
        ops.store_bitmaps(&set).await.unwrap();
    });
    let dir = Scratch::new("bitmaps-qsd");
    export(&sim, "img", View::Durable, &dir, "img.qcow2");
    for (name, b) in [("fine", &fine), ("coarse", &coarse)] {
        let qemu = qsd_sha256(&dir, "img.qcow2", name).expect("qemu-storage-daemon's hash");
        assert_eq!(qemu, sha256_of(&dir, b), "bitmap {name}");
    }
    // The daemon stored them back clean when it quit.
    dir.check("img.qcow2", false);
}

/// Store bitmaps "a" (replacing the stored one) and "b" (new) on `sim`'s "img", crashing at
/// `crash` (its counts taken from the start of the store) if given; errors after the crash are
/// expected and ignored. Returns the flushes and disk operations the store made.
fn store_a2_b(sim: &Sim, a2: &HBits, b: &HBits, crash: Option<sim::CrashAt>) -> (u64, u64) {
    let engine = engine_of(sim);
    let fs = sim.fs();
    let (a2, b) = (a2.clone(), b.clone());
    let counts = sim.block_on(async move {
        let _bb = open_qcow2(&engine, "q", "img", false).await.unwrap();
        let node = engine.node("q").unwrap();
        let ops = node.driver().format_ops().unwrap();
        // The open marked "a" in use; stored clean again, the crash below has old bits to keep.
        let old = ops.load_bitmap("a").await;
        assert!(
            old.is_err(),
            "a read-write open marks stored bitmaps in use"
        );
        node.bitmaps().remove("a");
        let old_a = bits(DISK / 65536, &[(16, 17), (160, 161)]);
        ops.store_bitmaps(&[bm("a", 65536, true, &old_a)])
            .await
            .unwrap();
        let base = fs.disk_counts();
        match crash {
            Some(sim::CrashAt::Flush { nth, after }) => fs.schedule_crash(sim::CrashAt::Flush {
                nth: base.flushes + nth,
                after,
            }),
            Some(sim::CrashAt::Op { nth }) => fs.schedule_crash(sim::CrashAt::Op {
                nth: base.ops + nth,
            }),
            None => {}
        }
        let set = [bm("a", 65536, false, &a2), bm("b", 65536, true, &b)];
        let stored = ops.store_bitmaps(&set).await;
        if crash.is_none() {
            stored.unwrap();
        }
        let now = fs.disk_counts();
        (now.flushes - base.flushes, now.ops - base.ops)
    });
    counts.unwrap_or((0, 0))
}

/// A crash at any flush or disk write of a store leaves the old bitmaps or the new ones, with
/// their bits, in an image that opens and has no corruption (leaked clusters at most).
#[test]
fn crash_during_store_leaves_old_or_new_bitmaps() {
    let base = image_with_bitmap_a();
    let n = DISK / 65536;
    let old_a = bits(n, &[(16, 17), (160, 161)]);
    let (a2, b) = (bits(n, &[(5, 6)]), bits(n, &[(0, n)]));
    let dry = sim_with(21, &[("img", base.clone())]);
    let (flushes, ops) = store_a2_b(&dry, &a2, &b, None);
    assert!(flushes >= 2 && ops >= 4, "{flushes} flushes, {ops} writes");
    let mut points: Vec<sim::CrashAt> = (1..=ops).map(|nth| sim::CrashAt::Op { nth }).collect();
    for nth in 1..=flushes {
        for after in [false, true] {
            points.push(sim::CrashAt::Flush { nth, after });
        }
    }
    let (mut olds, mut news) = (0, 0);
    for at in points {
        let sim = sim_with(21, &[("img", base.clone())]);
        store_a2_b(&sim, &a2, &b, Some(at));
        assert!(sim.fs().take_struck().is_some(), "{at:?} never came");
        let after_crash = sim.fs().durable_bytes("img").unwrap();
        let sim2 = sim_with(22, &[("img", after_crash)]);
        with_node(&sim2, "img", true, async |_bb, node| {
            let ops = node.driver().format_ops().unwrap();
            let names: Vec<String> = ops
                .stored_bitmaps()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            if names == ["a"] {
                assert_eq!(ops.load_bitmap("a").await.unwrap(), old_a, "{at:?}");
                olds += 1;
            } else {
                assert_eq!(names, ["a", "b"], "crash at {at:?}");
                assert_eq!(ops.load_bitmap("a").await.unwrap(), a2, "{at:?}");
                assert_eq!(ops.load_bitmap("b").await.unwrap(), b, "{at:?}");
                news += 1;
            }
            let rep = check_node(&node, None).await.unwrap();
            assert_eq!(rep.corruptions, 0, "{at:?}: {:?}", rep.messages);
        });
    }
    assert!(olds > 0 && news > 0, "old {olds}, new {news}");
}

/// Opening read-write marks the bitmaps in use in place, as QEMU does: the directory stays
/// where it was and nothing is allocated or freed. So an image whose refcounts miss the
/// bitmap clusters still opens (for `check -r` to repair it) with its bits intact, where a
/// copy-on-write directory would take the first "free" cluster, the bitmap's own data, and
/// then fail to free the old one. Found by the `qcow2_structured` fuzz target.
#[test]
fn read_write_open_marks_in_use_in_place_even_with_broken_refcounts() {
    let mut img = image_with_bitmap_a();
    let ext = ext_payload(&img);
    let dir = be64_at(&img, ext + 16);
    let table = be64_at(&img, dir as usize);
    let data: Vec<u64> = (0..2)
        .map(|i| be64_at(&img, table as usize + 8 * i) & !0x1ff)
        .filter(|&o| o != 0)
        .collect();
    // 64 KiB clusters, 16-bit refcounts: the first refcount block covers the whole image.
    let reftable = be64_at(&img, 48) as usize;
    let block = be64_at(&img, reftable) as usize;
    for off in [dir, table].into_iter().chain(data) {
        let entry = block + 2 * (off >> 16) as usize;
        assert_eq!(&img[entry..entry + 2], &[0, 1]);
        img[entry..entry + 2].copy_from_slice(&[0, 0]);
    }
    let sim = sim_with(5, &[("img", img)]);
    with_node(&sim, "img", false, async |_bb, node| {
        let ops = node.driver().format_ops().unwrap();
        let stored = ops.stored_bitmaps().await.unwrap();
        assert!(stored.iter().all(|s| s.in_use), "marked in use at open");
        let now = sim.fs().file_bytes("img").unwrap();
        assert_eq!(be64_at(&now, ext + 16), dir, "the directory did not move");
        let a = node.bitmaps().find("a").unwrap();
        let n = DISK / 65536;
        assert_eq!(a.bits().bits(), &bits(n, &[(16, 17), (160, 161)]));
    });
}
