//! qcow2 robustness: bad images give clear errors (no panic, no huge allocation), images made
//! by blk's `create` pass `qemu-img check`, resize and block status, the backing option and
//! autoclear bits.

use crate::qcow2_support;

use engine::backend::BackendOptions;
use engine::drivers::qcow2::{Compat, CreateOptions, create};
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::json;
use sim::View;

fn poke(img: &mut [u8], off: usize, bytes: &[u8]) {
    img[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A valid v3 image with 64 KiB clusters, built by blk's own `create` on the simulator.
fn good_image() -> Vec<u8> {
    let sim = sim_with(1, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let opts = CreateOptions {
            size: 1 << 20,
            ..CreateOptions::default()
        };
        create_on(&engine, "img", &opts).await;
    })
    .unwrap();
    sim.fs().file_bytes("img").unwrap()
}

fn open_err(img: Vec<u8>, read_only: bool) -> String {
    let sim = sim_with(2, &[("bad", img)]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        match open_qcow2(&engine, "q", "bad", read_only).await {
            Ok(_) => "opened".to_string(),
            Err(e) => e.message().to_string(),
        }
    })
    .unwrap()
}

#[test]
fn bad_images_give_clear_errors() {
    let good = good_image();
    assert_eq!(open_err(good.clone(), false), "opened");
    type Mutate = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            // The file is counted in whole sectors (as QEMU does), so the header's missing
            // fields read as zeroes and the zero header length is what gets refused.
            "truncated header",
            Box::new(|i| i.truncate(50)),
            "Invalid header length 0",
        ),
        (
            "bad magic",
            Box::new(|i| poke(i, 0, b"QFI\0")),
            "not in qcow2 format",
        ),
        (
            "version 4",
            Box::new(|i| poke(i, 4, &4u32.to_be_bytes())),
            "Unsupported qcow2 version",
        ),
        (
            "cluster_bits 8",
            Box::new(|i| poke(i, 20, &8u32.to_be_bytes())),
            "Unsupported cluster size",
        ),
        (
            "cluster_bits 30",
            Box::new(|i| poke(i, 20, &30u32.to_be_bytes())),
            "Unsupported cluster size",
        ),
        (
            "L1 beyond file",
            Box::new(|i| poke(i, 40, &(1u64 << 40).to_be_bytes())),
            "beyond the end",
        ),
        (
            "L1 unaligned",
            Box::new(|i| poke(i, 40, &0x30200u64.to_be_bytes())),
            "not cluster aligned",
        ),
        (
            "L1 huge",
            Box::new(|i| poke(i, 36, &u32::MAX.to_be_bytes())),
            "too large",
        ),
        (
            "reftable beyond file",
            Box::new(|i| poke(i, 48, &(1u64 << 40).to_be_bytes())),
            "beyond the end",
        ),
        (
            "reftable huge",
            Box::new(|i| poke(i, 56, &100_000u32.to_be_bytes())),
            "Reference count table size",
        ),
        (
            "absurd size",
            Box::new(|i| poke(i, 24, &(1u64 << 61).to_be_bytes())),
            "L1 table is too small",
        ),
        (
            "refcount order 7",
            Box::new(|i| poke(i, 96, &7u32.to_be_bytes())),
            "Refcount order",
        ),
        (
            "backing outside cluster 0",
            Box::new(|i| {
                poke(i, 8, &65530u64.to_be_bytes());
                poke(i, 16, &100u32.to_be_bytes());
            }),
            "outside the first cluster",
        ),
        (
            "unknown incompatible bit",
            Box::new(|i| poke(i, 72, &(1u64 << 10).to_be_bytes())),
            "Unsupported incompatible features: Unknown incompatible feature: 400",
        ),
        (
            "external data file bit without a name",
            Box::new(|i| poke(i, 72, &(1u64 << 2).to_be_bytes())),
            "'data-file' is required for this image",
        ),
        (
            "corrupt bit",
            Box::new(|i| poke(i, 72, &2u64.to_be_bytes())),
            "qcow2: Image is corrupt; cannot be opened read/write",
        ),
        (
            "header length",
            Box::new(|i| poke(i, 100, &105u32.to_be_bytes())),
            "Invalid header length",
        ),
        (
            "huge extension",
            Box::new(|i| poke(i, 116, &0xffff_fff0u32.to_be_bytes())),
            "too large",
        ),
    ];
    for (what, mutate, want) in cases {
        let mut img = good.clone();
        mutate(&mut img);
        let got = open_err(img, false);
        assert!(got.contains(want), "{what}: expected '{want}', got '{got}'");
    }
    // The corrupt bit still allows a read-only open.
    let mut img = good.clone();
    poke(&mut img, 72, &2u64.to_be_bytes());
    assert_eq!(open_err(img, true), "opened");
}

