//! qcow2 allocation under stress: crashes at seeded points during allocating writes, zero
//! writes, discards and flushes (flushed data survives, `qemu-img check` finds no corruption;
//! leaks allowed), refcount table growth, and concurrent writes into one new cluster.

use crate::qcow2_support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::drivers::qcow2::CreateOptions;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;
use sim::View;

/// Crash at seeded points during allocating writes and flushes: data flushed before the crash
/// reads back after reopening, and `qemu-img check` finds no corruption (leaks allowed).
#[test]
fn crash_during_allocating_writes_keeps_flushed_data() {
    let have = have_qemu();
    let dir = Scratch::new("crash");
    for seed in 0..40u64 {
        let cs: u64 = if seed % 2 == 0 { 512 } else { 65536 };
        let sim = sim_with(seed, &[("img", Vec::new())]);
        let engine = engine_of(&sim);
        let simr = &sim;
        sim.block_on(async move {
            let opts = CreateOptions {
                size: 8 << 20,
                cluster_size: cs,
                ..CreateOptions::default()
            };
            create_on(&engine, "img", &opts).await;
            engine
                .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f",
                    "discard": "unmap"}))
                .await
                .unwrap();
            let bb = engine
                .device_add("d2", "q", BackendOptions::tool(false))
                .unwrap();
            let env = engine.env().clone();
            let durable: Rc<RefCell<Vec<(u64, u64, u8)>>> = Rc::default();
            let progress = Rc::new(RefCell::new(0u32));
            for t in 0..2u64 {
                let (bb, durable, progress) = (bb.clone(), durable.clone(), progress.clone());
                env.spawn(
                    "writer",
                    Box::pin(async move {
                        let mut mine = Vec::new();
                        for j in 0..12u64 {
                            let off = (t * 12 + j) * 300_000 + 777;
                            let len = 5000 + j * 3000;
                            let pat = (t * 16 + j + 1) as u8;
                            if bb
                                .write(off, IoBuf::filled(len as usize, pat), ReqFlags::NONE)
                                .await
                                .1
                                .is_err()
                            {
                                return;
                            }
                            mine.push((off, len, pat));
                            *progress.borrow_mut() += 1;
                            if j % 4 == 3 {
                                // Free an earlier region (its clusters get reused by later writes).
                                let (doff, dlen) =
                                    ((t * 12 + j - 2) * 300_000 + 777, 5000 + (j - 2) * 3000);
                                mine.retain(|w: &(u64, u64, u8)| w.0 != doff);
                                durable.borrow_mut().retain(|w| w.0 != doff);
                                let r = if j % 8 == 3 {
                                    bb.discard(doff & !0xffff, (dlen + 0x20000) & !0xffff).await
                                } else {
                                    bb.write_zeroes(doff, dlen, ReqFlags::MAY_UNMAP).await
                                };
                                if r.is_err() {
                                    return;
                                }
                            }
                            if j % 3 == 2 {
                                if bb.flush().await.is_err() {
                                    return;
                                }
                                durable.borrow_mut().extend(mine.drain(..));
                            }
                        }
                    }),
                );
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let target = rng.next_u32() % 24;
            while *progress.borrow() < target {
                env.sleep_until(env.now_ns() + 20_000).await;
            }
            env.sleep_until(env.now_ns() + rng.next_u64() % 200_000)
                .await;
            let report = simr.crash();
            drop(bb);
            let durable = durable.borrow().clone();
            // Restart: a new engine on the same disk.
            let engine2 = engine_of(simr);
            let bb2 = open_qcow2(&engine2, "q", "img", false).await.unwrap();
            for (off, len, pat) in durable {
                let (buf, r) = bb2.read(off, IoBuf::new(len as usize)).await;
                r.unwrap();
                assert!(
                    buf.as_slice().iter().all(|&b| b == pat),
                    "seed {seed}: flushed write at {off} lost ({report:?})"
                );
            }
            // The reopened image still allocates correctly.
            bb2.write(7 << 20, IoBuf::filled(70_000, 0xee), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            bb2.flush().await.unwrap();
        })
        .unwrap();
        if have {
            let out = format!("crash{seed}.qcow2");
            export(&sim, "img", View::Durable, &dir, &out);
            dir.check(&out, true);
        }
    }
}

