//! Property tests (proptest): random sequences of batches of guest requests on a qcow2 node equal
//! a byte model, on the simulator with seeded interleavings of concurrent requests.
//!
//! A case is an image layout (cluster size 512 B / 4 KiB / 64 KiB, refcount width 1..64 bits,
//! compat 0.10 or 1.1, lazy refcounts, no backing file / a raw one / a qcow2 one, default or
//! smallest metadata caches), a simulator seed, and batches of requests (writes of seeded
//! patterns at unaligned offsets and lengths, many near or across cluster boundaries;
//! write-zeroes with and without MAY_UNMAP; discards; reads; flushes). Each batch is issued at once, one task per request, so the seeded scheduler and the
//! virtual disk's random latencies interleave them; offsets cluster in a small hot region, so
//! requests often share clusters and L2 tables and sometimes overlap.
//!
//! What may a batch produce? QEMU's block layer gives no order to overlapping requests in flight
//! together (neither does a disk): each byte ends up with the value of one of the requests that
//! wrote it, and a read concurrent with writes sees, per byte, the old value or one of the new
//! ones. The model allows exactly that: where one request of the batch changes a byte, the byte
//! is pinned to its value; where several do, the byte is read back after the batch, must be one
//! of their values, and is pinned to what was read. Requests that share clusters but not bytes
//! (the dangerous case for copy-on-write of new clusters) must both land whole.
//!
//! At the end: a full read equals the model, blk's `check` finds no corruption and no leak, and
//! after a clean close the exported image passes `qemu-img check` (no errors, no leaks) and
//! `qemu-img compare` finds it equal to a raw file made from the model.
//!
//! The runner is seeded (ChaCha, `BLK_PROPTEST_SEED` to explore other seeds,
//! `BLK_PROPTEST_CASES` for more cases). A failure prints the shrunk case (layout, simulator seed,
//! batches), which replays exactly: paste it into `known_cases` below.

use crate::qcow2_support;

use std::cell::Cell;

use engine::drivers::qcow2::check_node;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use qcow2_support::guest::{
    Backing, GuestOp, Layout, Model, build, export_top, prepare, qemu_compare_status, run_batch,
};
use qcow2_support::{Scratch, engine_of, have_qemu, read_all};
use sim::{Sim, SimConfig};

/// One generated case.
#[derive(Clone, Debug)]
struct Case {
    layout: Layout,
    seed: u64,
    batches: Vec<Vec<GuestOp>>,
}

fn layout_strategy() -> impl Strategy<Value = Layout> {
    (
        prop_oneof![Just(512u64), Just(4096), Just(65536)],
        prop_oneof![Just(1u32), Just(8), Just(16), Just(64)],
        0u8..4,
        prop_oneof![
            Just(Backing::None),
            Just(Backing::Raw),
            Just(Backing::Qcow2)
        ],
        any::<bool>(),
    )
        .prop_map(|(cs, rb, flavour, backing, small_cache)| {
            // flavour: 0 = compat 0.10 (16-bit refcounts, no lazy), 1 = lazy refcounts, else 1.1.
            let v2 = flavour == 0;
            Layout {
                size: 1 << 20,
                cs,
                refcount_bits: if v2 { 16 } else { rb },
                v2,
                lazy: flavour == 1,
                backing,
                small_cache,
                extended_l2: false,
            }
        })
}

/// A request: offsets near cluster boundaries of a small hot region or anywhere, lengths from
/// one byte to a few clusters.
fn op_strategy(layout: Layout) -> impl Strategy<Value = GuestOp> {
    let (cs, size) = (layout.cs, layout.size);
    let clusters = size / cs;
    (
        0u8..12,
        any::<bool>(),
        0..clusters,
        0u8..5,
        0..cs,
        0u8..5,
        1..3 * cs + 1,
        any::<u16>(),
    )
        .prop_map(
            move |(kind, hot, c, edge, any_off, len_kind, any_len, tag)| {
                let c = if hot { c % 8 } else { c };
                let delta = match edge {
                    0 => 0,
                    1 => 1,
                    2 => cs - 1,
                    3 => cs / 2,
                    _ => any_off,
                };
                let off = (c * cs + delta).min(size - 1);
                let len = match len_kind {
                    0 => 1,
                    1 => cs,
                    2 => cs + 1,
                    3 => 2 * cs - 1,
                    _ => any_len,
                }
                .min(size - off);
                match kind {
                    0..=4 => GuestOp::Write {
                        off,
                        len,
                        tag: u64::from(tag),
                    },
                    5 | 6 => GuestOp::Zero {
                        off,
                        len,
                        unmap: kind == 5,
                    },
                    7 | 8 => GuestOp::Discard { off, len },
                    9 | 10 => GuestOp::Read { off, len },
                    _ => GuestOp::Flush,
                }
            },
        )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (layout_strategy(), any::<u64>()).prop_flat_map(|(layout, seed)| {
        proptest::collection::vec(proptest::collection::vec(op_strategy(layout), 1..6), 1..10)
            .prop_map(move |batches| Case {
                layout,
                seed,
                batches,
            })
    })
}