#[test]
fn blk_created_images_pass_qemu_check() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("create");
    let variants = [
        (512u64, Compat::V3, 16u32, false),
        (4096, Compat::V3, 1, false),
        (65536, Compat::V3, 64, true),
        (65536, Compat::V2, 16, false),
        (2 << 20, Compat::V3, 4, false),
    ];
    std::fs::write(dir.path("base.raw"), vec![0x42u8; 1 << 20]).unwrap();
    for (i, &(cs, compat, rb, backing)) in variants.iter().enumerate() {
        let sim = sim_with(
            i as u64,
            &[
                ("new.qcow2", Vec::new()),
                ("base.raw", vec![0x42u8; 1 << 20]),
            ],
        );
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let opts = CreateOptions {
                size: 3 << 20,
                cluster_size: cs,
                compat,
                refcount_bits: rb,
                backing_file: backing.then(|| "base.raw".to_string()),
                backing_fmt: backing.then(|| "raw".to_string()),
                lazy_refcounts: false,
                ..CreateOptions::default()
            };
            create_on(&engine, "new.qcow2", &opts).await;
            engine
                .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f"}))
                .await
                .unwrap();
            let bb = engine
                .device_add("d2", "q", BackendOptions::tool(false))
                .unwrap();
            let (_, r) = bb
                .write(300_000, IoBuf::filled(200_000, 0x17), ReqFlags::NONE)
                .await;
            r.unwrap();
            bb.flush().await.unwrap();
        })
        .unwrap();
        let out = format!("new{i}.qcow2");
        export(&sim, "new.qcow2", View::Current, &dir, &out);
        dir.check(&out, false);
        let mut expected = vec![0u8; 3 << 20];
        if backing {
            expected[..1 << 20].fill(0x42);
        }
        expected[300_000..500_000].fill(0x17);
        assert_qemu_reads(&dir, &out, &expected, &format!("created image {i}"));
    }
}

/// Resize: growing past the L1 table's capacity moves the L1 table; shrinking over a
/// zeroed tail; block status reports data, zero and unallocated runs.
#[test]
fn resize_and_block_status() {
    let have = have_qemu();
    let dir = Scratch::new("resize");
    let sim = sim_with(77, &[("r.qcow2", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        engine
            .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": "r.qcow2"}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "f", BackendOptions::tool(false))
            .unwrap();
        // 512-byte clusters: one L1 entry maps 32 KiB, one L1 cluster 2 MiB.
        let opts = CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..CreateOptions::default()
        };
        create(&bb.root().unwrap(), &opts).await.unwrap();
        engine.device_del("d").await.unwrap();
        engine
            .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f"}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d2", "q", BackendOptions::tool(false))
            .unwrap();
        bb.write(0, IoBuf::filled(4096, 0x61), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        bb.truncate(6 << 20).await.unwrap();
        assert_eq!(bb.len().unwrap(), 6 << 20);
        bb.write((6 << 20) - 8192, IoBuf::filled(8192, 0x62), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        bb.write_zeroes(8192, 4096, ReqFlags::NONE).await.unwrap();
        let st = bb.block_status(0, 1 << 20).await.unwrap();
        assert!(
            matches!(st.mapping, engine::io::Mapping::Data { host: Some(_) }),
            "{st:?}"
        );
        assert_eq!(st.len, 4096);
        let st = bb.block_status(4096, 1 << 20).await.unwrap();
        assert_eq!(
            (st.mapping, st.len),
            (engine::io::Mapping::Unallocated, 4096)
        );
        let st = bb.block_status(8192, 1 << 20).await.unwrap();
        assert!(
            matches!(st.mapping, engine::io::Mapping::Zero { .. }),
            "{st:?}"
        );
        assert_eq!(st.len, 4096);
        // Shrinking over an allocated tail frees it: see qcow2_shrink.rs.
        bb.discard(0, 0).await.unwrap();
        bb.flush().await.unwrap();
        engine.device_del("d2").await.unwrap();
        engine.blockdev_del("q").await.unwrap();
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "q2", "file": "f", "discard": "unmap"}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("d3", "q2", BackendOptions::tool(false))
            .unwrap();
        assert_eq!(bb.len().unwrap(), 6 << 20);
        let data = read_all(&bb).await;
        assert!(data[..4096].iter().all(|&b| b == 0x61));
        assert!(data[4096..(6 << 20) - 8192].iter().all(|&b| b == 0));
        assert!(data[(6 << 20) - 8192..].iter().all(|&b| b == 0x62));
        bb.write_zeroes((6 << 20) - 8192, 8192, ReqFlags::MAY_UNMAP)
            .await
            .unwrap();
        bb.truncate(3 << 20).await.unwrap();
        bb.flush().await.unwrap();
    })
    .unwrap();
    if have {
        export(&sim, "r.qcow2", View::Current, &dir, "r.qcow2");
        dir.check("r.qcow2", false);
        let info = dir.run("qemu-img", &["info", "r.qcow2"]);
        assert!(info.contains("virtual size: 3 MiB"), "{info}");
    }
}

