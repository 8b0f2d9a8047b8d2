//! qcow2 lazy refcounts: the dirty bit is durable before the first write, stays set while the
//! image is in use and is cleared by a clean close; after a crash the image reopens (its
//! refcounts are rebuilt), flushed writes read back and `check` finds no corruption.

use crate::qcow2_support;

use std::rc::Rc;

use engine::backend::{BackendOptions, BlockBackend};
use engine::drivers::qcow2::{CreateOptions, check_node};
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::json;
use sim::{Sim, View};

const DIRTY: u8 = 1;

/// A new lazy-refcount image "img" (8 MiB, `cs`-byte clusters) open as node "q".
async fn lazy_image(engine: &engine::Engine, cs: u64) -> Rc<BlockBackend> {
    let opts = CreateOptions {
        size: 8 << 20,
        cluster_size: cs,
        lazy_refcounts: true,
        ..CreateOptions::default()
    };
    create_on(engine, "img", &opts).await;
    engine
        .blockdev_add(json!({"driver": "qcow2", "node-name": "q", "file": "f"}))
        .await
        .unwrap();
    engine
        .device_add("d2", "q", BackendOptions::tool(false))
        .unwrap()
}

fn durable(sim: &Sim, dir: &Scratch, name: &str) -> Vec<u8> {
    export(sim, "img", View::Durable, dir, name);
    dir.read(name)
}

#[test]
fn dirty_bit_set_before_first_write_and_cleared_on_close() {
    let dir = Scratch::new("lazy-close");
    let sim = sim_with(3, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let (simr, dirr) = (&sim, &dir);
    sim.block_on(async move {
        let bb = lazy_image(&engine, 65536).await;
        assert_eq!(durable(simr, dirr, "a")[79] & DIRTY, 0);
        bb.write(100_000, IoBuf::filled(200_000, 0x5a), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        // Durable before anything that relies on it, even without a flush.
        assert_eq!(durable(simr, dirr, "b")[79] & DIRTY, DIRTY);
        bb.flush().await.unwrap();
        assert_eq!(durable(simr, dirr, "c")[79] & DIRTY, DIRTY);
        engine.shutdown().await.unwrap();
    })
    .unwrap();
    let img = durable(&sim, &dir, "closed.qcow2");
    assert_eq!(img[79] & DIRTY, 0, "a clean close clears the dirty bit");
    if have_qemu() {
        dir.check("closed.qcow2", false);
    }
}

/// Crash after flushed and unflushed writes on lazy-refcount images: the image reopens, the
/// flushed data reads back, `check` finds no corruption and no leak after the rebuild, and the
/// image closed cleanly passes `qemu-img check`.
#[test]
fn crash_with_lazy_refcounts_recovers() {
    let have = have_qemu();
    let dir = Scratch::new("lazy-crash");
    for seed in 0..12u64 {
        let cs: u64 = if seed % 2 == 0 { 4096 } else { 65536 };
        let sim = sim_with(100 + seed, &[("img", Vec::new())]);
        let engine = engine_of(&sim);
        let simr = &sim;
        sim.block_on(async move {
            let bb = lazy_image(&engine, cs).await;
            let mut flushed = Vec::new();
            for j in 0..8u64 {
                let off = j * 700_001 % (7 << 20);
                let len = 3000 + j * 5000;
                let pat = j as u8 + 1;
                bb.write(off, IoBuf::filled(len as usize, pat), ReqFlags::NONE)
                    .await
                    .1
                    .unwrap();
                if j < 5 {
                    flushed.push((off, len, pat));
                }
                if j == 4 {
                    bb.flush().await.unwrap();
                }
            }
            // Overlapping later writes may have replaced earlier flushed bytes.
            let later: Vec<(u64, u64)> = (5..8u64)
                .map(|j| (j * 700_001 % (7 << 20), 3000 + j * 5000))
                .collect();
            simr.crash();
            drop(bb);
            let after = simr.fs().file_bytes("img").unwrap();
            assert_eq!(
                after[79] & DIRTY,
                DIRTY,
                "seed {seed}: crash leaves the dirty bit"
            );
            let engine2 = engine_of(simr);
            let bb2 = open_qcow2(&engine2, "q", "img", false).await.unwrap();
            for (off, len, pat) in flushed {
                let (buf, r) = bb2.read(off, IoBuf::new(len as usize)).await;
                r.unwrap();
                for (i, &b) in buf.as_slice().iter().enumerate() {
                    let at = off + i as u64;
                    if later.iter().any(|&(o, l)| at >= o && at < o + l) {
                        continue;
                    }
                    assert_eq!(b, pat, "seed {seed}: flushed byte at {at} lost");
                }
            }
            // Opening read-write rebuilt the stale refcounts (as QEMU does at open): check is
            // clean before any write, and stays clean after one.
            let rep = check_node(&engine2.node("q").unwrap(), None).await.unwrap();
            assert_eq!(
                (rep.corruptions, rep.leaks, rep.check_errors),
                (0, 0, 0),
                "seed {seed}: right after open: {:#?}",
                rep.messages
            );
            bb2.write(7 << 20, IoBuf::filled(70_000, 0xee), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            let rep = check_node(&engine2.node("q").unwrap(), None).await.unwrap();
            assert_eq!(
                (rep.corruptions, rep.leaks, rep.check_errors),
                (0, 0, 0),
                "seed {seed}: {:#?}",
                rep.messages
            );
            engine2.shutdown().await.unwrap();
        })
        .unwrap();
        let out = format!("lazy{seed}.qcow2");
        let img = durable(&sim, &dir, &out);
        assert_eq!(
            img[79] & DIRTY,
            0,
            "seed {seed}: clean close clears the dirty bit"
        );
        if have {
            dir.check(&out, false);
        }
    }
}
