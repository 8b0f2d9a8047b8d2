//! qcow2 external data files (incompatible bit 2, `data_file`/`data_file_raw`) against QEMU:
//! images QEMU wrote read identically in blk; blk's writes, zero writes and discards leave an
//! image `qemu-img check` finds clean and `qemu-img compare` finds equal to the model, and with
//! data_file_raw the data file itself stays a raw image of the guest disk; images blk creates
//! are read by QEMU; a missing or unnamed data file and a misplaced `data-file` option are
//! clear errors.

use crate::qcow2_support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::drivers::qcow2::CreateOptions;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;
use sim::View;

const SIZE: u64 = 4 << 20;

fn qemu_io(dir: &Scratch, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(img);
    dir.run("qemu-io", &args);
}

fn to_raw(dir: &Scratch, img: &str) -> Vec<u8> {
    let raw = format!("{img}.raw-out");
    dir.run("qemu-img", &["convert", "-O", "raw", img, &raw]);
    dir.read(&raw)
}

/// Seeded writes, zero writes and discards through blk on the open image `img` (its data
/// file already loaded), applied to `model` too.
async fn random_io(bb: &engine::backend::BlockBackend, seed: u64, model: &RefCell<Vec<u8>>) {
    // Guest cluster 0 sits at offset 0 of the data file: an offset that means "unallocated"
    // in the image file itself.
    bb.write(0, IoBuf::filled(1000, 0x3c), ReqFlags::NONE)
        .await
        .1
        .unwrap();
    model.borrow_mut()[..1000].fill(0x3c);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..40u8 {
        let off = rng.next_u64() % (SIZE - 300_000);
        let len = 1 + rng.next_u64() % 300_000;
        let (o, l) = (off as usize, len as usize);
        match rng.next_u32() % 6 {
            0 => {
                bb.write_zeroes(off, len, ReqFlags::MAY_UNMAP)
                    .await
                    .unwrap();
                model.borrow_mut()[o..o + l].fill(0);
            }
            1 => {
                bb.write_zeroes(off, len, ReqFlags::NONE).await.unwrap();
                model.borrow_mut()[o..o + l].fill(0);
            }
            2 => {
                // Without a backing file, discarded clusters read as zeroes; partial
                // clusters keep their data.
                bb.discard(off, len).await.unwrap();
                let cs = 65536;
                let (s, e) = (off.div_ceil(cs) * cs, (off + len) / cs * cs);
                if s < e {
                    model.borrow_mut()[s as usize..e as usize].fill(0);
                }
            }
            _ => {
                let pat = 0x40 | i;
                bb.write(off, IoBuf::filled(l, pat), ReqFlags::NONE)
                    .await
                    .1
                    .unwrap();
                model.borrow_mut()[o..o + l].fill(pat);
            }
        }
    }
}

/// blk opens `img` + `data` (in the simulator), checks it reads `expected`, runs seeded I/O,
/// closes; the exported image must pass `qemu-img check`, compare equal to the model in
/// QEMU, and (raw) its data file must equal the model byte for byte.
fn blk_round_trip(dir: &Scratch, img: &str, data: &str, expected: Vec<u8>, raw: bool, seed: u64) {
    let files = [(img, dir.read(img)), (data, dir.read(data))];
    let sim = sim_with(seed, &files);
    let engine = engine_of(&sim);
    let model = Rc::new(RefCell::new(expected));
    let m = model.clone();
    let name = img.to_string();
    sim.block_on(async move {
        let bb = open_qcow2(&engine, "q", &name, false).await.unwrap();
        assert!(
            read_all(&bb).await == *m.borrow(),
            "{name}: blk reads differently"
        );
        random_io(&bb, seed, &m).await;
        assert!(
            read_all(&bb).await == *m.borrow(),
            "{name}: blk reads back differently"
        );
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    // The image keeps naming the same data file: export both under their names.
    export(&sim, img, View::Current, dir, img);
    export(&sim, data, View::Current, dir, data);
    dir.check(img, false);
    assert_qemu_reads(dir, img, &model.borrow(), img);
    if raw {
        assert!(
            dir.read(data) == *model.borrow(),
            "{img}: the raw data file is no longer the guest disk"
        );
    }
}

#[test]
fn qemu_written_data_file_images_read_and_take_writes() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("datafile-qemu");
    for (i, raw) in [false, true].into_iter().enumerate() {
        let (img, data) = (format!("q{i}.qcow2"), format!("q{i}.data"));
        let o = format!(
            "data_file={data},data_file_raw={}",
            if raw { "on" } else { "off" }
        );
        dir.run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &o,
                &img,
                &SIZE.to_string(),
            ],
        );
        qemu_io(
            &dir,
            &img,
            &[
                "write -P 0x11 64k 100k",
                "write -P 0x22 1M 300k",
                "write -z 1100k 64k",
                "discard 2M 128k",
                "write -P 0x33 3000k 5k",
            ],
        );
        let expected = to_raw(&dir, &img);
        if raw {
            assert!(dir.read(&data) == expected, "QEMU's raw data file");
        }
        blk_round_trip(&dir, &img, &data, expected, raw, 20 + i as u64);
    }
}

