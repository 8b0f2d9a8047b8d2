//! qcow2 backing chains against QEMU: depth-3 chains QEMU wrote (mixed cluster sizes, v2/v3,
//! refcount widths, lazy refcounts, zero clusters) read identically in blk through every
//! layer; blk's writes into the top copy-on-write from the lower layers and leave an image
//! `qemu-img check` finds clean and `qemu-img compare` finds equal to the model, with the lower
//! layers untouched. Backing names are resolved against the overlay's directory (decoys with
//! the same names relative to the working directory must not be read), and backing_fmt is
//! honoured (a raw file that starts with the qcow2 magic stays raw; a wrong format is a clear
//! error, as in QEMU).

use crate::qcow2_support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::View;

/// One layer: (cluster size, compat, refcount bits, lazy refcounts).
type Layer = (u64, &'static str, u32, bool);

const SIZE: u64 = 6 << 20;

/// Chains, base first. Every cluster size, both versions, several refcount widths and lazy
/// refcounts appear somewhere, and neighbouring layers differ in cluster size.
const CHAINS: &[[Layer; 3]] = &[
    [
        (65536, "1.1", 16, false),
        (65536, "1.1", 16, false),
        (65536, "1.1", 16, false),
    ],
    [
        (4096, "0.10", 16, false),
        (65536, "1.1", 8, true),
        (512, "1.1", 1, false),
    ],
    [
        (2 << 20, "1.1", 64, false),
        (4096, "0.10", 16, false),
        (65536, "1.1", 32, true),
    ],
    [
        (512, "1.1", 4, true),
        (2 << 20, "1.1", 2, false),
        (4096, "1.1", 16, false),
    ],
];

fn qemu_io(dir: &Scratch, img: &str, cmds: &[String]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    dir.run("qemu-io", &args);
}

/// `qemu-img create` of one layer at `path` (backing name `backing`, as stored).
fn create_layer(dir: &Scratch, path: &str, l: Layer, backing: Option<&str>) {
    let (cs, compat, rb, lazy) = l;
    let opts = format!(
        "cluster_size={cs},compat={compat},refcount_bits={rb},lazy_refcounts={}",
        if lazy { "on" } else { "off" }
    );
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", &opts];
    if let Some(b) = backing {
        args.extend_from_slice(&["-b", b, "-F", "qcow2"]);
    }
    let size = SIZE.to_string();
    args.extend_from_slice(&[path, &size]);
    dir.run("qemu-img", &args);
}

/// QEMU writes into one layer: seeded data writes, and on v3 zero writes and discards (which
/// leave zero clusters over the layers below).
fn fill_layer(dir: &Scratch, path: &str, v3: bool, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cmds = Vec::new();
    for i in 0..12 {
        let off = rng.next_u64() % (SIZE - 300_000);
        let len = 1 + rng.next_u64() % 300_000;
        let pat = (seed as u8).wrapping_mul(16).wrapping_add(i + 1);
        let c = match rng.next_u32() % 6 {
            0 if v3 => format!("write -z {off} {len}"),
            1 if v3 => {
                // Discards act on whole clusters: aligned to 2 MiB covers every size.
                let a = off & !((2 << 20) - 1);
                format!("discard {a} 2M")
            }
            _ => format!("write -P {pat} {off} {len}"),
        };
        cmds.push(c);
    }
    qemu_io(dir, path, &cmds);
}

#[test]
fn depth3_chains_read_identically_and_take_cow_writes() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("chain3");
    for (ci, chain) in CHAINS.iter().enumerate() {
        let ci = ci as u64;
        std::fs::create_dir_all(dir.path("d/sub")).unwrap();
        // base in d/sub, mid and top in d; names relative to the overlay's directory.
        let (base, mid, top) = ("d/sub/base.qcow2", "d/mid.qcow2", "d/top.qcow2");
        create_layer(&dir, base, chain[0], None);
        fill_layer(&dir, base, chain[0].1 == "1.1", 10 * ci + 1);
        create_layer(&dir, mid, chain[1], Some("sub/base.qcow2"));
        fill_layer(&dir, mid, chain[1].1 == "1.1", 10 * ci + 2);
        create_layer(&dir, top, chain[2], Some("mid.qcow2"));
        fill_layer(&dir, top, chain[2].1 == "1.1", 10 * ci + 3);
        let raw = format!("expected{ci}.raw");
        dir.run("qemu-img", &["convert", "-O", "raw", top, &raw]);
        let expected = dir.read(&raw);
        let (base_bytes, mid_bytes) = (dir.read(base), dir.read(mid));
        // Decoys where a name resolved against the working directory would land.
        let decoy = vec![0xeeu8; 1 << 20];
        let files = [
            (base, base_bytes.clone()),
            (mid, mid_bytes.clone()),
            (top, dir.read(top)),
            ("mid.qcow2", decoy.clone()),
            ("sub/base.qcow2", decoy),
        ];
        let sim = sim_with(60 + ci, &files);
        let engine = engine_of(&sim);
        let model = Rc::new(RefCell::new(expected));
        let m = model.clone();
        sim.block_on(async move {
            let bb = open_qcow2(&engine, "top", top, false).await.unwrap();
            assert!(
                read_all(&bb).await == *m.borrow(),
                "chain {ci}: blk reads the QEMU-written chain differently"
            );
            // Seeded writes, zero writes and discards into the top, mostly unaligned so
            // they copy on write from whichever layer holds the rest of the cluster.
            let mut rng = ChaCha8Rng::seed_from_u64(100 + ci);
            for i in 0..30u8 {
                let off = rng.next_u64() % (SIZE - 200_000);
                let len = 1 + rng.next_u64() % 200_000;
                let (o, l) = (off as usize, len as usize);
                match rng.next_u32() % 8 {
                    0 if chain[2].1 == "1.1" => {
                        bb.write_zeroes(off, len, ReqFlags::MAY_UNMAP)
                            .await
                            .unwrap();
                        m.borrow_mut()[o..o + l].fill(0);
                    }
                    1 => {
                        // Discard keeps nothing guaranteed except that it is not data
                        // loss elsewhere; read what the image now says for the model.
                        bb.discard(off, len).await.unwrap();
                        let (buf, r) = bb.read(off, IoBuf::new(l)).await;
                        r.unwrap();
                        m.borrow_mut()[o..o + l].copy_from_slice(buf.as_slice());
                    }
                    _ => {
                        let pat = 0x80 | i;
                        bb.write(off, IoBuf::filled(l, pat), ReqFlags::NONE)
                            .await
                            .1
                            .unwrap();
                        m.borrow_mut()[o..o + l].fill(pat);
                    }
                }
            }
            assert!(
                read_all(&bb).await == *m.borrow(),
                "chain {ci}: blk reads back differently after its writes"
            );
            engine.shutdown().await.unwrap();
        })
        .unwrap();
        assert!(
            sim.fs().file_bytes(base).unwrap() == base_bytes
                && sim.fs().file_bytes(mid).unwrap() == mid_bytes,
            "chain {ci}: a lower layer was modified"
        );
        let out = "d/top-out.qcow2";
        export(&sim, top, View::Current, &dir, out);
        dir.check(out, false);
        let model_raw = format!("model{ci}.raw");
        std::fs::write(dir.path(&model_raw), &*model.borrow()).unwrap();
        let (code, text) = dir.run_status(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", &model_raw, out],
        );
        assert_eq!(code, 0, "chain {ci}: qemu-img compare: {text}");
        assert_qemu_reads(&dir, out, &model.borrow(), &format!("chain {ci}"));
    }
}