/// Where the writes of a batch land: for every byte, the values requests of the batch give it.
fn writers(model: &Model, batch: &[GuestOp]) -> Vec<(u64, Vec<u8>)> {
    batch.iter().filter_map(|op| model.effect(op)).collect()
}

/// Run one case; an `Err` says what went wrong.
fn run_case(case: &Case, dir: Option<&Scratch>, name: &str) -> Result<(), String> {
    let sim = Sim::new(case.seed, SimConfig::default());
    prepare(&sim, &case.layout);
    let engine = engine_of(&sim);
    let env = sim.env().as_env();
    let layout = case.layout;
    let result = sim
        .block_on(async {
            let bb = build(&env, &engine, &layout).await;
            let mut model = Model::new(&layout);
            for (b, batch) in case.batches.iter().enumerate() {
                let before = model.cur.clone();
                let effects = writers(&model, batch);
                let results = run_batch(&env, &bb, batch).await;
                // How many requests of the batch change each byte (sparse: only touched bytes).
                let mut count = std::collections::BTreeMap::<u64, u32>::new();
                for (off, data) in &effects {
                    for i in *off..off + data.len() as u64 {
                        *count.entry(i).or_default() += 1;
                    }
                }
                let allowed = |i: u64, v: u8, with_old: bool| {
                    (with_old && before[i as usize] == v)
                        || effects.iter().any(|(off, d)| {
                            i >= *off && i < off + d.len() as u64 && d[(i - off) as usize] == v
                        })
                };
                for (op, r) in batch.iter().zip(results) {
                    let data = r.map_err(|e| format!("batch {b}: {op:?} failed: {e}"))?;
                    if let (GuestOp::Read { off, .. }, Some(data)) = (op, data) {
                        for (k, &v) in data.iter().enumerate() {
                            let i = off + k as u64;
                            if !allowed(i, v, true) {
                                return Err(format!(
                                    "batch {b}: {op:?}: byte {i} reads {v:#04x}, model has \
                                     {:#04x} and no request of the batch writes that",
                                    before[i as usize]
                                ));
                            }
                        }
                    }
                }
                for (off, data) in &effects {
                    for (k, &v) in data.iter().enumerate() {
                        let i = off + k as u64;
                        if count[&i] == 1 {
                            model.cur[i as usize] = v;
                        }
                    }
                }
                // Bytes written by several requests at once: any one of them may win.
                let contested: Vec<u64> = count
                    .iter()
                    .filter(|(_, n)| **n > 1)
                    .map(|(i, _)| *i)
                    .collect();
                if let (Some(&lo), Some(&hi)) = (contested.first(), contested.last()) {
                    let (buf, r) = bb
                        .read(lo, engine::io::IoBuf::new((hi - lo + 1) as usize))
                        .await;
                    r.map_err(|e| format!("batch {b}: read-back failed: {e}"))?;
                    for &i in &contested {
                        let v = buf.as_slice()[(i - lo) as usize];
                        if !allowed(i, v, false) {
                            return Err(format!(
                                "batch {b}: byte {i} written by several requests holds {v:#04x}, \
                                 which none of them wrote"
                            ));
                        }
                        model.cur[i as usize] = v;
                    }
                }
            }
            bb.flush().await.map_err(|e| format!("final flush: {e}"))?;
            let all = read_all(&bb).await;
            if let Some(i) = (0..all.len()).find(|&i| all[i] != model.cur[i]) {
                return Err(format!(
                    "final read: byte {i} is {:#04x}, model {:#04x}",
                    all[i], model.cur[i]
                ));
            }
            let rep = check_node(&engine.node("q").unwrap(), None)
                .await
                .map_err(|e| format!("check: {e}"))?;
            if rep.corruptions != 0 || rep.leaks != 0 || rep.check_errors != 0 {
                return Err(format!(
                    "check: {} corruptions, {} leaks, {} errors: {:#?}",
                    rep.corruptions, rep.leaks, rep.check_errors, rep.messages
                ));
            }
            engine.shutdown().await.map_err(|e| format!("close: {e}"))?;
            Ok(model.cur)
        })
        .map_err(|e| format!("simulation: {e}"))?;
    let expected = result?;
    if let Some(dir) = dir {
        export_top(&sim, &case.layout, dir, name);
        let (code, text) = dir.run_status("qemu-img", &["check", "-f", "qcow2", name]);
        if code != 0 {
            return Err(format!("qemu-img check exited {code}: {text}"));
        }
        qemu_compare_status(dir, name, &expected)?;
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn qcow2_matches_byte_model_under_concurrency() {
    let have = have_qemu();
    let seed = env_u64("BLK_PROPTEST_SEED").unwrap_or(0x0b1c_2024);
    let cases = env_u64("BLK_PROPTEST_CASES").unwrap_or(48) as u32;
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let dir = Scratch::new("prop");
    let n = Cell::new(0u64);
    let result = runner.run(&case_strategy(), |case| {
        n.set(n.get() + 1);
        let name = format!("case{}.qcow2", n.get());
        let r = run_case(&case, have.then_some(&dir), &name);
        for f in [name.clone(), format!("{name}.model.raw")] {
            let _ = std::fs::remove_file(dir.path(&f));
        }
        r.map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => eprintln!(
            "{cases} cases passed (runner seed {seed:#x}, {} runs)",
            n.get()
        ),
        Err(TestError::Fail(why, case)) => panic!(
            "qcow2 property failed (runner seed {seed:#x}): {why}\nminimal case (replay it from \
             known_cases):\n{case:#?}"
        ),
        Err(e) => panic!("proptest aborted (runner seed {seed:#x}): {e}"),
    }
}

fn layout(cs: u64, refcount_bits: u32, backing: Backing) -> Layout {
    Layout {
        size: 1 << 20,
        cs,
        refcount_bits,
        v2: false,
        lazy: false,
        backing,
        small_cache: false,
        extended_l2: false,
    }
}

/// Cases the property test found (shrunk), kept as regressions, and the place to paste a new
/// failing case to replay it.
fn known_cases() -> Vec<Case> {
    vec![
        // Two writes into one new cluster over a backing file, with a concurrent read (QEMU's
        // iotest 046 theme): both must land whole, the rest of the cluster comes from the base.
        Case {
            layout: layout(65536, 16, Backing::Raw),
            seed: 7,
            batches: vec![vec![
                GuestOp::Write {
                    off: 100,
                    len: 1000,
                    tag: 1,
                },
                GuestOp::Write {
                    off: 30_000,
                    len: 1000,
                    tag: 2,
                },
                GuestOp::Read { off: 0, len: 65536 },
            ]],
        },
        // Found: creating a 512-byte-cluster v3 image with a backing file failed ("Header does
        // not fit in the first cluster"); QEMU leaves the optional feature table out.
        Case {
            layout: layout(512, 16, Backing::Raw),
            seed: 1,
            batches: vec![vec![GuestOp::Write {
                off: 16128,
                len: 1,
                tag: 3,
            }]],
        },
        // Found: a write-zeroes with no whole cluster inside that straddles two clusters, the
        // first already reading as zeroes, skipped the second cluster's part (stale backing
        // data stayed visible).
        Case {
            layout: layout(512, 8, Backing::Raw),
            seed: 622_850_413_356_769_581,
            batches: vec![
                vec![GuestOp::Zero {
                    off: 2559,
                    len: 1025,
                    unmap: true,
                }],
                vec![GuestOp::Zero {
                    off: 3073,
                    len: 512,
                    unmap: true,
                }],
            ],
        },
    ]
}

#[test]
fn known_cases_replay() {
    let have = have_qemu();
    let dir = Scratch::new("prop-known");
    for (i, case) in known_cases().iter().enumerate() {
        if let Err(e) = run_case(case, have.then_some(&dir), &format!("known{i}.qcow2")) {
            panic!("known case {i}: {e}\n{case:#?}");
        }
    }
}
