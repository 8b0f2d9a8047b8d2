//! qcow2 shrink over an allocated tail (issue 10 bug 8): the clusters past the new size are
//! freed as QEMU frees them (`qemu-img resize --shrink`: same map, same file size), crash-safe.
//! The power fails at every disk flush of the shrink (just before and just after it lands);
//! each post-crash image passes `qemu-img check` (leaks allowed, never corruption), reads as
//! the model (the kept part exactly; a tail that is still there as its data, zeroes or the
//! backing file's bytes: it is being cut off), is found clean by blk's check, shrinks when
//! asked again, and then compares equal to the model in QEMU.

use crate::qcow2_support;

use std::cell::Cell;
use std::rc::Rc;

use engine::drivers::qcow2::check_node;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::guest::{
    Backing, Layout, TOP, backing_bytes, build, export_top, fill, prepare, qemu_compare, reopen,
};
use qcow2_support::{Scratch, engine_of, have_qemu, read_all};
use sim::{CrashAt, Sim, SimConfig, View};

const LAYOUTS: [Layout; 3] = [
    Layout {
        size: 2 << 20,
        cs: 512,
        refcount_bits: 16,
        v2: false,
        lazy: false,
        backing: Backing::None,
        small_cache: false,
        extended_l2: false,
    },
    Layout {
        size: 2 << 20,
        cs: 4096,
        refcount_bits: 16,
        v2: true,
        lazy: false,
        backing: Backing::Raw,
        small_cache: true,
        extended_l2: false,
    },
    Layout {
        size: 4 << 20,
        cs: 65536,
        refcount_bits: 16,
        v2: false,
        lazy: false,
        backing: Backing::Qcow2,
        small_cache: false,
        extended_l2: false,
    },
];

/// The size the image is shrunk to: not cluster aligned (but a multiple of 512).
fn new_size(l: &Layout) -> u64 {
    l.size / 2 - 1536
}

/// The writes before the shrink: every third stretch of three clusters, and one stretch across
/// the new end.
fn writes(l: &Layout) -> Vec<(u64, u64, u64)> {
    let step = 9 * l.cs;
    let mut w: Vec<(u64, u64, u64)> = (0..l.size / step)
        .map(|i| (i + 1, i * step, 3 * l.cs))
        .collect();
    w.push((0x7a11, new_size(l) - l.cs, 2 * l.cs + 512));
    w
}

/// What the image reads after the writes.
fn model(l: &Layout) -> Vec<u8> {
    let mut m = backing_bytes(l);
    for (tag, off, len) in writes(l) {
        m[off as usize..(off + len) as usize].copy_from_slice(&fill(tag, off, len));
    }
    m
}

/// Build the image, write, flush; then shrink and close, the power failing at `at` (counted
/// from the shrink on). Returns whether it struck and the flushes the shrink made.
fn run(sim: &Sim, l: &Layout, at: Option<CrashAt>) -> (bool, u64) {
    prepare(sim, l);
    let engine = engine_of(sim);
    let (env, layout, e) = (sim.env().as_env(), *l, engine.clone());
    let bb = sim
        .block_on(async move {
            let bb = build(&env, &e, &layout).await;
            for (tag, off, len) in writes(&layout) {
                let data = IoBuf::from_slice(&fill(tag, off, len));
                bb.write(off, data, ReqFlags::NONE).await.1.unwrap();
            }
            bb.flush().await.unwrap();
            bb
        })
        .unwrap();
    let base = sim.fs().disk_counts();
    if let Some(CrashAt::Flush { nth, after }) = at {
        sim.fs().schedule_crash(CrashAt::Flush {
            nth: base.flushes + nth,
            after,
        });
    }
    let done = Rc::new(Cell::new(false));
    let (d, len) = (done.clone(), new_size(l));
    sim.env().as_env().spawn(
        "shrink",
        Box::pin(async move {
            // Once the power failed, requests fail with EIO (stale handles): just stop.
            let shrunk = bb.truncate(len).await;
            drop(bb);
            let closed = engine.shutdown().await;
            d.set(shrunk.is_ok() && closed.is_ok());
        }),
    );
    sim.run_until_idle().unwrap();
    let struck = sim.fs().take_struck().is_some();
    assert!(struck || done.get(), "the shrink did not finish");
    (struck, sim.fs().disk_counts().flushes - base.flushes)
}

