//! qcow2 crash consistency on the simulator, point by point.
//!
//! Each workload (allocating writes; COW into a backing chain; discards and zero writes; lazy
//! refcounts; the same on images with extended L2 entries) is a fixed list of batches of concurrent, non-overlapping guest requests with
//! guest flushes in between (some flushes race with a batch's requests). It runs once to count its disk flushes and disk writes; then, for
//! every disk flush k, it is re-run from the same seed and the power fails exactly when the k-th
//! flush reaches the disk — once just before it lands and once just after — and at a set of
//! seeded disk operations in between (the n-th write, zeroing, discard or flush to reach the
//! disk, instead of it landing; `sim::CrashAt`). Unflushed writes are then kept, lost or torn
//! per sector by the seed's crash stream. After each crash:
//!
//! * the post-crash image passes `qemu-img check` (leaks allowed, never corruption; a lazy
//!   refcounts image that is dirty may have stale refcounts by design, so QEMU's own repair,
//!   `qemu-img check -r all`, must leave it clean instead);
//! * a new engine opens it, every byte reads as its last flushed value or the value of a request
//!   issued after that flush, nothing else (the model in `qcow2_support::guest`);
//! * blk's `check` finds no corruption (leaks allowed; none once lazy refcounts were rebuilt);
//! * the reopened image takes new writes, and after a clean close `qemu-img check` passes and
//!   `qemu-img compare` reads exactly what blk read.
//!
//! A failure names the workload, the seed, the layout and the crash point, which replay
//! exactly. `BLK_CRASH_ONLY=<alloc|cow|discard|lazy|empty|subcluster>` runs one workload kind,
//! `BLK_CRASH_SEED=n` explores other seeds.

use crate::qcow2_support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::drivers::qcow2::check_node;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::guest::{
    Backing, GuestOp, Layout, Model, TOP, build, export_top, prepare, qemu_compare, reopen,
    run_batch,
};
use qcow2_support::{Scratch, engine_of, have_qemu, read_all};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::{CrashAt, DiskCounts, Sim, SimConfig};

/// How many seeded crash points between flushes each workload gets.
const BETWEEN_POINTS: u64 = 12;

