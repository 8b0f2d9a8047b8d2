//! qcow2 interoperability with QEMU: images written by qemu-img/qemu-io read identically in
//! blk (cluster sizes 512 B..2 MiB × refcount widths 1..64 × v2/v3 × lazy refcounts, each also
//! as zlib- and zstd-compressed copies, and a depth-2 backing chain; depth-3 chains are in
//! qcow2_chain.rs), and images blk writes pass `qemu-img check` and compare equal to the
//! expected bytes.

use crate::qcow2_support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::View;

/// (cluster size, compat, refcount bits, lazy refcounts): every cluster size from 512 B to
/// 2 MiB, every refcount width from 1 to 64 bits, both versions, lazy refcounts on and off.
const MATRIX: &[(u64, &str, u32, bool)] = &[
    (512, "1.1", 16, false),
    (512, "1.1", 1, false),
    (512, "1.1", 32, true),
    (512, "0.10", 16, false),
    (4096, "1.1", 64, false),
    (4096, "1.1", 4, true),
    (4096, "0.10", 16, false),
    (16384, "1.1", 2, false),
    (65536, "1.1", 16, false),
    (65536, "1.1", 16, true),
    (65536, "1.1", 2, false),
    (65536, "0.10", 16, false),
    (2 << 20, "1.1", 8, false),
    (2 << 20, "1.1", 1, true),
    (2 << 20, "0.10", 16, false),
];

fn make_qemu_image(dir: &Scratch, name: &str, cs: u64, compat: &str, rb: u32, size: u64) {
    make_qemu_image_lazy(dir, name, (cs, compat, rb, false), size);
}

fn make_qemu_image_lazy(
    dir: &Scratch,
    name: &str,
    (cs, compat, rb, lazy): (u64, &str, u32, bool),
    size: u64,
) {
    let lazy = if lazy { "on" } else { "off" };
    let opts =
        format!("cluster_size={cs},compat={compat},refcount_bits={rb},lazy_refcounts={lazy}");
    dir.run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            name,
            &size.to_string(),
        ],
    );
}

fn qemu_io(dir: &Scratch, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    dir.run("qemu-io", &args);
}

fn to_raw(dir: &Scratch, img: &str) -> Vec<u8> {
    let raw = format!("{img}.raw");
    dir.run("qemu-img", &["convert", "-O", "raw", img, &raw]);
    dir.read(&raw)
}

#[test]
fn qemu_written_images_read_identically() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("read");
    for (i, &(cs, compat, rb, lazy)) in MATRIX.iter().enumerate() {
        let size = 8u64 << 20;
        let img = format!("m{i}.qcow2");
        make_qemu_image_lazy(&dir, &img, (cs, compat, rb, lazy), size);
        let zero = if compat == "1.1" {
            "write -z 2M 64k"
        } else {
            "write -P 0 2M 64k"
        };
        qemu_io(
            &dir,
            &img,
            &[
                "write -P 0xab 0 64k",
                "write -P 0xcd 1M 3k",
                "write -P 0x11 3000 1000",
                "write -P 0x22 2040k 16k",
                zero,
                "write -P 0x33 7M 1M",
            ],
        );
        let expected = to_raw(&dir, &img);
        let files = [(img.as_str(), dir.read(&img))];
        let sim = sim_with(i as u64, &files);
        let engine = engine_of(&sim);
        let got = sim
            .block_on(async move {
                let bb = open_qcow2(&engine, "q", &img, true).await.unwrap();
                read_all(&bb).await
            })
            .unwrap();
        assert!(
            got == expected,
            "image {i} ({cs}, {compat}, {rb}) reads differently"
        );
        // Compressed copies of the same image (zstd needs v3).
        for ct in ["zlib", "zstd"] {
            if ct == "zstd" && compat != "1.1" {
                continue;
            }
            let comp = format!("c{i}-{ct}.qcow2");
            let img = format!("m{i}.qcow2");
            dir.run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    &format!("cluster_size={cs},compat={compat},compression_type={ct}"),
                    &img,
                    &comp,
                ],
            );
            let files = [(comp.as_str(), dir.read(&comp))];
            let sim = sim_with(100 + i as u64, &files);
            let engine = engine_of(&sim);
            let got = sim
                .block_on(async move {
                    let bb = open_qcow2(&engine, "c", &comp, true).await.unwrap();
                    read_all(&bb).await
                })
                .unwrap();
            assert!(
                got == expected,
                "{ct}-compressed image {i} ({cs}, {compat}) reads differently"
            );
        }
    }
}

