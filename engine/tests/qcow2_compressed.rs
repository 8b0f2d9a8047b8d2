//! Compressed qcow2 images written by QEMU (`qemu-img convert -c`, zlib and zstd, cluster
//! sizes 512 B to 2 MiB) read identically in blk; writes into compressed clusters copy them
//! out through the decompressor and leave an image `qemu-img check` finds clean; damaged
//! compressed clusters are I/O errors in blk as in QEMU, and the rest of the image still reads.

use crate::qcow2_support;

use engine::error::Errno;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::View;

const SIZE: u64 = 4 << 20;

fn be64(b: &[u8], o: u64) -> u64 {
    u64::from_be_bytes(b[o as usize..o as usize + 8].try_into().unwrap())
}

/// Guest data that compresses but not trivially (words from a small vocabulary, so zstd
/// and deflate emit literals and matches, not only runs), with zero and pattern areas and
/// a stretch of random bytes that stays uncompressed.
fn source_data(seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words: [&[u8]; 8] = [
        b"qcow2 ",
        b"cluster ",
        b"refcount ",
        b"L2 ",
        b"zstd ",
        b"deflate ",
        b"\n",
        b"blk ",
    ];
    let mut d = Vec::with_capacity(SIZE as usize);
    while d.len() < SIZE as usize {
        d.extend_from_slice(words[rng.next_u32() as usize % words.len()]);
    }
    d.truncate(SIZE as usize);
    d[1 << 20..(1 << 20) + 300_000].fill(0);
    d[2 << 20..(2 << 20) + 70_000].fill(0x5c);
    let r = &mut d[3 << 20..(3 << 20) + 200_000];
    rng.fill_bytes(r);
    d
}