/// The `backing` option: null (no backing file), a node name, or the header's name with
/// probing when there is no backing format; unknown autoclear bits are cleared on first write.
#[test]
fn backing_option_and_autoclear() {
    let sim = sim_with(
        5,
        &[("o.qcow2", Vec::new()), ("base.raw", vec![0x42u8; 1 << 20])],
    );
    let engine = engine_of(&sim);
    let simr = &sim;
    sim.block_on(async move {
        let opts = CreateOptions {
            size: 1 << 20,
            backing_file: Some("base.raw".into()),
            ..CreateOptions::default()
        };
        create_on(&engine, "o.qcow2", &opts).await;
        engine.blockdev_del("f").await.unwrap();
        // Set autoclear bit 2, which no one defines, and bit 0 (bitmaps), which blk keeps as
        // QEMU does.
        let mut img = simr.fs().file_bytes("o.qcow2").unwrap();
        img[95] = 5;
        simr.fs().create_file("o2.qcow2", &img).unwrap();
        // Probed (no backing_fmt): raw.
        let bb = open_qcow2(&engine, "a", "o.qcow2", true).await.unwrap();
        assert!(read_all(&bb).await.iter().all(|&b| b == 0x42));
        // backing: null.
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "b", "read-only": true,
                "backing": null, "file": {"driver": "file", "filename": "o.qcow2"}}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("db", "b", BackendOptions::tool(true))
            .unwrap();
        assert!(read_all(&bb).await.iter().all(|&b| b == 0));
        // backing: a node name.
        engine
            .blockdev_add(
                json!({"driver": "null-co", "node-name": "n", "size": 1048576,
                "read-zeroes": true}),
            )
            .await
            .unwrap();
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "c", "read-only": true,
                "backing": "n", "file": {"driver": "file", "filename": "o.qcow2"}}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("dc", "c", BackendOptions::tool(true))
            .unwrap();
        assert!(read_all(&bb).await.iter().all(|&b| b == 0));
        // Unknown autoclear bits are cleared when the image is opened read-write (as QEMU
        // does at open), not left for the first write; read-only opens leave them alone.
        assert_eq!(simr.fs().file_bytes("o2.qcow2").unwrap()[95], 5);
        let bb = open_qcow2(&engine, "r", "o2.qcow2", true).await.unwrap();
        assert_eq!(simr.fs().file_bytes("o2.qcow2").unwrap()[95], 5);
        drop(bb);
        let bb = open_qcow2(&engine, "w", "o2.qcow2", false).await.unwrap();
        assert_eq!(simr.fs().file_bytes("o2.qcow2").unwrap()[95], 1);
        bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE)
            .await
            .1
            .unwrap();
    })
    .unwrap();
}
