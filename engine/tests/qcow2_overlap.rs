//! qcow2 overlap checks: a crafted image whose L2 entry points into metadata (the L1 table, a
//! refcount block) refuses the guest write that would overwrite it, marks the image corrupt
//! (durably), keeps the metadata and the other data intact, refuses later writes and a
//! read-write reopen. Each corruption found is a BLOCK_IMAGE_CORRUPTED event with QEMU's
//! fields, checked against the event qemu-storage-daemon sends for the same image and write.

use crate::qcow2_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use engine::backend::BackendOptions;
use engine::error::Errno;
use engine::io::{IoBuf, ReqFlags};
use engine::qmp;
use qcow2_support::*;
use serde_json::{Value, json};
use sim::View;

fn be64(img: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(img[off as usize..off as usize + 8].try_into().unwrap())
}

/// A 4 MiB image (64 KiB clusters) written by qemu-io: guest cluster 0 is 0x11s, cluster 2 is
/// 0x22s; guest cluster 10's L2 entry is then pointed at `target(image)`.
fn crafted(dir: &Scratch, target: fn(&[u8]) -> u64) -> Vec<u8> {
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "o.qcow2", "4M"],
    );
    dir.run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0x22 128k 64k",
            "o.qcow2",
        ],
    );
    let mut img = dir.read("o.qcow2");
    let l2 = be64(&img, be64(&img, 40)) & 0x00ff_ffff_ffff_fe00;
    let t = target(&img);
    let o = (l2 + 80) as usize;
    img[o..o + 8].copy_from_slice(&((1u64 << 63) | t).to_be_bytes());
    img
}

fn run_case(name: &str, target: fn(&[u8]) -> u64, what: &str) {
    let dir = Scratch::new(&format!("overlap-{name}"));
    let img = crafted(&dir, target);
    let t = target(&img) as usize;
    let meta_before = img[t..t + 65536].to_vec();
    let sim = sim_with(11, &[("o.qcow2", img)]);
    let engine = engine_of(&sim);
    let what = what.to_string();
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", "o.qcow2", false).await.unwrap();
        let (_, r) = bb
            .write(10 * 65536, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
            .await;
        let e = r.expect_err("write over metadata must fail");
        assert!(
            e.message().contains("Marking image as corrupt") && e.message().contains(&what),
            "{}",
            e.message()
        );
        // From then on the node answers as QEMU's without its driver: ENOMEDIUM for writes,
        // reads and block status (qemu-io: "read failed: No medium found").
        let (_, r) = bb
            .write(3 << 20, IoBuf::filled(512, 1), ReqFlags::NONE)
            .await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOMEDIUM));
        let (_, r) = bb.read(0, IoBuf::new(65536)).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOMEDIUM));
        let st = bb.block_status(0, 65536).await;
        assert_eq!(st.unwrap_err().errno(), Some(Errno::ENOMEDIUM));
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    let after = sim.fs().file_bytes("o.qcow2").unwrap();
    assert_eq!(
        after[79] & 2,
        2,
        "{name}: corrupt bit must be set in the header"
    );
    assert!(
        after[t..t + 65536] == meta_before[..],
        "{name}: metadata was overwritten"
    );
    // A read-write reopen is refused; read-only still works.
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let e = open_qcow2(&engine, "rw", "o.qcow2", false)
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("corrupt"), "{}", e.message());
        let ro = open_qcow2(&engine, "ro", "o.qcow2", true).await.unwrap();
        let (buf, r) = ro.read(128 * 1024, IoBuf::new(65536)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x22));
    })
    .unwrap();
    // QEMU agrees the image is marked corrupt.
    export(&sim, "o.qcow2", View::Current, &dir, "out.qcow2");
    let info = dir.run("qemu-img", &["info", "--output=json", "out.qcow2"]);
    assert!(info.contains("\"corrupt\": true"), "{name}: {info}");
}

