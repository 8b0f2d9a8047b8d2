//! qcow2 amend (`qemu-img amend`) on the simulator, crash point by crash point: a refcount
//! width change (16 -> 1, 16 -> 64, 16 -> 2 on a lazy-refcounts image also switched to
//! eager refcounts) and a downgrade to compat 0.10 over zero clusters. Each runs once to
//! count its disk flushes; then, for every flush, the power fails just before and just after
//! it lands. After each crash:
//!
//! * the image passes `qemu-img check` (for the refcount rewrite: clean, no leaks either; the
//!   downgrade may leak a cluster it allocated for a zero cluster);
//! * blk reopens it with the old or the new refcount width (version), and it reads as before
//!   the amend, byte for byte;
//! * blk's check finds nothing wrong; the amend, asked again, completes; after a clean close
//!   `qemu-img check` is clean and `qemu-img compare` reads the same data.

use crate::qcow2_support;

use std::cell::Cell;
use std::rc::Rc;

use engine::driver::AmendOptions;
use engine::drivers::qcow2::check_node;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::guest::{
    Backing, Layout, backing_bytes, build, export_top, fill, prepare, qemu_compare, reopen,
};
use qcow2_support::{Scratch, engine_of, have_qemu, read_all};
use sim::{CrashAt, Sim, SimConfig};