#[test]
fn backing_chain_reads_through() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("backing");
    for (i, &(cs, compat, rb)) in [(65536u64, "1.1", 16u32), (4096, "0.10", 16)]
        .iter()
        .enumerate()
    {
        make_qemu_image(&dir, "base.qcow2", cs, compat, rb, 4 << 20);
        qemu_io(&dir, "base.qcow2", &["write -P 0x5a 0 4M"]);
        let opts = format!("cluster_size={cs},compat={compat}");
        dir.run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
                "6M",
            ],
        );
        qemu_io(
            &dir,
            "top.qcow2",
            &["write -P 0x77 100k 10k", "write -P 0x78 5M 4k"],
        );
        if compat == "1.1" {
            qemu_io(&dir, "top.qcow2", &["write -z 1M 128k"]);
        }
        let expected = to_raw(&dir, "top.qcow2");
        let files = [
            ("base.qcow2", dir.read("base.qcow2")),
            ("top.qcow2", dir.read("top.qcow2")),
        ];
        let sim = sim_with(7 + i as u64, &files);
        let engine = engine_of(&sim);
        let expected2 = expected.clone();
        sim.block_on(async move {
            let bb = open_qcow2(&engine, "top", "top.qcow2", false)
                .await
                .unwrap();
            assert!(
                read_all(&bb).await == expected2,
                "chain {i} reads differently"
            );
            // A write into a cluster backed by the base copies the rest of the cluster.
            let (_, r) = bb
                .write(200_000, IoBuf::filled(1000, 0x99), ReqFlags::NONE)
                .await;
            r.unwrap();
            bb.flush().await.unwrap();
        })
        .unwrap();
        export(&sim, "top.qcow2", View::Current, &dir, "top2.qcow2");
        dir.run("cp", &["base.qcow2", "base-keep.qcow2"]);
        let mut expected = expected;
        expected[200_000..201_000].fill(0x99);
        dir.check("top2.qcow2", false);
        assert!(
            to_raw(&dir, "top2.qcow2") == expected,
            "chain {i} after COW write"
        );
    }
}