#[test]
fn write_into_l1_table_is_refused() {
    if !have_qemu() {
        return;
    }
    run_case("l1", |img| be64(img, 40), "active L1 table");
}

#[test]
fn write_into_refcount_block_is_refused() {
    if !have_qemu() {
        return;
    }
    run_case("rb", |img| be64(img, be64(img, 48)), "refcount block");
}

/// The BLOCK_IMAGE_CORRUPTED events of `events`, as `data` objects.
fn corrupted(events: Vec<engine::event::Event>) -> Vec<Value> {
    events
        .into_iter()
        .filter(|e| e.name == "BLOCK_IMAGE_CORRUPTED")
        .map(|e| {
            let wire = e.to_qmp();
            assert_eq!(wire["event"], "BLOCK_IMAGE_CORRUPTED");
            assert!(wire["timestamp"]["seconds"].is_u64());
            wire["data"].clone()
        })
        .collect()
}

/// The event qemu-storage-daemon sends when a write through an NBD export of `img` hits
/// metadata (node "disk0"; the export's BlockBackend has no name, so `device` is "").
fn qemu_event(dir: &Scratch, img: &str, write: &str) -> Value {
    let node = format!("driver=qcow2,node-name=disk0,file.driver=file,file.filename={img}");
    dir.run(
        "qemu-storage-daemon",
        &[
            "--chardev",
            "socket,id=m,path=qmp.sock,server=on,wait=off",
            "--monitor",
            "m",
            "--blockdev",
            &node,
            "--nbd-server",
            "addr.type=unix,addr.path=nbd.sock",
            "--export",
            "type=nbd,id=e,node-name=disk0,writable=on",
            "--daemonize",
        ],
    );
    // --daemonize returns once both sockets listen.
    let mut qmp = UnixStream::connect(dir.path("qmp.sock")).unwrap();
    let mut lines = BufReader::new(qmp.try_clone().unwrap()).lines();
    lines.next().unwrap().unwrap(); // greeting
    qmp.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    lines.next().unwrap().unwrap();
    let (_, out) = dir.run_status(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            write,
            "nbd+unix:///disk0?socket=nbd.sock",
        ],
    );
    assert!(out.contains("Input/output error"), "{out}");
    qmp.write_all(b"{\"execute\": \"quit\"}\n").unwrap();
    let mut found = None;
    for line in lines {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "BLOCK_IMAGE_CORRUPTED" {
            assert!(found.is_none(), "QEMU sent a second corruption event");
            found = Some(v["data"].clone());
        }
    }
    found.expect("qemu-storage-daemon sent no BLOCK_IMAGE_CORRUPTED")
}

