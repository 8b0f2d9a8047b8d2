//! qcow2 images with extended L2 entries (subclusters) written by QEMU: read identically in
//! blk (data, zero and unallocated subclusters, over a backing file, compressed clusters),
//! checked with qemu-img's numbers; then written further by blk and by QEMU with the same
//! subcluster requests, the two images come out byte for byte the same; inconsistent
//! subcluster bitmaps and too small clusters are clear errors, and blk's check reports them
//! as qemu-img's does.

use crate::qcow2_support;

use engine::drivers::qcow2::check_node;
use engine::error::Errno;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;

fn be64(b: &[u8], o: u64) -> u64 {
    u64::from_be_bytes(b[o as usize..o as usize + 8].try_into().unwrap())
}

fn qemu_io(dir: &Scratch, img: &str, cmds: &[String]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(img);
    dir.run("qemu-io", &args);
}

/// `qemu-img create` of a 1 MiB image with extended L2 entries (64 KiB clusters).
fn create_1m(dir: &Scratch, img: &str) {
    let args = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        img,
        "1M",
    ];
    dir.run("qemu-img", &args);
}

fn to_raw(dir: &Scratch, img: &str) -> Vec<u8> {
    let raw = format!("{img}.raw");
    dir.run("qemu-img", &["convert", "-O", "raw", img, &raw]);
    dir.read(&raw)
}

/// Subcluster-sized requests (cluster size `cs`, subclusters of cs/32) at odd places.
fn requests(cs: u64) -> Vec<String> {
    let sc = cs / 32;
    vec![
        format!("write -P 0x11 0 {sc}"),
        format!("write -P 0x22 {} {}", 5 * sc, 3 * sc + 100),
        format!("write -z {} {}", cs, 4 * sc),
        format!("write -P 0x33 {} {}", 2 * cs, cs),
        format!("write -z -u {} {}", 2 * cs + 6 * sc, 2 * sc),
        format!("discard {} {}", 2 * cs + 20 * sc, 4 * sc),
        format!("write -P 0x44 {} {}", 5 * cs - sc, 2 * sc),
    ]
}

/// More requests at subcluster granularity, over what `requests` left: in-place writes into
/// partly allocated clusters, zeroes and unmapping zeroes, discards, writes across clusters.
fn more_requests(cs: u64) -> Vec<Req> {
    let sc = cs / 32;
    vec![
        Req::Write(0x61, 3 * sc + 7, 2 * sc),
        Req::Write(0x62, cs + 2 * sc, sc / 2),
        Req::Zero(2 * cs + sc + 512, sc, false),
        Req::Zero(3 * cs, cs + 3 * sc, true),
        Req::Discard(6 * cs, cs),
        Req::Write(0x63, 5 * cs - 100, 3 * sc),
        Req::Zero(7 * cs + 512, 512, false),
    ]
}

/// One guest request, as blk's engine and as a qemu-io command.
#[derive(Clone, Copy)]
enum Req {
    /// Pattern, offset, length.
    Write(u8, u64, u64),
    /// Offset, length, unmap.
    Zero(u64, u64, bool),
    Discard(u64, u64),
}

impl Req {
    fn qemu_io(self) -> String {
        match self {
            Req::Write(p, o, l) => format!("write -P {p:#x} {o} {l}"),
            Req::Zero(o, l, u) => format!("write -z{} {o} {l}", if u { " -u" } else { "" }),
            Req::Discard(o, l) => format!("discard {o} {l}"),
        }
    }
}

