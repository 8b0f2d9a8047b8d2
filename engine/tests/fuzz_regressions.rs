//! Regression tests for what the fuzz targets (`fuzz/`, see README) found, one test per
//! finding, each reproducing the input that failed and the behaviour now required:
//!
//! * `scenario_parse`: a first line of only `#` characters was accepted as a purpose; a
//!   multi-byte character before a column used for slicing (`io DEV CMD`, `expect return`,
//!   `expect output`) panicked (character columns were used as byte offsets); `expect output`
//!   with nothing after it (e.g. only a comment) indexed a missing word.
//! * `qcow2_structured`: rebuilding the refcounts of an image with a persistent dirty bitmap
//!   (`check -r all` on an image whose structure needs a rebuild) dropped the references of the
//!   bitmap directory, tables and data clusters: the rebuilt image was corrupt, and those
//!   clusters could have been reused.
//! * `qcow2_image`: a header with 2^32-1 snapshots (or a snapshot table past the end of the
//!   file) made the check loop for hours; snapshot L1 tables and bitmap tables past the end of
//!   the file were read as zeroes, up to 32 MiB each, for every entry. An L2 entry pointing
//!   43 TB past the end of the file made a guest write grow the (sparse) file there, and the
//!   check then allocated a count for each of its clusters (740 GB).
//! * `qcow2_io`, `qcow2_structured`: `create` accepted a backing file together with
//!   preallocation or data-file-raw, making images whose backing file is never read (QEMU
//!   refuses both).

use crate::qcow2_support;

use engine::backend::BackendOptions;
use engine::driver::Prealloc;
use engine::drivers::qcow2::{
    CheckReport, CreateOptions, Header, RawExtension, Repair, check_node, create,
};
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::json;
use sim::View;
use sim::scenario::parse;

#[test]
fn scenario_purpose_of_only_hashes_is_refused() {
    // The fuzzer's input was "##".
    for text in ["##", "#", "#  \n", "### \nseed 1\n"] {
        let err = parse("f.scn", text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.scn:1:1: the first line must be a '# purpose' comment",
            "{text:?}"
        );
    }
    assert_eq!(parse("f.scn", "## p\n").unwrap().purpose, "p");
}

#[test]
fn scenario_columns_after_multibyte_characters_do_not_panic() {
    // The fuzzer's input: an `io` line whose words contain U+FFFD (3 bytes in UTF-8).
    let raw = b"#@\nio \x0c\x9d\t\x9d\x9d\x9d\x9d\x9d\x9d\x9d\x9d\xca\x9d\t\tio\x0c\x0c.\x1a";
    let text = String::from_utf8_lossy(raw);
    let _ = parse("f.scn", &text);
    // The command after a device name with multi-byte characters is cut at the right place.
    let sc = parse("f.scn", "# p\nio d€v read 0 512\n").unwrap();
    let dbg = format!("{:?}", sc.steps);
    assert!(dbg.contains("command: \"read 0 512\""), "{dbg}");
    // `expect output` and `expect return` take the rest of the line the same way.
    let sc = parse("f.scn", "# p\nio d€v read 0 512\nexpect output \"€ x\"\n").unwrap();
    let dbg = format!("{:?}", sc.steps);
    assert!(dbg.contains("€ x"), "{dbg}");
    let text = "# p\nqmp {\"execute\": \"query-block\"}\nexpect return€ {}\n";
    let _ = parse("f.scn", text);
}

#[test]
fn scenario_expect_output_without_text_is_an_error() {
    // The fuzzer's input had `expect output # purpose`: the comment is cut, no words remain.
    for line in [
        "expect output # purpose",
        "expect output",
        "expect output   ",
    ] {
        let text = format!("# p\nio d read 0 512\n{line}\n");
        let err = parse("f.scn", &text).unwrap_err();
        assert_eq!(
            err.message, "'expect' needs the expected output line",
            "{line:?}"
        );
        assert_eq!(err.line, 3);
    }
}

fn be64(b: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(b[off as usize..off as usize + 8].try_into().unwrap())
}

fn put(b: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let end = off as usize + bytes.len();
    if b.len() < end {
        b.resize(end, 0);
    }
    b[off as usize..end].copy_from_slice(bytes);
}