/// Through QMP: blockdev-add of the crafted image, a write that would hit the L1 table fails
/// with a clear EIO error, BLOCK_IMAGE_CORRUPTED is emitted once with the fields QEMU sends
/// (offset and size of the refused write, fatal), the image is marked corrupt, later writes
/// fail without new events, and no byte of the image other than the corrupt bit changes.
#[test]
fn corruption_event_through_qmp_matches_qemu() {
    let have_qsd = std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_qemu() {
        return;
    }
    assert!(
        have_qsd || std::env::var("BLK_REQUIRE_QEMU").as_deref() != Ok("1"),
        "qemu-storage-daemon required"
    );
    let dir = Scratch::new("overlap-event");
    let img = crafted(&dir, |img| be64(img, 40));
    let l1 = be64(&img, 40);
    let sim = sim_with(12, &[("o.qcow2", img.clone())]);
    let engine = engine_of(&sim);
    let data = sim
        .block_on(async move {
            let add = json!({"execute": "blockdev-add", "arguments": {
                "driver": "qcow2", "node-name": "disk0",
                "file": {"driver": "file", "filename": "o.qcow2"}}});
            assert_eq!(qmp::execute(&engine, &add).await, json!({"return": {}}));
            let bb = engine
                .device_add("vd0", "disk0", BackendOptions::tool(false))
                .unwrap();
            let (_, r) = bb
                .write(10 * 65536, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
                .await;
            let e = r.expect_err("a write over the L1 table must fail");
            assert_eq!(e.errno(), Some(Errno::EIO));
            assert_eq!(
                e.message(),
                "qcow2: Marking image as corrupt: Preventing invalid write on metadata \
                 (overlaps with active L1 table); further corruption events will be suppressed"
            );
            let events = corrupted(engine.take_events());
            assert_eq!(events.len(), 1, "{events:?}");
            // Later writes, anywhere, fail without another event: the node has no driver
            // left, as in QEMU.
            for off in [10 * 65536, 3 << 20] {
                let (_, r) = bb.write(off, IoBuf::filled(512, 1), ReqFlags::NONE).await;
                assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOMEDIUM));
            }
            assert!(corrupted(engine.take_events()).is_empty());
            engine.shutdown().await.unwrap();
            events[0].clone()
        })
        .unwrap();
    assert_eq!(
        data,
        json!({"device": "vd0", "node-name": "disk0",
               "msg": "Preventing invalid write on metadata (overlaps with active L1 table)",
               "fatal": true, "offset": l1, "size": 4096})
    );
    let after = sim.fs().file_bytes("o.qcow2").unwrap();
    let mut expect = img.clone();
    expect[79] |= 2;
    assert!(after == expect, "only the corrupt bit may change");
    if !have_qsd {
        return;
    }
    std::fs::write(dir.path("q.qcow2"), &img).unwrap();
    let mut q = qemu_event(&dir, "q.qcow2", "write -P 0xee 640k 4k");
    assert_eq!(q["device"], "");
    q["device"] = json!("vd0");
    assert_eq!(data, q, "blk's event differs from QEMU's");
    assert_eq!(dir.read("q.qcow2")[79] & 2, 2);
}

/// A data cluster offset that is not cluster aligned: on a read-only image reading it is EIO
/// and a non-fatal event (nothing written); on a writable image the event is fatal and the
/// image is marked corrupt. Repeats are not reported again.
#[test]
fn misaligned_cluster_offset_is_reported() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("overlap-misaligned");
    let img = crafted(&dir, |img| be64(img, 40) + 512);
    for ro in [true, false] {
        let sim = sim_with(13, &[("o.qcow2", img.clone())]);
        let engine = engine_of(&sim);
        let events = sim
            .block_on(async move {
                let bb = open_qcow2(&engine, "disk0", "o.qcow2", ro).await.unwrap();
                // Read-only: EIO each time, other data still reads. Writable: the fatal
                // corruption takes the driver away, as in QEMU (qemu-io: "read failed: No
                // medium found" from the second read on).
                let (_, r) = bb.read(10 * 65536, IoBuf::new(512)).await;
                assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO));
                let later = if ro { Errno::EIO } else { Errno::ENOMEDIUM };
                let (_, r) = bb.read(10 * 65536, IoBuf::new(512)).await;
                assert_eq!(r.unwrap_err().errno(), Some(later));
                let (buf, r) = bb.read(0, IoBuf::new(512)).await;
                if ro {
                    r.unwrap();
                    assert!(buf.as_slice().iter().all(|&b| b == 0x11));
                } else {
                    assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOMEDIUM));
                }
                let ev = corrupted(engine.take_events());
                engine.shutdown().await.unwrap();
                ev
            })
            .unwrap();
        assert_eq!(events.len(), 1, "ro={ro}: {events:?}");
        let e = &events[0];
        assert_eq!(e["fatal"], !ro, "ro={ro}");
        assert_eq!(e["node-name"], "disk0");
        assert_eq!(e["device"], "dev-disk0");
        assert!(e.get("offset").is_none() && e.get("size").is_none());
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .starts_with("Cluster allocation offset 0x30200 unaligned (L2 offset: "),
            "{e}"
        );
        let after = sim.fs().file_bytes("o.qcow2").unwrap();
        let mut expect = img.clone();
        if !ro {
            expect[79] |= 2;
        }
        assert!(
            after == expect,
            "ro={ro}: image changed beyond the corrupt bit"
        );
    }
}

