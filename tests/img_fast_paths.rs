//! The paths made fast for issue #17 give qemu-img's results exactly: `map` streamed line by
//! line over an image with a run per cluster, `convert` reading chunks ahead while its writes
//! keep source order (the target file is byte-identical to qemu-img's), `compare` finding the
//! first differing sector past the first 4 KiB block of a chunk.
//!
//! Skipped with a note when `qemu-img` is not on PATH, unless `BLK_REQUIRE_QEMU=1`.

use crate::common;

use common::{Dir, QEMU_IMG, have_qemu};

/// A raw image of `blocks` 4 KiB blocks: every `every`-th one holds data (a pattern that
/// differs per block), the others zeroes.
fn striped_raw(d: &Dir, name: &str, blocks: usize, every: usize) {
    let mut data = vec![0u8; blocks * 4096];
    for (i, block) in data.chunks_mut(4096).enumerate() {
        if i % every == 0 {
            block.fill((i % 251) as u8 + 1);
        }
    }
    std::fs::write(d.0.join(name), data).unwrap();
}

#[test]
fn map_of_an_image_with_a_run_per_cluster_equals_qemu_img_map() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("map-runs");
    striped_raw(&d, "s.raw", 1024, 2);
    let create = [
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k",
    ];
    d.ok("qemu-img", &[&create[..], &["s.raw", "s.qcow2"]].concat());
    for args in [
        &["map", "--output=json", "s.qcow2"][..],
        &["map", "s.qcow2"],
        &[
            "map",
            "--output=json",
            "--start-offset=6k",
            "--max-length=1M",
            "s.qcow2",
        ],
    ] {
        let (b, q) = (d.run(QEMU_IMG, args), d.run("qemu-img", args));
        assert_eq!(b.code, q.code, "exit code of {args:?}");
        assert_eq!(b.stdout, q.stdout, "stdout of {args:?}");
        assert_eq!(b.stderr, q.stderr, "stderr of {args:?}");
    }
}

#[test]
fn convert_reading_ahead_writes_the_same_file_as_qemu_img() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("convert-order");
    // 24 MiB: more than the 8 chunks of 2 MiB read ahead; a third of it zeroes.
    striped_raw(&d, "s.raw", 6144, 3);
    for (prog, out) in [(QEMU_IMG, "b.qcow2"), ("qemu-img", "q.qcow2")] {
        d.ok(prog, &["convert", "-f", "raw", "-O", "qcow2", "s.raw", out]);
    }
    let (b, q) = (
        std::fs::read(d.0.join("b.qcow2")).unwrap(),
        std::fs::read(d.0.join("q.qcow2")).unwrap(),
    );
    assert!(b == q, "blk's convert laid the target out differently");
    d.check_clean("b.qcow2");
}

#[test]
fn compare_reports_the_first_differing_sector_inside_a_chunk() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("compare-sector");
    striped_raw(&d, "a.raw", 1024, 1);
    d.ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"],
    );
    // One byte changed in the middle of a sector, in the second 4 KiB block of the second chunk.
    d.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0 2102000 1", "a.qcow2"],
    );
    let args = ["compare", "a.raw", "a.qcow2"];
    let (b, q) = (d.run(QEMU_IMG, &args), d.run("qemu-img", &args));
    assert_eq!((b.code, &b.stdout), (q.code, &q.stdout));
    assert_eq!(b.stdout, "Content mismatch at offset 2101760!\n");
}
