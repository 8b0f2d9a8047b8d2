//! qcow2 overlap checks: a crafted image whose L2 entry points into metadata (the L1 table, a
//! refcount block) refuses the guest write that would overwrite it, marks the image corrupt
//! (durably), keeps the metadata and the other data intact, refuses later writes and a
//! read-write reopen.

mod qcow2_support;

use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
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
        // Every later write fails too; reads still work.
        let (_, r) = bb
            .write(3 << 20, IoBuf::filled(512, 1), ReqFlags::NONE)
            .await;
        assert!(r.is_err(), "writes after the corruption must fail");
        let (buf, r) = bb.read(0, IoBuf::new(65536)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x11));
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