/// After a crash: the image reopens and reads as the model; blk's check is clean; a second
/// shrink completes. Returns what the image reads in the end.
fn recover(sim: &Sim, l: &Layout, what: &str) -> Vec<u8> {
    let engine = engine_of(sim);
    let (layout, what) = (*l, what.to_string());
    sim.block_on(async move {
        let bb = reopen(&engine, &layout).await.unwrap();
        let data = read_all(&bb).await;
        let (full, backing, new) = (model(&layout), backing_bytes(&layout), new_size(&layout));
        assert!(
            data.len() as u64 == new || data.len() as u64 == layout.size,
            "{what}: size {}",
            data.len()
        );
        assert!(
            data[..new as usize] == full[..new as usize],
            "{what}: kept part differs"
        );
        for i in new as usize..data.len() {
            let b = data[i];
            assert!(
                b == full[i] || b == 0 || b == backing[i],
                "{what}: cut-off byte {i} reads {b:#x}"
            );
        }
        let rep = check_node(&engine.node("q").unwrap(), None).await.unwrap();
        assert!(
            rep.corruptions == 0 && rep.check_errors == 0,
            "{what}: blk check: {:#?}",
            rep.messages
        );
        bb.truncate(new).await.unwrap();
        let data = read_all(&bb).await;
        drop(bb);
        engine.shutdown().await.unwrap();
        data
    })
    .unwrap()
}

#[test]
fn shrink_survives_a_crash_at_every_flush() {
    let dir = have_qemu().then(|| Scratch::new("shrink-crash"));
    for (li, l) in LAYOUTS.iter().enumerate() {
        let sim = Sim::new(li as u64, SimConfig::default());
        let (struck, flushes) = run(&sim, l, None);
        assert!(!struck && flushes > 2, "{l:?}: {flushes} flushes");
        for nth in 1..=flushes {
            for after in [false, true] {
                let what = format!("{l:?} crash at flush {nth} (after: {after})");
                let sim = Sim::new(li as u64, SimConfig::default());
                let (struck, _) = run(&sim, l, Some(CrashAt::Flush { nth, after }));
                assert!(struck, "{what}: never reached");
                let name = format!("crash-{li}-{nth}-{after}.qcow2");
                if let Some(dir) = &dir {
                    export_top(&sim, l, dir, &name);
                    let (code, text) = dir.run_status("qemu-img", &["check", &name]);
                    assert!(code == 0 || code == 3, "{what}: qemu-img check: {text}");
                }
                let data = recover(&sim, l, &what);
                assert!(
                    data == model(l)[..new_size(l) as usize],
                    "{what}: after recovery"
                );
                if let Some(dir) = &dir {
                    let closed = format!("closed-{name}");
                    export_top(&sim, l, dir, &closed);
                    dir.check(&closed, true);
                    qemu_compare(dir, &closed, &data, &what);
                }
            }
        }
    }
}

/// The same image shrunk by blk and by `qemu-img resize --shrink`: same `qemu-img map`, same
/// file size, both clean.
#[test]
fn shrink_frees_the_tail_as_qemu_does() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("shrink-qemu");
    for (li, l) in LAYOUTS.iter().enumerate() {
        let sim = Sim::new(li as u64, SimConfig::default());
        prepare(&sim, l);
        let engine = engine_of(&sim);
        let (env, layout) = (sim.env().as_env(), *l);
        sim.block_on(async move {
            let bb = build(&env, &engine, &layout).await;
            for (tag, off, len) in writes(&layout) {
                let data = IoBuf::from_slice(&fill(tag, off, len));
                bb.write(off, data, ReqFlags::NONE).await.1.unwrap();
            }
            drop(bb);
            engine.shutdown().await.unwrap();
        })
        .unwrap();
        let (init, qemu) = (format!("init-{li}.qcow2"), format!("qemu-{li}.qcow2"));
        export_top(&sim, l, &dir, &init);
        std::fs::copy(dir.path(&init), dir.path(&qemu)).unwrap();
        let len = new_size(l).to_string();
        dir.run("qemu-img", &["resize", "-q", "--shrink", &qemu, &len]);
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let bb = reopen(&engine, &layout).await.unwrap();
            bb.truncate(new_size(&layout)).await.unwrap();
            drop(bb);
            engine.shutdown().await.unwrap();
        })
        .unwrap();
        let blk = format!("blk-{li}.qcow2");
        sim.fs()
            .export_to(TOP, View::Durable, &dir.path(&blk))
            .unwrap();
        dir.check(&blk, false);
        dir.check(&qemu, false);
        let map = |f: &str| dir.run("qemu-img", &["map", "--output=json", f]);
        assert_eq!(map(&blk), map(&qemu), "{l:?}: qemu-img map");
        let size = |f: &str| std::fs::metadata(dir.path(f)).unwrap().len();
        assert_eq!(size(&blk), size(&qemu), "{l:?}: file size");
    }
}