/// `qemu-img check --output=json` of `img`.
fn qemu_check_json(dir: &Scratch, img: &str) -> serde_json::Value {
    let (code, text) = dir.run_status("qemu-img", &["check", "--output=json", img]);
    assert_eq!(code, 0, "qemu-img check {img}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Write the raw source and convert it with `-c` to a qcow2 image with `opts`.
fn make_compressed(dir: &Scratch, img: &str, opts: &str, data: &[u8]) {
    std::fs::write(dir.path("src.raw"), data).unwrap();
    dir.run(
        "qemu-img",
        &[
            "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, "src.raw", img,
        ],
    );
}

#[test]
fn qemu_compressed_images_read_identically_and_take_writes() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("compressed");
    let data = source_data(11);
    let mut case = 0u64;
    for ct in ["zlib", "zstd"] {
        for cs in [512u64, 4096, 65536, 2 << 20] {
            case += 1;
            let img = format!("{ct}-{cs}.qcow2");
            let opts = format!("cluster_size={cs},compression_type={ct}");
            make_compressed(&dir, &img, &opts, &data);
            let bytes = dir.read(&img);
            assert_eq!(bytes[104], (ct == "zstd") as u8, "{img}: compression type");
            let report = qemu_check_json(&dir, &img);
            assert!(
                report["compressed-clusters"].as_u64().unwrap() > 0,
                "{img}: QEMU wrote no compressed cluster: {report}"
            );
            let sim = sim_with(case, &[(img.as_str(), bytes)]);
            let engine = engine_of(&sim);
            let (name, exp) = (img.clone(), data.clone());
            // Offsets and lengths scaled to the cluster size, inside the 4 MiB disk.
            let (w, wlen) = ((cs * 9 + 5).min(SIZE / 2 + 5), (3 * cs).min(SIZE / 4));
            let (z, zlen) = (3 * SIZE / 4, (2 * cs).min(SIZE / 4));
            sim.block_on(async move {
                let bb = open_qcow2(&engine, "c", &name, false).await.unwrap();
                assert!(read_all(&bb).await == exp, "{name} reads differently");
                // Partial writes into compressed clusters (COW of the decompressed rest), a
                // write over whole clusters, and zeroes over some.
                bb.write(1000, IoBuf::filled(700, 0xe1), ReqFlags::NONE)
                    .await
                    .1
                    .unwrap();
                bb.write(w, IoBuf::filled(wlen as usize, 0xe2), ReqFlags::NONE)
                    .await
                    .1
                    .unwrap();
                bb.write_zeroes(z, zlen, ReqFlags::MAY_UNMAP).await.unwrap();
                bb.flush().await.unwrap();
            })
            .unwrap();
            let mut expected = data.clone();
            expected[1000..1700].fill(0xe1);
            expected[w as usize..(w + wlen) as usize].fill(0xe2);
            expected[z as usize..(z + zlen) as usize].fill(0);
            let out = format!("out-{img}");
            export(&sim, &img, View::Current, &dir, &out);
            dir.check(&out, false);
            assert_qemu_reads(&dir, &out, &expected, &out);
        }
    }
}

/// Host offset of the compressed data of guest cluster `gc` (in L2 table 0).
fn compressed_offset(img: &[u8], gc: u64) -> u64 {
    let bits = u32::from_be_bytes(img[20..24].try_into().unwrap());
    let l2 = be64(img, be64(img, 40)) & 0x00ff_ffff_ffff_fe00;
    let e = be64(img, l2 + 8 * gc);
    assert_ne!(e & (1 << 62), 0, "cluster {gc} is not compressed");
    e & ((1u64 << (62 - (bits - 8))) - 1)
}

/// A damaged compressed cluster fails to read with EIO in blk, as in QEMU (`qemu-io` read
/// error), naming the problem; the other clusters still read, and nothing is written.
#[test]
fn damaged_compressed_clusters_are_io_errors() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("compressed-bad");
    let data = source_data(12);
    for (i, ct) in ["zlib", "zstd"].iter().enumerate() {
        let img = format!("bad-{ct}.qcow2");
        make_compressed(
            &dir,
            &img,
            &format!("cluster_size=65536,compression_type={ct}"),
            &data,
        );
        let mut bytes = dir.read(&img);
        let off = compressed_offset(&bytes, 0) as usize;
        // Garbage over the start of cluster 0's stream.
        bytes[off..off + 16].copy_from_slice(&[0xff; 16]);
        std::fs::write(dir.path(&img), &bytes).unwrap();
        let (code, text) =
            dir.run_status("qemu-io", &["-f", "qcow2", "-r", "-c", "read 0 4k", &img]);
        assert!(
            code != 0 || text.contains("Input/output error"),
            "QEMU reads the damaged {ct} cluster: {text}"
        );
        let sim = sim_with(40 + i as u64, &[(img.as_str(), bytes.clone())]);
        let engine = engine_of(&sim);
        let (name, exp, ct2) = (img.clone(), data.clone(), ct.to_string());
        sim.block_on(async move {
            let bb = open_qcow2(&engine, "c", &name, true).await.unwrap();
            let (_, r) = bb.read(0, IoBuf::new(4096)).await;
            let e = r.unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EIO), "{e}");
            assert!(
                e.message().contains(&format!(
                    "cannot decompress cluster ({})",
                    ct2.replace("zlib", "deflate")
                )),
                "{e}"
            );
            let (buf, r) = bb.read(65536, IoBuf::new(65536 * 3)).await;
            r.unwrap();
            assert!(buf.as_slice() == &exp[65536..65536 * 4]);
        })
        .unwrap();
        assert!(
            sim.fs().file_bytes(&img).unwrap() == bytes,
            "reading changed the image"
        );
    }
}

/// An image whose header says zstd while its clusters hold deflate streams (or the other
/// way round) is not read as garbage: every compressed cluster is an I/O error.
#[test]
fn wrong_compression_type_is_an_io_error() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("compressed-type");
    let data = source_data(13);
    make_compressed(&dir, "z.qcow2", "compression_type=zlib", &data);
    let mut bytes = dir.read("z.qcow2");
    bytes[104] = 1; // zstd
    bytes[79] |= 1 << 3; // incompatible bit 3 goes with it
    let sim = sim_with(50, &[("z.qcow2", bytes)]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "c", "z.qcow2", true).await.unwrap();
        let (_, r) = bb.read(0, IoBuf::new(512)).await;
        let e = r.unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EIO), "{e}");
        assert!(e.message().contains("(zstd)"), "{e}");
    })
    .unwrap();
}