/// blk reads `img` (and its files) as `expected`; its check equals qemu-img's; then blk and
/// QEMU apply `more_requests` to copies of it and leave byte-identical images.
fn blk_reads(dir: &Scratch, img: &str, files: &[&str], expected: Vec<u8>, seed: u64, cs: u64) {
    let loaded: Vec<(&str, Vec<u8>)> = files.iter().map(|f| (*f, dir.read(f))).collect();
    let before = dir.read(img);
    let (code, text) = dir.run_status("qemu-img", &["check", "--output=json", img]);
    assert_eq!(code, 0, "{text}");
    let mut want: serde_json::Value = serde_json::from_str(&text).unwrap();
    want.as_object_mut().unwrap().remove("filename");
    let sim = sim_with(seed, &loaded);
    let engine = engine_of(&sim);
    let name = img.to_string();
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "x", &name, false).await.unwrap();
        assert!(
            read_all(&bb).await == expected,
            "{name}: blk reads differently"
        );
        // Unaligned reads across subcluster boundaries too.
        let (buf, r) = bb.read(1000, IoBuf::new(70_000)).await;
        r.unwrap();
        assert!(
            buf.as_slice() == &expected[1000..71_000],
            "{name}: partial read"
        );
        let rep = check_node(&bb.root().unwrap().node(), None).await.unwrap();
        let mut got = rep.to_json();
        got.as_object_mut().unwrap().remove("filename");
        assert_eq!(got, want, "{name}: check differs from qemu-img's");
        for req in more_requests(cs) {
            match req {
                Req::Write(p, o, l) => {
                    let (_, r) = bb
                        .write(o, IoBuf::filled(l as usize, p), ReqFlags::NONE)
                        .await;
                    r.unwrap();
                }
                Req::Zero(o, l, u) => {
                    let f = if u {
                        ReqFlags::MAY_UNMAP
                    } else {
                        ReqFlags::NONE
                    };
                    bb.write_zeroes(o, l, f).await.unwrap();
                }
                Req::Discard(o, l) => bb.discard(o, l).await.unwrap(),
            }
        }
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    let ours = sim.fs().file_bytes(img).unwrap();
    let theirs = format!("{img}.qemu");
    std::fs::write(dir.path(&theirs), &before).unwrap();
    let cmds: Vec<String> = more_requests(cs).iter().map(|r| r.qemu_io()).collect();
    qemu_io(dir, &theirs, &cmds);
    let blk_img = format!("{img}.blk");
    std::fs::write(dir.path(&blk_img), &ours).unwrap();
    let (code, text) = dir.run_status("qemu-img", &["check", &blk_img]);
    assert_eq!(code, 0, "{img}: blk's writes: {text}");
    // QEMU's copy rewritten densely, as blk's comes out of the simulator: where QEMU zeroed
    // with a hole, its map would say so ("data": true, "zero": true).
    let dense = format!("{img}.dense");
    std::fs::write(dir.path(&dense), dir.read(&theirs)).unwrap();
    let map = |f: &str| dir.run("qemu-img", &["map", "--output=json", f]);
    assert_eq!(map(&blk_img), map(&dense), "{img}: maps differ");
    assert!(
        ours == dir.read(&theirs),
        "{img}: blk's image differs from QEMU's"
    );
}

#[test]
fn qemu_written_subcluster_images_read_identically() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("subcluster");
    for (i, cs) in [16384u64, 65536, 2 << 20].into_iter().enumerate() {
        let size = (8 * cs).max(4 << 20).to_string();
        let img = format!("e{i}.qcow2");
        let o = format!("extended_l2=on,cluster_size={cs}");
        dir.run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &o, &img, &size],
        );
        qemu_io(&dir, &img, &requests(cs));
        let expected = to_raw(&dir, &img);
        blk_reads(&dir, &img, &[&img], expected, 80 + i as u64, cs);
        // Over a backing file: unallocated subclusters read the backing file's data.
        let base = format!("base{i}.qcow2");
        dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &base, &size]);
        qemu_io(&dir, &base, &[format!("write -P 0x5a 0 {size}")]);
        let top = format!("t{i}.qcow2");
        dir.run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-o", &o, "-b", &base, "-F", "qcow2", &top,
            ],
        );
        qemu_io(&dir, &top, &requests(cs));
        let expected = to_raw(&dir, &top);
        assert!(expected.contains(&0x5a), "the backing file shows through");
        blk_reads(&dir, &top, &[&top, &base], expected, 90 + i as u64, cs);
        // Compressed clusters in an image with extended L2 entries.
        let comp = format!("c{i}.qcow2");
        dir.run(
            "qemu-img",
            &["convert", "-c", "-O", "qcow2", "-o", &o, &img, &comp],
        );
        let expected = to_raw(&dir, &img);
        blk_reads(&dir, &comp, &[&comp], expected, 100 + i as u64, cs);
    }
}