/// A 1 MiB v3 image with 4 KiB clusters and 8 KiB of 0x42 at 8 KiB, written by blk.
fn blk_image() -> Vec<u8> {
    let sim = sim_with(3, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let e = engine.clone();
    sim.block_on(async move {
        let opts = CreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            ..CreateOptions::default()
        };
        create_on(&e, "img", &opts).await;
        e.blockdev_del("f").await.unwrap();
        let bb = open_qcow2(&e, "q", "img", false).await.unwrap();
        bb.write(8192, IoBuf::filled(8192, 0x42), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        bb.flush().await.unwrap();
        e.device_del("dev-q").await.unwrap();
        e.blockdev_del("q").await.unwrap();
    })
    .unwrap();
    sim.fs().durable_bytes("img").unwrap()
}

/// Open `img` read-only and check it: the open error, or the check report.
fn open_and_check(img: Vec<u8>) -> Result<CheckReport, String> {
    let sim = sim_with(5, &[("img", img)]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let _bb = open_qcow2(&engine, "q", "img", true)
            .await
            .map_err(|e| e.to_string())?;
        let rep = check_node(&engine.node("q").unwrap(), None).await.unwrap();
        engine.device_del("dev-q").await.unwrap();
        engine.blockdev_del("q").await.unwrap();
        Ok(rep)
    })
    .unwrap()
}

/// A 1 MiB v3 image with 4 KiB clusters and some data, written by blk, plus one persistent
/// dirty bitmap laid out by hand after the end of the file (its clusters have no refcount:
/// the check wants a refcount rebuild).
fn image_with_bitmap() -> Vec<u8> {
    let cs = 4096u64;
    let mut img = blk_image();
    let h = Header::parse(&img[..cs as usize], img.len() as u64).unwrap();
    // Bitmap table (one entry: a data cluster), the data cluster, the directory.
    let end = (img.len() as u64).next_multiple_of(cs);
    let (table, data, dir) = (end, end + cs, end + 2 * cs);
    put(&mut img, table, &data.to_be_bytes());
    put(&mut img, data + cs - 1, &[0xff]);
    let mut d = Vec::new();
    d.extend_from_slice(&table.to_be_bytes());
    d.extend_from_slice(&1u32.to_be_bytes()); // table size
    d.extend_from_slice(&0u32.to_be_bytes()); // flags
    d.extend_from_slice(&[1, 16]); // type, granularity bits
    d.extend_from_slice(&2u16.to_be_bytes()); // name size
    d.extend_from_slice(&0u32.to_be_bytes()); // extra data
    d.extend_from_slice(b"b0");
    d.resize(32, 0);
    put(&mut img, dir, &d);
    img.resize((dir + cs) as usize, 0);
    let mut x = Vec::new();
    x.extend_from_slice(&1u32.to_be_bytes());
    x.extend_from_slice(&0u32.to_be_bytes());
    x.extend_from_slice(&(d.len() as u64).to_be_bytes());
    x.extend_from_slice(&dir.to_be_bytes());
    let mut h2 = h.clone();
    h2.unknown_exts.push(RawExtension {
        magic: 0x2385_2875,
        data: x,
    });
    h2.autoclear |= 1;
    let hdr = h2.serialize();
    put(&mut img, 0, &vec![0u8; cs as usize]);
    put(&mut img, 0, &hdr);
    assert_eq!(be64(&img, 48), h.reftable_offset);
    img
}