/// Random writes, zero writes and discards through a BlockBackend; the image must pass
/// `qemu-img check` and read back (in QEMU) as the model says.
fn random_io(dir: &Scratch, img: &str, seed: u64, compat: &str) {
    let size = 4u64 << 20;
    let files = [(img, dir.read(img))];
    let sim = sim_with(seed, &files);
    let engine = engine_of(&sim);
    let model = Rc::new(RefCell::new(vec![0u8; size as usize]));
    let m2 = model.clone();
    let img2 = img.to_string();
    let v3 = compat == "1.1";
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", &img2, false).await.unwrap();
        let env = engine.env().clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let done = Rc::new(RefCell::new(0u32));
        let n = 40u32;
        for i in 0..n {
            let (bb, m, done) = (bb.clone(), m2.clone(), done.clone());
            let op = rng.next_u32() % 10;
            let off = rng.next_u64() % (size - 200_000);
            let len = 1 + rng.next_u64() % 150_000;
            // Disjoint per-request regions are not needed: overlapping requests are applied in
            // completion order in the model because each takes effect atomically at completion
            // of its own range lock (writes to the same clusters serialise).
            env.spawn(
                "io",
                Box::pin(async move {
                    let pat = (i as u8).wrapping_mul(7).wrapping_add(1);
                    match op {
                        0 | 1 if v3 => {
                            bb.write_zeroes(off, len, ReqFlags::MAY_UNMAP)
                                .await
                                .unwrap();
                            m.borrow_mut()[off as usize..(off + len) as usize].fill(0);
                        }
                        2 => {
                            bb.flush().await.unwrap();
                        }
                        _ => {
                            let (_, r) = bb
                                .write(off, IoBuf::filled(len as usize, pat), ReqFlags::NONE)
                                .await;
                            r.unwrap();
                            m.borrow_mut()[off as usize..(off + len) as usize].fill(pat);
                        }
                    }
                    *done.borrow_mut() += 1;
                }),
            );
        }
        while *done.borrow() < n {
            env.sleep_until(env.now_ns() + 1_000_000).await;
        }
        assert!(
            read_all(&bb).await == *m2.borrow(),
            "blk reads back differently"
        );
        bb.flush().await.unwrap();
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    let out = format!("{img}.out.qcow2");
    export(&sim, img, View::Current, dir, &out);
    // A clean close leaves no dirty bit (lazy refcounts written back).
    assert_eq!(dir.read(&out)[79] & 1, 0, "{img}: dirty bit left set");
    dir.check(&out, false);
    assert!(
        to_raw(dir, &out) == *model.borrow(),
        "{img}: QEMU reads differently"
    );
}

#[test]
fn blk_written_images_pass_qemu_check() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("write");
    for (i, &(cs, compat, rb, lazy)) in MATRIX.iter().enumerate() {
        let img = format!("w{i}.qcow2");
        make_qemu_image_lazy(&dir, &img, (cs, compat, rb, lazy), 4 << 20);
        random_io(&dir, &img, 1000 + i as u64, compat);
    }
}

/// An image QEMU left dirty (lazy refcounts, `abort`): read-only opens read it as is; a
/// read-write open rebuilds the refcounts, after which writes work and `qemu-img check` is
/// clean.
#[test]
fn dirty_lazy_refcount_image_is_repaired_on_open() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("dirty");
    for (i, &(cs, rb)) in [(65536u64, 16u32), (512, 1), (4096, 64)].iter().enumerate() {
        let opts = format!("cluster_size={cs},refcount_bits={rb},lazy_refcounts=on");
        dir.run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, "d.qcow2", "4M"],
        );
        let _ = dir.run_status(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0xcd 3M 100k",
                "-c",
                "abort",
                "d.qcow2",
            ],
        );
        let img = dir.read("d.qcow2");
        assert_eq!(img[79] & 1, 1, "qemu-io abort should leave the dirty bit");
        let mut expected = vec![0u8; 4 << 20];
        expected[..1 << 20].fill(0xab);
        expected[3 << 20..(3 << 20) + 100 * 1024].fill(0xcd);
        let sim = sim_with(30 + i as u64, &[("d.qcow2", img)]);
        let engine = engine_of(&sim);
        let exp = expected.clone();
        sim.block_on(async move {
            let ro = open_qcow2(&engine, "ro", "d.qcow2", true).await.unwrap();
            assert!(read_all(&ro).await == exp);
            engine.device_del("dev-ro").await.unwrap();
            engine.blockdev_del("ro").await.unwrap();
            let bb = open_qcow2(&engine, "rw", "d.qcow2", false).await.unwrap();
            assert!(read_all(&bb).await == exp);
            bb.write(2 << 20, IoBuf::filled(300_000, 0x44), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            bb.flush().await.unwrap();
        })
        .unwrap();
        expected[2 << 20..(2 << 20) + 300_000].fill(0x44);
        let out = format!("d{i}.qcow2");
        export(&sim, "d.qcow2", View::Current, &dir, &out);
        dir.check(&out, false);
        assert!(
            to_raw(&dir, &out) == expected,
            "repaired image {i} reads differently"
        );
    }
}