/// A subcluster marked both allocated and zero is an inconsistent entry: reading it is EIO
/// (a non-fatal corruption event on a read-only image), as in QEMU; too small clusters for
/// subclusters are refused at open.
#[test]
fn bad_subcluster_images_are_clear_errors() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("subcluster-bad");
    create_1m(&dir, "e.qcow2");
    qemu_io(&dir, "e.qcow2", &["write -P 1 0 64k".to_string()]);
    let mut img = dir.read("e.qcow2");
    let l2 = be64(&img, be64(&img, 40)) & 0x00ff_ffff_ffff_fe00;
    let bm = be64(&img, l2 + 8) | (1 << 32); // subcluster 0: allocated and zero
    img[l2 as usize + 8..l2 as usize + 16].copy_from_slice(&bm.to_be_bytes());
    std::fs::write(dir.path("bad.qcow2"), &img).unwrap();
    let (_, q) = dir.run_status("qemu-io", &["-r", "-c", "read 0 512", "bad.qcow2"]);
    assert!(q.contains("Input/output error"), "{q}");
    // Extended L2 entries on 8 KiB clusters (bit 4 set on a plain image).
    dir.run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=8k",
            "s.qcow2",
            "1M",
        ],
    );
    let mut small = dir.read("s.qcow2");
    small[79] |= 1 << 4;
    let sim = sim_with(110, &[("bad.qcow2", img), ("small.qcow2", small)]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "b", "bad.qcow2", true).await.unwrap();
        let (_, r) = bb.read(0, IoBuf::new(512)).await;
        let e = r.unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EIO));
        assert!(e.message().contains("Invalid cluster entry found"), "{e}");
        let (buf, r) = bb.read(2048, IoBuf::new(512)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 1));
        let ev: Vec<_> = engine
            .take_events()
            .into_iter()
            .filter(|e| e.name == "BLOCK_IMAGE_CORRUPTED")
            .collect();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data["fatal"], false);
        let e = open_qcow2(&engine, "s", "small.qcow2", true)
            .await
            .err()
            .unwrap();
        assert!(
            e.message().contains(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
            ),
            "{e}"
        );
    })
    .unwrap();
}

/// Corrupt subcluster bitmaps (a subcluster both allocated and zero, allocated subclusters in
/// a cluster without a host cluster, a bitmap on a compressed cluster): blk's check counts
/// and words them as qemu-img's does (the compressed cluster is then not counted: a leak).
#[test]
fn corrupt_subcluster_bitmaps_check_as_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("subcluster-check");
    create_1m(&dir, "c.qcow2");
    qemu_io(
        &dir,
        "c.qcow2",
        &[
            "write -P 1 0 4k".to_string(),
            "write -z 64k 4k".to_string(),
            "write -c 128k 64k".to_string(),
        ],
    );
    let img = dir.read("c.qcow2");
    let l2 = be64(&img, be64(&img, 40)) & 0x00ff_ffff_ffff_fe00;
    // (L2 index, word of the entry, new value)
    let bad = [
        (0u64, 1u64, be64(&img, l2 + 8) | 1 << 32),
        (1, 1, 1),
        (2, 1, 3),
    ];
    let mut files = Vec::new();
    for (n, (i, word, v)) in bad.into_iter().enumerate() {
        let mut b = img.clone();
        let at = (l2 + i * 16 + word * 8) as usize;
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        let name = format!("bad{n}.qcow2");
        std::fs::write(dir.path(&name), &b).unwrap();
        files.push((name, b));
    }
    for (n, (name, bytes)) in files.into_iter().enumerate() {
        let out = std::process::Command::new("qemu-img")
            .args(["check", "--output=json", &name])
            .current_dir(dir.path(""))
            .output()
            .unwrap();
        let mut want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        want.as_object_mut().unwrap().remove("filename");
        let want_msgs: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_string)
            .collect();
        let sim = sim_with(120 + n as u64, &[(name.as_str(), bytes)]);
        let engine = engine_of(&sim);
        let name2 = name.clone();
        sim.block_on(async move {
            let bb = open_qcow2(&engine, "x", &name2, true).await.unwrap();
            let rep = check_node(&bb.root().unwrap().node(), None).await.unwrap();
            let mut got = rep.to_json();
            got.as_object_mut().unwrap().remove("filename");
            assert_eq!(got, want, "{name2}: check differs from qemu-img's");
            assert_eq!(rep.messages, want_msgs, "{name2}: messages");
            engine.shutdown().await.unwrap();
        })
        .unwrap();
    }
}