#[test]
fn refcount_rebuild_keeps_persistent_bitmap_clusters() {
    let img = image_with_bitmap();
    let sim = sim_with(4, &[("img", img)]);
    let engine = engine_of(&sim);
    let e = engine.clone();
    let (first, after) = sim
        .block_on(async move {
            // Opened for check/repair (as `blk check` does): a plain read-write open would clear
            // the bitmaps autoclear bit blk does not maintain, and the bitmap would no longer
            // count at all.
            e.blockdev_add(json!({"driver": "qcow2", "node-name": "q", "x-check": true,
                                  "file": {"driver": "file", "filename": "img"}}))
                .await
                .unwrap();
            let bb = e
                .device_add("dev-q", "q", BackendOptions::tool(false))
                .unwrap();
            let node = e.node("q").unwrap();
            let first = check_node(&node, None).await.unwrap();
            let repaired = check_node(&node, Some(Repair::All)).await.unwrap();
            assert_eq!(
                (repaired.corruptions, repaired.check_errors),
                (0, 0),
                "repair left corruptions: {:?}",
                repaired.messages
            );
            let after = check_node(&node, None).await.unwrap();
            // The data is untouched.
            let (buf, r) = bb.read(8192, IoBuf::new(8192)).await;
            r.unwrap();
            assert!(buf.as_slice().iter().all(|&b| b == 0x42));
            e.device_del("dev-q").await.unwrap();
            e.blockdev_del("q").await.unwrap();
            (first, after)
        })
        .unwrap();
    // Before: the bitmap's three clusters are referenced but have refcount 0.
    assert_eq!(first.corruptions, 3, "{:?}", first.messages);
    assert_eq!(
        (after.corruptions, after.leaks, after.check_errors),
        (0, 0, 0),
        "rebuilt image: {:?}",
        after.messages
    );
    // QEMU agrees: the bitmap's clusters are counted, nothing leaks or overlaps.
    if have_qemu() {
        let dir = Scratch::new("fuzz-bitmap");
        export(&sim, "img", View::Durable, &dir, "img.qcow2");
        dir.check("img.qcow2", false);
        let info = dir.run("qemu-img", &["info", "img.qcow2"]);
        assert!(info.contains("b0"), "bitmap lost: {info}");
    }
}

#[test]
fn huge_snapshot_count_is_refused_at_open() {
    // The fuzzer's image: nb_snapshots = 0xffffffff; the check looped over them for hours.
    let mut img = blk_image();
    put(&mut img, 60, &u32::MAX.to_be_bytes());
    put(&mut img, 64, &4096u64.to_be_bytes());
    let err = open_and_check(img).unwrap_err();
    assert_eq!(err, "qcow2: Too many snapshots");
}

#[test]
fn snapshot_table_past_the_end_of_the_file_is_refused_at_open() {
    let mut img = blk_image();
    let len = img.len() as u64;
    put(&mut img, 60, &1000u32.to_be_bytes());
    put(&mut img, 64, &(len - 4096).to_be_bytes());
    let err = open_and_check(img).unwrap_err();
    assert!(
        err.starts_with("qcow2: Snapshot table at ") && err.contains("beyond the end"),
        "{err}"
    );
}