/// The whole story on one image: blk refuses a write over the L1 table and marks the image
/// corrupt; a normal read-write open is then refused, but a check-mode open (`x-check`, as
/// `blk check` uses) lets `-r all` repair it as qemu-img does (the L1 cluster's refcount
/// raised to 2, COPIED cleared on the bad entry), which clears the corrupt bit. Guest writes
/// are refused until then; afterwards the same write copies on write to a new cluster and
/// the L1 table is left intact. `qemu-img check` finds the result clean.
#[test]
fn corrupt_image_is_repaired_in_check_mode() {
    if !have_qemu() {
        return;
    }
    use engine::drivers::qcow2::{Repair, check_node};
    let dir = Scratch::new("overlap-repair");
    let img = crafted(&dir, |img| be64(img, 40));
    let l1 = be64(&img, 40) as usize;
    let l1_before = img[l1..l1 + 512].to_vec();
    let sim = sim_with(14, &[("o.qcow2", img)]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", "o.qcow2", false).await.unwrap();
        let (_, r) = bb
            .write(10 * 65536, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
            .await;
        r.unwrap_err();
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    assert_eq!(sim.fs().file_bytes("o.qcow2").unwrap()[79] & 2, 2);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let e = open_qcow2(&engine, "rw", "o.qcow2", false)
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.message(),
            "qcow2: Image is corrupt; cannot be opened read/write"
        );
        engine
            .blockdev_add(json!({"driver": "qcow2", "node-name": "c", "x-check": true,
                "file": {"driver": "file", "filename": "o.qcow2"}}))
            .await
            .unwrap();
        let bb = engine
            .device_add("dev-c", "c", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb
            .write(3 << 20, IoBuf::filled(512, 1), ReqFlags::NONE)
            .await;
        assert!(r.unwrap_err().message().contains("marked corrupt"));
        let rep = check_node(&bb.root().unwrap().node(), Some(Repair::All))
            .await
            .unwrap();
        assert_eq!(
            (
                rep.corruptions,
                rep.leaks,
                rep.corruptions_fixed,
                rep.check_errors
            ),
            (0, 0, 2, 0),
            "{:#?}",
            rep.messages
        );
        bb.write(10 * 65536, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        let (buf, r) = bb.read(10 * 65536, IoBuf::new(8192)).await;
        r.unwrap();
        assert!(buf.as_slice()[..4096].iter().all(|&b| b == 0xee));
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    let after = sim.fs().file_bytes("o.qcow2").unwrap();
    assert_eq!(after[79] & 2, 0, "the repair clears the corrupt bit");
    assert!(
        after[l1..l1 + 512] == l1_before[..],
        "the L1 table was damaged"
    );
    export(&sim, "o.qcow2", View::Current, &dir, "fixed.qcow2");
    dir.check("fixed.qcow2", false);
}

/// A 1 MiB image written by qemu-io (guest cluster 0 is 0x11s), with `poke` applied; returns
/// the image and the value `poke` returned.
fn hand_corrupted(dir: &Scratch, poke: fn(&mut Vec<u8>) -> u64) -> (Vec<u8>, u64) {
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "h.qcow2", "1M"],
    );
    dir.run("qemu-io", &["-c", "write -P 0x11 0 64k", "h.qcow2"]);
    let mut img = dir.read("h.qcow2");
    let v = poke(&mut img);
    (img, v)
}

/// Add 0x200 to the big-endian u64 at `at`; returns the new value's offset bits.
fn misalign(img: &mut [u8], at: u64) -> u64 {
    let new = be64(img, at) + 0x200;
    img[at as usize..at as usize + 8].copy_from_slice(&new.to_be_bytes());
    new & 0x00ff_ffff_ffff_fe00
}

/// Issue 10 bug 9: an unaligned refcount block offset met at run time (allocating a cluster)
/// was an EIO error but the image was not marked corrupt. QEMU marks it, with this wording
/// (taken from qemu-io on the same hand-corrupted image).
#[test]
fn unaligned_refblock_offset_marks_the_image_corrupt() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("overlap-refblock");
    let (img, off) = hand_corrupted(&dir, |img| {
        let rt = be64(img, 48);
        misalign(img, rt)
    });
    let sim = sim_with(15, &[("h.qcow2", img)]);
    let engine = engine_of(&sim);
    let events = sim
        .block_on(async move {
            let bb = open_qcow2(&engine, "q", "h.qcow2", false).await.unwrap();
            let (_, r) = bb
                .write(512 << 10, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
                .await;
            let e = r.expect_err("allocating through a misaligned refblock must fail");
            assert_eq!(e.errno(), Some(Errno::EIO));
            assert_eq!(
                e.message(),
                format!(
                    "qcow2: Marking image as corrupt: Refblock offset {off:#x} unaligned \
                     (reftable index: 0); further corruption events will be suppressed"
                )
            );
            let ev = corrupted(engine.take_events());
            engine.shutdown().await.unwrap();
            ev
        })
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fatal"], true);
    export(&sim, "h.qcow2", View::Durable, &dir, "out.qcow2");
    let info = dir.run("qemu-img", &["info", "out.qcow2"]);
    assert!(info.contains("corrupt: true"), "{info}");
}

/// An unaligned data cluster offset in an L2 entry, per request kind, as QEMU reports it:
/// rewriting the cluster in place and reading it are fatal; a discard or an unmapping zero
/// write frees the entry, reports the cluster it cannot free (not fatal) and succeeds.
#[test]
fn unaligned_data_cluster_offset_is_reported_per_request() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("overlap-datacluster");
    let (img, l2) = hand_corrupted(&dir, |img| be64(img, be64(img, 40)) & 0x00ff_ffff_fffe_0000);
    let mut img = img;
    let host = misalign(&mut img, l2);
    let cases: [(&str, bool, String); 4] = [
        (
            "write",
            true,
            format!("Data cluster offset {host:#x} unaligned (guest offset: 0)"),
        ),
        (
            "read",
            true,
            format!(
                "Cluster allocation offset {host:#x} unaligned (L2 offset: {l2:#x}, L2 index: 0)"
            ),
        ),
        (
            "discard",
            false,
            format!("Cannot free unaligned cluster {host:#x}"),
        ),
        (
            "zero",
            false,
            format!("Cannot free unaligned cluster {host:#x}"),
        ),
    ];
    for (op, fatal, msg) in cases {
        let sim = sim_with(16, &[("h.qcow2", img.clone())]);
        let engine = engine_of(&sim);
        let events = sim
            .block_on(async move {
                let bb = open_qcow2(&engine, "q", "h.qcow2", false).await.unwrap();
                let r = match op {
                    "write" => bb.write(0, IoBuf::filled(4096, 1), ReqFlags::NONE).await.1,
                    "read" => bb.read(0, IoBuf::new(4096)).await.1,
                    "discard" => bb.discard(0, 65536).await,
                    _ => bb.write_zeroes(0, 65536, ReqFlags::MAY_UNMAP).await,
                };
                assert_eq!(r.is_err(), fatal, "{op}: {r:?}");
                let ev = corrupted(engine.take_events());
                engine.shutdown().await.unwrap();
                ev
            })
            .unwrap();
        assert_eq!(events.len(), 1, "{op}: {events:?}");
        assert_eq!(events[0]["fatal"], fatal, "{op}");
        assert_eq!(events[0]["msg"], msg, "{op}");
        let corrupt = sim.fs().file_bytes("h.qcow2").unwrap()[79] & 2 != 0;
        assert_eq!(corrupt, fatal, "{op}: corrupt bit");
    }
}