#[test]
fn blk_created_data_file_images_read_in_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("datafile-blk");
    for (i, raw) in [false, true].into_iter().enumerate() {
        let (img, data) = (format!("b{i}.qcow2"), format!("b{i}.data"));
        let sim = sim_with(
            30 + i as u64,
            &[
                (data.as_str(), vec![0u8; SIZE as usize]),
                (img.as_str(), vec![]),
            ],
        );
        let engine = engine_of(&sim);
        let opts = CreateOptions {
            size: SIZE,
            data_file: Some(data.clone()),
            data_file_raw: raw,
            ..CreateOptions::default()
        };
        let name = img.clone();
        sim.block_on(async move { create_on(&engine, &name, &opts).await })
            .unwrap();
        export(&sim, &img, View::Current, &dir, &img);
        export(&sim, &data, View::Current, &dir, &data);
        dir.check(&img, false);
        let info = dir.run("qemu-img", &["info", "--output=json", &img]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let fs = &info["format-specific"]["data"];
        assert_eq!(fs["data-file"], json!(data), "{info}");
        assert_eq!(fs["data-file-raw"], json!(raw), "{info}");
        assert_qemu_reads(&dir, &img, &vec![0u8; SIZE as usize], &img);
        blk_round_trip(
            &dir,
            &img,
            &data,
            vec![0u8; SIZE as usize],
            raw,
            40 + i as u64,
        );
        // And QEMU writes into what blk wrote.
        qemu_io(&dir, &img, &["write -P 0x77 500k 70k"]);
        dir.check(&img, false);
    }
}

#[test]
fn data_file_errors_are_clear() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("datafile-bad");
    dir.run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=d.raw",
            "i.qcow2",
            "1M",
        ],
    );
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"],
    );
    qemu_io(&dir, "i.qcow2", &["write -P 0x5a 0 64k"]);
    // The data file name extension turned into an unknown one: bit 2 without a name.
    let mut unnamed = dir.read("i.qcow2");
    let at = unnamed
        .windows(4)
        .position(|w| w == [0x44, 0x41, 0x54, 0x41])
        .expect("data file extension");
    unnamed[at..at + 4].copy_from_slice(&[0x44, 0x41, 0x54, 0x00]);
    std::fs::write(dir.path("unnamed.qcow2"), &unnamed).unwrap();
    let (code, qemu_err) = dir.run_status("qemu-io", &["-c", "read 0 1k", "unnamed.qcow2"]);
    assert_ne!(code, 0);
    assert!(
        qemu_err.contains("'data-file' is required for this image"),
        "{qemu_err}"
    );
    let files = [
        ("i.qcow2", dir.read("i.qcow2")),
        ("d.raw", dir.read("d.raw")),
        ("other.raw", vec![0x66u8; 1 << 20]),
        ("unnamed.qcow2", unnamed),
        ("plain.qcow2", dir.read("plain.qcow2")),
    ];
    let sim = sim_with(50, &files);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let e = open_qcow2(&engine, "u", "unnamed.qcow2", true)
            .await
            .err()
            .unwrap();
        assert_eq!(e.message(), "'data-file' is required for this image");
        let e = engine
            .blockdev_add(json!({"driver": "qcow2", "node-name": "p",
                "file": {"driver": "file", "filename": "plain.qcow2"},
                "data-file": {"driver": "file", "filename": "other.raw"}}))
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.message(),
            "'data-file' can only be set for images with an external data file"
        );
        // The option names the data file explicitly (here another one).
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "o", "read-only": true,
                "file": {"driver": "file", "filename": "i.qcow2"},
                "data-file": {"driver": "file", "filename": "other.raw"}}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("dev-o", "o", engine::backend::BackendOptions::tool(true))
            .unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(
            buf.as_slice().iter().all(|&b| b == 0x66),
            "{:?}",
            &buf.as_slice()[..8]
        );
        // The image opens with its own data file and grows with it (as QEMU's does): the old
        // data stays, the new tail reads as zeroes.
        let bb = open_qcow2(&engine, "i", "i.qcow2", false).await.unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x5a));
        bb.truncate(2 << 20).await.unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x5a));
        let (buf, r) = bb.read((2 << 20) - 4096, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    // The data file missing: the open names it.
    let sim = sim_with(51, &[("i.qcow2", dir.read("i.qcow2"))]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let e = open_qcow2(&engine, "i", "i.qcow2", true)
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("d.raw"), "{e}");
    })
    .unwrap();
}