thread_local! {
    /// Post-crash images that were dirty with stale refcounts (lazy refcounts) and that
    /// `qemu-img check -r all` had to repair.
    static REPAIRED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A batch: concurrent requests, or a lone guest flush.
type Batch = Vec<GuestOp>;

struct Workload {
    name: &'static str,
    seed: u64,
    layout: Layout,
    batches: Vec<Batch>,
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// Request kinds a generator may draw, with weights.
#[derive(Clone, Copy)]
struct Mix {
    write: u64,
    partial: u64,
    zero: u64,
    discard: u64,
}

/// One request of `mix` inside `[0, region)`; partial writes stay small and near clusters'
/// edges (COW of the rest of the cluster), the others span clusters.
fn draw(rng: &mut ChaCha8Rng, mix: Mix, cs: u64, region: u64) -> GuestOp {
    let total = mix.write + mix.partial + mix.zero + mix.discard;
    let x = below(rng, total);
    let tag = rng.next_u64();
    let off = below(rng, region);
    if x < mix.write {
        let len = 1 + below(rng, 6 * cs.min(8192));
        GuestOp::Write {
            off,
            len: len.min(region - off),
            tag,
        }
    } else if x < mix.write + mix.partial {
        let c = off / cs * cs;
        let edge = [0, 1, cs / 2, cs - 1][below(rng, 4) as usize];
        let off = (c + edge).min(region - 1);
        let len = (1 + below(rng, cs.min(4096))).min(region - off);
        GuestOp::Write { off, len, tag }
    } else if x < mix.write + mix.partial + mix.zero {
        let len = (1 + below(rng, 4 * cs)).min(region - off);
        GuestOp::Zero {
            off,
            len,
            unmap: rng.next_u32() & 1 == 0,
        }
    } else {
        let len = (1 + below(rng, 6 * cs)).min(region - off);
        GuestOp::Discard { off, len }
    }
}

fn range(op: &GuestOp) -> (u64, u64) {
    match *op {
        GuestOp::Write { off, len, .. }
        | GuestOp::Zero { off, len, .. }
        | GuestOp::Discard { off, len }
        | GuestOp::Read { off, len } => (off, off + len),
        GuestOp::Flush => (0, 0),
        GuestOp::MakeEmpty => (0, u64::MAX),
    }
}

/// `n` batches of up to `width` non-overlapping requests of `mix`, a guest flush after every
/// `flush_every` batches, a read of a random range now and then.
fn generate(
    seed: u64,
    layout: &Layout,
    mix: Mix,
    n: usize,
    width: u64,
    flush_every: usize,
) -> Vec<Batch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let region = layout.size * 3 / 4;
    let mut batches = Vec::new();
    for b in 0..n {
        let mut batch: Batch = Vec::new();
        let want = 1 + below(&mut rng, width);
        let mut tries = 0;
        while (batch.len() as u64) < want && tries < 50 {
            tries += 1;
            let op = draw(&mut rng, mix, layout.cs, region);
            let (s, e) = range(&op);
            if batch.iter().all(|o| {
                let (os, oe) = range(o);
                e <= os || oe <= s
            }) {
                batch.push(op);
            }
        }
        if b % 3 == 1 {
            let off = below(&mut rng, layout.size - 70_000);
            batch.push(GuestOp::Read {
                off,
                len: 1 + below(&mut rng, 70_000),
            });
        }
        if below(&mut rng, 4) == 0 {
            // A guest flush racing with the batch's requests.
            batch.push(GuestOp::Flush);
        }
        batches.push(batch);
        if (b + 1) % flush_every == 0 {
            batches.push(vec![GuestOp::Flush]);
        }
    }
    batches
}

fn layout(cs: u64, refcount_bits: u32, backing: Backing) -> Layout {
    Layout {
        size: 2 << 20,
        cs,
        refcount_bits,
        v2: false,
        lazy: false,
        backing,
        small_cache: false,
        extended_l2: false,
    }
}

const ALLOC: Mix = Mix {
    write: 1,
    partial: 0,
    zero: 0,
    discard: 0,
};

/// The workloads. `BLK_CRASH_SEED=n` shifts every seed by `1000 * n` (new requests, new
/// interleavings, new crash outcomes) to explore beyond the shipped ones.
fn workloads() -> Vec<Workload> {
    let shift: u64 = std::env::var("BLK_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let s = |seed: u64| seed + 1000 * shift;
    let mut out = Vec::new();
    // (a) allocating writes: 4 KiB clusters; 512-byte clusters with 64-bit refcounts (a refcount
    // block covers 32 KiB, so new refcount blocks and a growing refcount table are on the path).
    for (seed, cs, rb) in [(s(11), 4096, 16), (s(12), 512, 64)] {
        let l = Layout {
            size: 1 << 20,
            // 512-byte clusters: two cached tables cover 16 KiB, so they are evicted constantly.
            small_cache: cs == 512,
            ..layout(cs, rb, Backing::None)
        };
        out.push(Workload {
            name: "alloc",
            seed,
            layout: l,
            batches: generate(seed, &l, ALLOC, 10, 3, 2),
        });
    }
    // (b) copy-on-write into a backing chain: small writes near cluster edges over a qcow2 base
    // (64 KiB clusters), and over a raw base on a compat=0.10 image (no zero flag, so discards
    // keep the data rather than uncover the base).
    let cow = Mix {
        write: 1,
        partial: 4,
        zero: 0,
        discard: 0,
    };
    let l = layout(65536, 16, Backing::Qcow2);
    out.push(Workload {
        name: "cow",
        seed: s(21),
        layout: l,
        batches: generate(s(21), &l, cow, 10, 4, 2),
    });
    let l = Layout {
        v2: true,
        ..layout(4096, 16, Backing::Raw)
    };
    let cow_v2 = Mix { discard: 1, ..cow };
    out.push(Workload {
        name: "cow",
        seed: s(22),
        layout: l,
        batches: generate(s(22), &l, cow_v2, 10, 4, 2),
    });
    // (c) discards and zero writes over allocated data (freed clusters get reused), with and
    // without a backing file.
    let dz = Mix {
        write: 2,
        partial: 1,
        zero: 2,
        discard: 2,
    };
    for (seed, backing) in [(s(31), Backing::None), (s(32), Backing::Raw)] {
        let l = Layout {
            small_cache: backing == Backing::None,
            ..layout(4096, 16, backing)
        };
        let mut batches = generate(seed + 100, &l, ALLOC, 3, 3, 3);
        batches.extend(generate(seed, &l, dz, 10, 3, 2));
        out.push(Workload {
            name: "discard",
            seed,
            layout: l,
            batches,
        });
    }
    // (f) extended L2 entries: subcluster allocation, copy-on-write of partial subclusters
    // from a qcow2 base, zero subclusters and discards, 16 KiB clusters (512-byte subclusters)
    // with small caches, and 64 KiB ones without a backing file.
    let sub = Mix {
        write: 2,
        partial: 3,
        zero: 2,
        discard: 1,
    };
    for (seed, cs, backing) in [
        (s(61), 16384, Backing::Qcow2),
        (s(62), 65536, Backing::None),
    ] {
        let l = Layout {
            extended_l2: true,
            small_cache: cs == 16384,
            ..layout(cs, 16, backing)
        };
        out.push(Workload {
            name: "subcluster",
            seed,
            layout: l,
            batches: generate(seed, &l, sub, 10, 3, 2),
        });
    }
    // (d) lazy refcounts: the image is dirty at the crash; reopening rebuilds the refcounts.
    let l = Layout {
        lazy: true,
        ..layout(4096, 16, Backing::None)
    };
    let lazy = Mix {
        write: 3,
        partial: 1,
        zero: 1,
        discard: 1,
    };
    out.push(Workload {
        name: "lazy",
        seed: s(41),
        layout: l,
        batches: generate(s(41), &l, lazy, 10, 3, 2),
    });
    let l = Layout {
        lazy: true,
        small_cache: true,
        ..layout(512, 1, Backing::Raw)
    };
    out.push(Workload {
        name: "lazy",
        seed: s(42),
        layout: l,
        batches: generate(s(42), &l, lazy, 8, 3, 2),
    });
    // (e) emptying the image (`qemu-img commit`), rebuilt from scratch while data and L2 tables
    // are allocated, over a backing file and without one; written again and emptied again.
    for (seed, backing) in [(s(51), Backing::Raw), (s(52), Backing::None)] {
        let l = layout(4096, 16, backing);
        let mut batches = generate(seed, &l, ALLOC, 4, 3, 2);
        batches.push(vec![GuestOp::MakeEmpty]);
        batches.extend(generate(seed + 100, &l, ALLOC, 3, 3, 2));
        batches.push(vec![GuestOp::MakeEmpty]);
        out.push(Workload {
            name: "empty",
            seed,
            layout: l,
            batches,
        });
    }
    out
}

/// What one run did.
struct Outcome {
    /// Disk events of the workload proper (image creation excluded).
    counts: DiskCounts,
    /// The model at the end (or at the crash).
    model: Model,
    /// Whether the scheduled crash struck.
    crashed: bool,
}

/// Run workload `w`; with `at` (counted from the start of the workload) the power fails there.
fn run_workload(w: &Workload, sim: &Sim, at: Option<CrashAt>) -> Outcome {
    prepare(sim, &w.layout);
    let engine = engine_of(sim);
    let env = sim.env().as_env();
    let (layout, e) = (w.layout, env.clone());
    let bb = sim
        .block_on(async move { build(&e, &engine, &layout).await })
        .unwrap_or_else(|err| panic!("{} seed {}: setup: {err}", w.name, w.seed));
    let base = sim.fs().disk_counts();
    if let Some(at) = at {
        sim.fs().schedule_crash(match at {
            CrashAt::Flush { nth, after } => CrashAt::Flush {
                nth: base.flushes + nth,
                after,
            },
            CrashAt::Op { nth } => CrashAt::Op {
                nth: base.ops + nth,
            },
        });
    }
    let model = Rc::new(RefCell::new(Model::new(&w.layout)));
    let failure: Rc<RefCell<Option<String>>> = Rc::default();
    let (m, f, batches, e) = (
        model.clone(),
        failure.clone(),
        w.batches.clone(),
        env.clone(),
    );
    env.spawn(
        "workload",
        Box::pin(async move {
            for batch in batches {
                if batch == [GuestOp::Flush] {
                    match bb.flush().await {
                        Ok(()) => m.borrow_mut().flushed(),
                        Err(err) => {
                            *f.borrow_mut() = Some(format!("flush failed: {err}"));
                            return;
                        }
                    }
                    continue;
                }
                let before = m.borrow().cur.clone();
                for op in &batch {
                    m.borrow_mut().issued(op);
                }
                let results = run_batch(&e, &bb, &batch).await;
                for (op, r) in batch.iter().zip(results) {
                    match (op, r) {
                        (_, Err(err)) => {
                            *f.borrow_mut() = Some(format!("{op:?} failed: {err}"));
                            return;
                        }
                        (GuestOp::Read { off, len }, Ok(Some(data))) => {
                            // Reads run concurrently with the batch's writes: each byte is old or new.
                            let mut after = before.clone();
                            for o in &batch {
                                if let Some((eo, ed)) = m.borrow().effect(o) {
                                    after[eo as usize..eo as usize + ed.len()].copy_from_slice(&ed);
                                }
                            }
                            let (s, l) = (*off as usize, *len as usize);
                            if let Some(i) = (0..l)
                                .find(|&i| data[i] != before[s + i] && data[i] != after[s + i])
                            {
                                *f.borrow_mut() =
                                    Some(format!("{op:?}: byte {} reads {:#04x}", s + i, data[i]));
                                return;
                            }
                        }
                        _ => m.borrow_mut().completed(op),
                    }
                }
                if batch.contains(&GuestOp::Flush) {
                    // The flush covered what had completed when it was issued (the earlier
                    // batches); this batch's requests may or may not have been covered.
                    let effects = batch.iter().filter_map(|o| m.borrow().effect(o)).collect();
                    m.borrow_mut().flushed_at(before, effects);
                }
            }
        }),
    );
    sim.run_until_idle()
        .unwrap_or_else(|err| panic!("{} seed {}: {err}", w.name, w.seed));
    let crashed = sim.fs().take_struck().is_some();
    if !crashed && let Some(msg) = failure.borrow().clone() {
        panic!("{} seed {} ({at:?}): {msg}", w.name, w.seed);
    }
    let c = sim.fs().disk_counts();
    let model = Rc::try_unwrap(model)
        .ok()
        .expect("workload finished")
        .into_inner();
    Outcome {
        counts: DiskCounts {
            flushes: c.flushes - base.flushes,
            ops: c.ops - base.ops,
        },
        model,
        crashed,
    }
}

/// `qemu-img check` of a post-crash image: no corruption (leaks allowed). A dirty lazy-refcounts
/// image may legitimately have stale refcounts; QEMU repairs those at open, so for it the test
/// is that `qemu-img check -r all` leaves a consistent image.
fn qemu_check_crashed(dir: &Scratch, name: &str, what: &str) -> bool {
    let (code, text) = dir.run_status("qemu-img", &["check", "-f", "qcow2", name]);
    if code == 0 || code == 3 {
        return false;
    }
    // Byte 79 holds the low bits of the incompatible features; bit 0 is "dirty".
    let dirty = dir.read(name).get(79).is_some_and(|b| b & 1 == 1);
    assert!(dirty, "{what}: qemu-img check exited {code}: {text}");
    let (code, text2) = dir.run_status("qemu-img", &["check", "-r", "all", "-f", "qcow2", name]);
    assert!(
        code == 0 && text2.contains("No errors were found"),
        "{what}: qemu-img check -r all of the dirty image exited {code}: {text2}\n(before: {text})"
    );
    true
}

/// Crash workload `w` at `at`, then recover and check everything (see the module docs).
fn crash_point(w: &Workload, at: CrashAt, dir: Option<&Scratch>, idx: usize) {
    let shift = std::env::var("BLK_CRASH_SEED").unwrap_or_else(|_| "0".into());
    let what = format!(
        "{} seed {} layout {:?} crash at {at:?} (reproduce: BLK_CRASH_ONLY={} \
         BLK_CRASH_SEED={shift} cargo test -p engine --test qcow2 qcow2_crash::)",
        w.name, w.seed, w.layout, w.name
    );
    let sim = Sim::new(w.seed, SimConfig::default());
    let out = run_workload(w, &sim, Some(at));
    assert!(out.crashed, "{what}: the crash point was never reached");
    let name = format!("{}-{}-{idx}.qcow2", w.name, w.seed);
    if let Some(dir) = dir {
        export_top(&sim, &w.layout, dir, &name);
        if qemu_check_crashed(dir, &name, &what) {
            REPAIRED.with(|r| r.set(r.get() + 1));
        }
    }
    let engine = engine_of(&sim);
    let (model, lazy, w2) = (&out.model, w.layout.lazy, what.clone());
    let e2 = engine.clone();
    let seen = sim
        .block_on(async move {
            let bb = reopen(&e2, &model.layout)
                .await
                .unwrap_or_else(|err| panic!("{w2}: the image does not reopen: {err}"));
            let mut seen = read_all(&bb).await;
            if let Err(msg) = model.check_after_crash(&seen) {
                panic!("{w2}: {msg}");
            }
            // Reopening read-write already rebuilt a dirty image's refcounts (as QEMU does at
            // open): the check right away must be clean.
            let rep = check_node(&e2.node("q").unwrap(), None).await.unwrap();
            assert!(
                rep.corruptions == 0 && rep.check_errors == 0 && (!lazy || rep.leaks == 0),
                "{w2}: check after the crash: {} corruptions, {} leaks, {} errors: {:#?}",
                rep.corruptions,
                rep.leaks,
                rep.check_errors,
                rep.messages
            );
            // The image still allocates and frees correctly.
            let tail = model.layout.size - 300_000;
            let data = qcow2_support::guest::fill(0x7777, tail, 200_000);
            bb.write(tail, IoBuf::from_slice(&data), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            bb.discard(0, 65536).await.unwrap();
            bb.flush().await.unwrap();
            seen[tail as usize..tail as usize + data.len()].copy_from_slice(&data);
            let after = Model {
                cur: seen.clone(),
                ..Model::new(&model.layout)
            };
            let disc = after.effect(&GuestOp::Discard { off: 0, len: 65536 });
            if let Some((o, d)) = disc {
                seen[o as usize..o as usize + d.len()].copy_from_slice(&d);
            }
            assert!(
                read_all(&bb).await == seen,
                "{w2}: reads after recovery differ"
            );
            e2.shutdown().await.unwrap();
            seen
        })
        .unwrap_or_else(|err| panic!("{what}: recovery: {err}"));
    if let Some(dir) = dir {
        let closed = format!("{}-{}-{idx}-closed.qcow2", w.name, w.seed);
        export_top(&sim, &w.layout, dir, &closed);
        dir.check(&closed, true);
        qemu_compare(dir, &closed, &seen, &what);
    }
}

/// Every flush point (before and after) and `BETWEEN_POINTS` seeded write points of `w`.
fn crash_everywhere(w: &Workload, dir: Option<&Scratch>) -> (u64, u64) {
    let sim = Sim::new(w.seed, SimConfig::default());
    let dry = run_workload(w, &sim, None);
    assert!(!dry.crashed);
    let DiskCounts { flushes, ops } = dry.counts;
    assert!(
        flushes >= 4,
        "{} seed {}: only {flushes} flushes",
        w.name,
        w.seed
    );
    let mut points = Vec::new();
    for k in 1..=flushes {
        points.push(CrashAt::Flush {
            nth: k,
            after: false,
        });
        points.push(CrashAt::Flush {
            nth: k,
            after: true,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(w.seed ^ 0xc0ffee);
    for _ in 0..BETWEEN_POINTS {
        points.push(CrashAt::Op {
            nth: 1 + below(&mut rng, ops),
        });
    }
    for (i, at) in points.iter().enumerate() {
        crash_point(w, *at, dir, i);
    }
    (flushes, points.len() as u64)
}

fn run_kind(name: &str) {
    if std::env::var("BLK_CRASH_ONLY").is_ok_and(|only| only != name) {
        return;
    }
    let have = have_qemu();
    for w in workloads().into_iter().filter(|w| w.name == name) {
        let dir = Scratch::new(&format!("crash-{}-{}", w.name, w.seed));
        let (flushes, points) = crash_everywhere(&w, have.then_some(&dir));
        eprintln!(
            "{} seed {} (cluster {} B, refcount {} bits, backing {:?}, v2 {}, lazy {}, small \
             caches {}, extended L2 {}): {flushes} disk flushes, {points} crash points, {} dirty images \
             repaired by qemu-img",
            w.name,
            w.seed,
            w.layout.cs,
            w.layout.refcount_bits,
            w.layout.backing,
            w.layout.v2,
            w.layout.lazy,
            w.layout.small_cache,
            w.layout.extended_l2,
            REPAIRED.with(|r| r.replace(0))
        );
    }
}

/// (e) emptying the image (issue 10 bug 10: commit leaves the top as QEMU does, rebuilt).
#[test]
fn crash_at_every_flush_make_empty() {
    run_kind("empty");
}

/// (a) allocating writes.
#[test]
fn crash_at_every_flush_allocating_writes() {
    run_kind("alloc");
}

/// (b) copy-on-write of partial clusters over a backing file.
#[test]
fn crash_at_every_flush_cow_into_backing() {
    run_kind("cow");
}

/// (c) discards and zero writes.
#[test]
fn crash_at_every_flush_discard_and_zeroes() {
    run_kind("discard");
}

/// (f) subcluster allocation, zeroes and discards on images with extended L2 entries.
#[test]
fn crash_at_every_flush_subclusters() {
    run_kind("subcluster");
}

/// (d) lazy refcounts: dirty at the crash, rebuilt on reopen.
#[test]
fn crash_at_every_flush_lazy_refcounts() {
    run_kind("lazy");
}

/// The same crash point replays identically: one number (the trace hash) for the whole run.
#[test]
fn crash_points_are_deterministic() {
    let w = workloads().into_iter().next().unwrap();
    let hash = |at| {
        let sim = Sim::new(w.seed, SimConfig::default());
        let out = run_workload(&w, &sim, Some(at));
        assert!(out.crashed);
        (sim.trace_hash(), sim.fs().durable_bytes(TOP).unwrap())
    };
    let at = CrashAt::Flush {
        nth: 3,
        after: false,
    };
    assert!(hash(at) == hash(at));
}