/// backing_fmt decides how the backing file is opened, whatever its bytes look like: a raw
/// file that starts with the qcow2 magic is read as raw data (QEMU does the same), and a qcow2
/// image named with backing_fmt=raw exposes its file bytes. A backing_fmt that does not fit
/// the file fails to open with QEMU's reason, and a missing backing file is named.
#[test]
fn backing_fmt_is_honoured() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("backing-fmt");
    let mut base = vec![0x78u8; 1 << 20];
    base[..4].copy_from_slice(&[0x51, 0x46, 0x49, 0xfb]);
    std::fs::write(dir.path("base.raw"), &base).unwrap();
    let create = |name: &str, b: &str, fmt: &str| {
        dir.run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-u", "-b", b, "-F", fmt, name, "1M",
            ],
        );
    };
    create("raw-top.qcow2", "base.raw", "raw");
    // A real qcow2 image used as a raw backing file.
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"],
    );
    qemu_io(&dir, "q.qcow2", &["write -P 0x42 0 64k".to_string()]);
    create("qraw-top.qcow2", "q.qcow2", "raw");
    create("wrong.qcow2", "base.raw", "qcow2");
    create("missing.qcow2", "nowhere.qcow2", "qcow2");
    let mut files = Vec::new();
    for f in [
        "base.raw",
        "q.qcow2",
        "raw-top.qcow2",
        "qraw-top.qcow2",
        "wrong.qcow2",
        "missing.qcow2",
    ] {
        files.push((f, dir.read(f)));
    }
    let want_raw = {
        let raw = "raw-top.raw";
        dir.run("qemu-img", &["convert", "-O", "raw", "raw-top.qcow2", raw]);
        dir.read(raw)
    };
    let want_qraw = {
        dir.run(
            "qemu-img",
            &["convert", "-O", "raw", "qraw-top.qcow2", "qraw.raw"],
        );
        dir.read("qraw.raw")
    };
    assert!(want_raw == base);
    let q_file = dir.read("q.qcow2");
    assert!(want_qraw[..q_file.len()] == q_file[..]);
    let (code, qemu_err) = dir.run_status(
        "qemu-img",
        &["convert", "-O", "raw", "wrong.qcow2", "w.raw"],
    );
    assert_ne!(code, 0);
    assert!(qemu_err.contains("Unsupported qcow2 version"), "{qemu_err}");
    let sim = sim_with(70, &files);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "a", "raw-top.qcow2", true)
            .await
            .unwrap();
        assert!(
            read_all(&bb).await == want_raw,
            "raw backing with qcow2 magic"
        );
        let bb = open_qcow2(&engine, "b", "qraw-top.qcow2", true)
            .await
            .unwrap();
        assert!(
            read_all(&bb).await == want_qraw,
            "qcow2 file as raw backing"
        );
        let e = open_qcow2(&engine, "c", "wrong.qcow2", true)
            .await
            .err()
            .expect("a raw file opened as qcow2 backing");
        assert!(
            e.message().contains("Could not open backing file")
                && e.message().contains("Unsupported qcow2 version"),
            "{e}"
        );
        let e = open_qcow2(&engine, "d", "missing.qcow2", true)
            .await
            .err()
            .expect("a missing backing file");
        assert!(
            e.message().contains("Could not open backing file")
                && e.message().contains("nowhere.qcow2"),
            "{e}"
        );
    })
    .unwrap();
}