#[test]
fn snapshot_and_bitmap_tables_past_the_end_of_the_file_are_corruptions_not_reads() {
    // Three snapshots whose 32 MiB L1 tables lie far past the end of the file.
    let mut img = blk_image();
    let table = (img.len() as u64).next_multiple_of(4096);
    let mut off = table;
    for i in 0..3u64 {
        let mut e = Vec::new();
        e.extend_from_slice(&((1u64 << 40) + i * 4096).to_be_bytes());
        e.extend_from_slice(&(4u32 << 20).to_be_bytes());
        e.extend_from_slice(&1u16.to_be_bytes());
        e.extend_from_slice(&0u16.to_be_bytes());
        e.extend_from_slice(&[0u8; 16]);
        e.extend_from_slice(&0u32.to_be_bytes());
        e.extend_from_slice(&16u32.to_be_bytes());
        e.extend_from_slice(&[0u8; 16]);
        e.push(b'1' + i as u8);
        e.resize(e.len().next_multiple_of(8), 0);
        put(&mut img, off, &e);
        off += e.len() as u64;
    }
    img.resize(off.next_multiple_of(4096) as usize, 0);
    put(&mut img, 60, &3u32.to_be_bytes());
    put(&mut img, 64, &table.to_be_bytes());
    let rep = open_and_check(img).unwrap();
    let beyond = rep
        .messages
        .iter()
        .filter(|m| m.contains("L1 table lies beyond the end of the file"))
        .count();
    assert_eq!(beyond, 3, "{:?}", rep.messages);

    // A bitmap whose table (32 MiB) and a directory that lie past the end of the file: as in
    // QEMU, which loads the bitmaps at open, the image does not open (the table is larger than
    // QEMU accepts, the directory reads as zeroes), and nothing huge is read.
    let img = image_with_bitmap();
    let h = Header::parse(&img[..4096], img.len() as u64).unwrap();
    let ext = &h.unknown_exts[0].data;
    let dir = be64(ext, 16);
    let mut bad_table = img.clone();
    put(&mut bad_table, dir, &(1u64 << 40).to_be_bytes());
    put(&mut bad_table, dir + 8, &(4u32 << 20).to_be_bytes());
    let err = open_and_check(bad_table).unwrap_err();
    assert_eq!(err, "Bitmap 'b0' doesn't satisfy the constraints");
    let mut bad_dir = img.clone();
    let ext_at = find(&bad_dir[..4096], &0x2385_2875u32.to_be_bytes()) + 8;
    put(
        &mut bad_dir,
        ext_at as u64 + 8,
        &(64u64 << 20).to_be_bytes(),
    );
    put(
        &mut bad_dir,
        ext_at as u64 + 16,
        &(1u64 << 40).to_be_bytes(),
    );
    let err = open_and_check(bad_dir).unwrap_err();
    assert_eq!(
        err,
        "bitmaps_ext: bitmap directory size (67108864) exceeds the maximum supported size \
         (67107840)"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("bytes present")
}

#[test]
fn check_of_a_file_grown_far_past_its_clusters_is_an_error_not_an_allocation() {
    // The data cluster at guest 8 KiB now points 43 TB past the end of the file (COPIED, so it
    // is written in place): the guest write makes a sparse file of that size.
    let mut img = blk_image();
    let l1 = be64(&img, 40);
    let l2 = be64(&img, l1) & 0x00ff_ffff_ffff_fe00;
    put(
        &mut img,
        l2 + 16,
        &((1u64 << 63) | 0x2b00_0000_0000).to_be_bytes(),
    );
    let sim = sim_with(6, &[("img", img)]);
    let engine = engine_of(&sim);
    let e = engine.clone();
    let err = sim
        .block_on(async move {
            let bb = open_qcow2(&e, "q", "img", false).await.unwrap();
            bb.write(8192, IoBuf::filled(512, 1), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            check_node(&e.node("q").unwrap(), None).await.unwrap_err()
        })
        .unwrap();
    assert!(sim.fs().file_len("img").unwrap() > 0x2b00_0000_0000);
    let msg = err.message();
    assert!(
        msg.starts_with("qcow2: the image file is too large to check (115")
            && msg.ends_with(" clusters, at most 67108864)"),
        "{msg}"
    );
    assert_eq!(err.errno(), Some(engine::Errno::ENOMEM));
}

#[test]
fn create_refuses_a_backing_file_with_preallocation_or_a_raw_data_file() {
    let sim = sim_with(7, &[("img", Vec::new()), ("data", Vec::new())]);
    let engine = engine_of(&sim);
    let e = engine.clone();
    let errs = sim
        .block_on(async move {
            e.blockdev_add(serde_json::json!({"driver": "file", "node-name": "f",
                "filename": "img"}))
                .await
                .unwrap();
            let bb = e
                .device_add("c", "f", engine::backend::BackendOptions::tool(false))
                .unwrap();
            let root = bb.root().unwrap();
            let base = CreateOptions {
                size: 1 << 20,
                backing_file: Some("base.raw".into()),
                backing_fmt: Some("raw".into()),
                ..CreateOptions::default()
            };
            let mut errs = Vec::new();
            for p in [Prealloc::Metadata, Prealloc::Falloc, Prealloc::Full] {
                let o = CreateOptions {
                    preallocation: p,
                    ..base.clone()
                };
                errs.push(create(&root, &o).await.unwrap_err().message().to_string());
            }
            let o = CreateOptions {
                data_file: Some("data".into()),
                data_file_raw: true,
                ..base.clone()
            };
            errs.push(create(&root, &o).await.unwrap_err().message().to_string());
            errs
        })
        .unwrap();
    let prealloc =
        "Backing file and preallocation can only be used at the same time if extended_l2 is on";
    assert_eq!(
        errs,
        [
            prealloc,
            prealloc,
            prealloc,
            "Backing file and data-file-raw cannot be used at the same time"
        ]
    );
}