/// One amend scenario: the image, what is written before, what the amend asks.
struct Case {
    name: &'static str,
    layout: Layout,
    opts: fn() -> AmendOptions,
    /// (refcount bits, version) before and after.
    before: (u64, &'static str),
    after: (u64, &'static str),
    /// Leaked clusters are allowed after a crash.
    leaks_ok: bool,
}

fn layout(cs: u64, lazy: bool, backing: Backing) -> Layout {
    Layout {
        size: 2 << 20,
        cs,
        refcount_bits: 16,
        v2: false,
        lazy,
        backing,
        small_cache: true,
        extended_l2: false,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "refcount 16 -> 1",
            layout: layout(4096, false, Backing::None),
            opts: || AmendOptions {
                refcount_bits: Some(1),
                ..AmendOptions::default()
            },
            before: (16, "1.1"),
            after: (1, "1.1"),
            leaks_ok: false,
        },
        Case {
            name: "refcount 16 -> 64 over a backing file",
            layout: layout(65536, false, Backing::Qcow2),
            opts: || AmendOptions {
                refcount_bits: Some(64),
                ..AmendOptions::default()
            },
            before: (16, "1.1"),
            after: (64, "1.1"),
            leaks_ok: false,
        },
        Case {
            name: "lazy refcounts off and refcount 16 -> 2",
            layout: layout(512, true, Backing::None),
            opts: || AmendOptions {
                refcount_bits: Some(2),
                lazy_refcounts: Some(false),
                ..AmendOptions::default()
            },
            before: (16, "1.1"),
            after: (2, "1.1"),
            leaks_ok: false,
        },
        Case {
            name: "compat 1.1 -> 0.10 over zero clusters and a backing file",
            layout: layout(4096, false, Backing::Raw),
            opts: || AmendOptions {
                compat: Some("0.10".into()),
                ..AmendOptions::default()
            },
            before: (16, "1.1"),
            after: (16, "0.10"),
            leaks_ok: true,
        },
    ]
}

/// The guest requests before the amend: (tag, offset, length, zeroes-with-unmap?) with tag 0
/// a zero write.
fn writes(l: &Layout) -> Vec<(u64, u64, u64, bool)> {
    let cs = l.cs;
    let mut w: Vec<_> = (0..l.size / (7 * cs))
        .map(|i| (i + 1, i * 7 * cs, 2 * cs + 512, false))
        .collect();
    w.push((0, 3 * cs, 2 * cs, false));
    w.push((0, 12 * cs, cs, true));
    w.push((0, l.size - 4 * cs, 4 * cs, false));
    w
}

/// What the image reads after the writes.
fn model(l: &Layout) -> Vec<u8> {
    let mut m = backing_bytes(l);
    for (tag, off, len, _) in writes(l) {
        let data = if tag == 0 {
            vec![0; len as usize]
        } else {
            fill(tag, off, len)
        };
        m[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    m
}

/// (refcount bits, compat) of the open image.
fn geometry(engine: &engine::Engine) -> (u64, String) {
    let info = engine.node("q").unwrap().driver().specific_info();
    let bits = info["refcount-bits"].as_u64().unwrap();
    (bits, info["compat"].as_str().unwrap().to_string())
}

/// Run the amend of `c` on the node of `engine`.
async fn amend(engine: &engine::Engine, c: &Case) -> engine::Result<()> {
    let node = engine.node("q").unwrap();
    let ops = node.driver().format_ops().unwrap();
    let opts = (c.opts)();
    let no_resize = |_n: u64| -> engine::env::LocalBoxFuture<'_, engine::Result<()>> {
        Box::pin(async { unreachable!("no size asked") })
    };
    ops.amend(&opts, &no_resize, &|_| {}).await
}

/// Build the image, write, flush; then amend and close, the power failing at `at` (counted from the amend on). Returns
/// whether it struck and how many flushes the amend made.
fn run(sim: &Sim, c: &'static Case, at: Option<CrashAt>) -> (bool, u64) {
    let l = c.layout;
    prepare(sim, &l);
    let (env, engine) = (sim.env().as_env(), engine_of(sim));
    let e = engine.clone();
    let bb = sim
        .block_on(async move {
            let bb = build(&env, &e, &l).await;
            for (tag, off, len, unmap) in writes(&l) {
                let r = if tag == 0 {
                    let flags = if unmap {
                        ReqFlags::MAY_UNMAP
                    } else {
                        ReqFlags::NONE
                    };
                    bb.write_zeroes(off, len, flags).await
                } else {
                    let data = IoBuf::from_slice(&fill(tag, off, len));
                    bb.write(off, data, ReqFlags::NONE).await.1
                };
                r.unwrap();
            }
            // Durable, the image still open (with lazy refcounts: dirty, refcounts stale).
            bb.flush().await.unwrap();
            bb
        })
        .unwrap();
    assert_eq!(geometry(&engine).0, c.before.0, "{}: before", c.name);
    let base = sim.fs().disk_counts();
    if let Some(CrashAt::Flush { nth, after }) = at {
        sim.fs().schedule_crash(CrashAt::Flush {
            nth: base.flushes + nth,
            after,
        });
    }
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    sim.env().as_env().spawn(
        "amend",
        Box::pin(async move {
            // Once the power failed, requests fail with EIO: just stop.
            let amended = amend(&engine, c).await;
            drop(bb);
            let closed = engine.shutdown().await;
            d.set(amended.is_ok() && closed.is_ok());
        }),
    );
    sim.run_until_idle().unwrap();
    let struck = sim.fs().take_struck().is_some();
    assert!(struck || done.get(), "{}: the amend did not finish", c.name);
    (struck, sim.fs().disk_counts().flushes - base.flushes)
}

/// After a crash: reopen, the geometry is the old or the new one, the data is the model,
/// blk's check is clean; amend again. Returns what the image reads in the end.
fn recover(sim: &Sim, c: &'static Case, what: &str) -> Vec<u8> {
    let engine = engine_of(sim);
    let what = what.to_string();
    sim.block_on(async move {
        let bb = reopen(&engine, &c.layout).await.unwrap();
        let (bits, compat) = geometry(&engine);
        assert!(
            [c.before, c.after].contains(&(bits, compat.as_str())),
            "{what}: reopened with refcount bits {bits}, compat {compat}"
        );
        assert!(read_all(&bb).await == model(&c.layout), "{what}: data");
        let rep = check_node(&engine.node("q").unwrap(), None).await.unwrap();
        assert!(
            rep.corruptions == 0 && rep.check_errors == 0 && (c.leaks_ok || rep.leaks == 0),
            "{what}: blk check: {:#?}",
            rep.messages
        );
        amend(&engine, c).await.unwrap();
        let (bits, compat) = geometry(&engine);
        assert_eq!((bits, compat.as_str()), c.after, "{what}: amended again");
        let data = read_all(&bb).await;
        drop(bb);
        engine.shutdown().await.unwrap();
        data
    })
    .unwrap()
}

#[test]
fn amend_survives_a_crash_at_every_flush() {
    let dir = have_qemu().then(|| Scratch::new("amend-crash"));
    let cases: &'static [Case] = Box::leak(cases().into_boxed_slice());
    for (ci, c) in cases.iter().enumerate() {
        let sim = Sim::new(ci as u64, SimConfig::default());
        let (struck, flushes) = run(&sim, c, None);
        assert!(!struck && flushes > 1, "{}: {flushes} flushes", c.name);
        if let Some(dir) = &dir {
            let name = format!("amended-{ci}.qcow2");
            export_top(&sim, &c.layout, dir, &name);
            dir.check(&name, false);
            qemu_compare(dir, &name, &model(&c.layout), c.name);
        }
        for nth in 1..=flushes {
            for after in [false, true] {
                let what = format!("{} crash at flush {nth} (after: {after})", c.name);
                let sim = Sim::new(ci as u64, SimConfig::default());
                let (struck, _) = run(&sim, c, Some(CrashAt::Flush { nth, after }));
                assert!(struck, "{what}: never reached");
                let name = format!("crash-{ci}-{nth}-{after}.qcow2");
                if let Some(dir) = &dir {
                    export_top(&sim, &c.layout, dir, &name);
                    dir.check(&name, c.leaks_ok);
                }
                let data = recover(&sim, c, &what);
                assert!(data == model(&c.layout), "{what}: after recovery");
                if let Some(dir) = &dir {
                    let closed = format!("closed-{name}");
                    export_top(&sim, &c.layout, dir, &closed);
                    dir.check(&closed, c.leaks_ok);
                    qemu_compare(dir, &closed, &data, &what);
                }
            }
        }
    }
}