/// 512-byte clusters with 64-bit refcounts: one refcount block covers 32 KiB and the first
/// refcount table 2 MiB, so writing 3 MiB needs new refcount blocks and a larger table.
#[test]
fn refcount_table_growth_passes_qemu_check() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("growth");
    for (i, rb) in [64u32, 16].into_iter().enumerate() {
        let sim = sim_with(50 + i as u64, &[("g.qcow2", Vec::new())]);
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let opts = CreateOptions {
                size: 12 << 20,
                cluster_size: 512,
                refcount_bits: rb,
                ..CreateOptions::default()
            };
            create_on(&engine, "g.qcow2", &opts).await;
            engine
                .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f",
                    "l2-cache-size": 4096, "discard": "unmap"}))
                .await
                .unwrap();
            let bb = engine
                .device_add("d2", "q", BackendOptions::tool(false))
                .unwrap();
            for k in 0..12u64 {
                let (_, r) = bb
                    .write(
                        k * (1 << 20) + 512 * k,
                        IoBuf::filled(700_000, k as u8 + 1),
                        ReqFlags::NONE,
                    )
                    .await;
                r.unwrap();
            }
            bb.discard(0, 1 << 20).await.unwrap();
            bb.flush().await.unwrap();
        })
        .unwrap();
        let out = format!("g{i}.qcow2");
        export(&sim, "g.qcow2", View::Current, &dir, &out);
        dir.check(&out, false);
        let file_len = std::fs::metadata(dir.path(&out)).unwrap().len();
        assert!(
            file_len < 10 << 20,
            "image {i} is bloated: {file_len} bytes for 8.4 MB of data"
        );
        let mut expected = vec![0u8; 12 << 20];
        for k in 0..12usize {
            let off = k * (1 << 20) + 512 * k;
            expected[off..off + 700_000].fill(k as u8 + 1);
        }
        expected[..1 << 20].fill(0);
        assert_qemu_reads(&dir, &out, &expected, &format!("growth image {i}"));
    }
}

/// Concurrent writes into the same unallocated clusters over a backing file (iotest 046's
/// theme): every write survives and the untouched bytes come from the backing file.
#[test]
fn concurrent_writes_into_one_new_cluster() {
    for seed in 0..16u64 {
        let sim = sim_with(
            seed,
            &[("o.qcow2", Vec::new()), ("base.raw", vec![0x42u8; 1 << 20])],
        );
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let opts = CreateOptions {
                size: 1 << 20,
                backing_file: Some("base.raw".into()),
                backing_fmt: Some("raw".into()),
                ..CreateOptions::default()
            };
            create_on(&engine, "o.qcow2", &opts).await;
            engine
                .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f"}))
                .await
                .unwrap();
            let bb = engine
                .device_add("d2", "q", BackendOptions::tool(false))
                .unwrap();
            let env = engine.env().clone();
            let done = Rc::new(RefCell::new(0));
            for i in 0..16u64 {
                let (bb, done) = (bb.clone(), done.clone());
                env.spawn(
                    "w",
                    Box::pin(async move {
                        let off = 4096 + i * 9000;
                        bb.write(off, IoBuf::filled(3000, i as u8 + 1), ReqFlags::NONE)
                            .await
                            .1
                            .unwrap();
                        *done.borrow_mut() += 1;
                    }),
                );
            }
            while *done.borrow() < 16 {
                env.sleep_until(env.now_ns() + 100_000).await;
            }
            let mut expected = vec![0x42u8; 1 << 20];
            for i in 0..16usize {
                let off = 4096 + i * 9000;
                expected[off..off + 3000].fill(i as u8 + 1);
            }
            assert!(
                read_all(&bb).await == expected,
                "seed {seed}: a concurrent write was lost"
            );
        })
        .unwrap();
    }
}

/// The VM state area (qemu-io `write -b`/`read -b`): past the disk, mapped by the image's own
/// tables, the L1 grown by half again as QEMU grows it (1 → 2 → 3 → 5 entries for 1 GiB into
/// it), kept across a reopen, reading zeroes where never written, and invisible to the guest
/// disk. `check` finds the image clean.
#[test]
fn vm_state_area_is_saved_past_the_disk_and_reloaded() {
    let sim = sim_with(12, &[("v.qcow2", Vec::new())]);
    let engine = engine_of(&sim);
    let simr = &sim;
    sim.block_on(async move {
        let opts = CreateOptions {
            size: 1 << 20,
            ..CreateOptions::default()
        };
        create_on(&engine, "v.qcow2", &opts).await;
        let bb = open_qcow2(&engine, "q", "v.qcow2", false).await.unwrap();
        for (pos, byte) in [(0u64, 0x66u8), (1 << 30, 0x77)] {
            bb.save_vmstate(pos, IoBuf::filled(65536, byte))
                .await
                .1
                .unwrap();
        }
        let l1_size = |sim: &sim::Sim| {
            let img = sim.fs().file_bytes("v.qcow2").unwrap();
            u32::from_be_bytes(img[36..40].try_into().unwrap())
        };
        assert_eq!(l1_size(simr), 5);
        assert!(
            read_all(&bb).await.iter().all(|&b| b == 0),
            "guest disk untouched"
        );
        engine.shutdown().await.unwrap();
        let engine = engine_of(simr);
        let bb = open_qcow2(&engine, "q", "v.qcow2", false).await.unwrap();
        for (pos, byte) in [(0u64, 0x66u8), (1 << 30, 0x77), (1 << 20, 0)] {
            let (buf, r) = bb.load_vmstate(pos, IoBuf::new(65536)).await;
            r.unwrap();
            assert!(buf.as_slice().iter().all(|&b| b == byte), "at {pos}");
        }
        let rep = engine::drivers::qcow2::check_node(&engine.node("q").unwrap(), None)
            .await
            .unwrap();
        assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{:#?}", rep.messages);
        engine.shutdown().await.unwrap();
    })
    .unwrap();
}
