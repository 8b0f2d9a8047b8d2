//! Proof that the swarm finds bugs: each planted bug (`engine::util::planted`, off by default)
//! is switched on for this test's thread, swarm seeds are drawn from 0 until one fails (within a
//! small budget), and the failing scenario shrinks to at most 10 steps that still fail the same
//! check. The qcow2 flush-ordering bug only shows after a power loss at the right moment: crash
//! point enumeration of a shipped scenario finds it. Also: with no bug planted the same seeds
//! pass, so these findings are the bugs and not generator noise.

use engine::util::planted::{self, Bug};
use sim::swarm::{self, crashes, shrink};

/// Steps of a scenario text (shrink's own notion of a step).
fn steps(text: &str) -> usize {
    shrink::Split::parse(text).steps.len()
}

/// Failing seeds of a search: the shrink of each, smallest kept.
const FINDINGS_SHRUNK: usize = 3;

/// The first failing seeds below `budget` with `bug` on, shrunk; the smallest result must be
/// at most 10 steps, still fail, and pass with the bug off.
fn find_and_shrink(bug: Bug, budget: u64) {
    find_and_shrink_n(bug, budget, FINDINGS_SHRUNK);
}

/// `find_and_shrink` over the first `findings` failing seeds. A timing-bound bug (a write in
/// flight at the mirror's cutover) may need a few more: some findings only fail with the exact
/// interleaving their long run builds up, and no shorter scenario keeps it.
fn find_and_shrink_n(bug: Bug, budget: u64, findings: usize) {
    planted::disable_all();
    planted::enable(bug);
    let found: Vec<_> = (0..budget)
        .filter_map(|seed| {
            let (g, v) = swarm::run_seed(seed, false);
            v.failure.map(|f| (seed, g, f))
        })
        .take(findings)
        .collect();
    assert!(!found.is_empty(), "{bug:?}: no failing seed in 0..{budget}");
    let s = found
        .iter()
        .map(|(seed, g, f)| {
            let s = shrink::shrink(&g.text, Some(&f.check)).expect("the finding still fails");
            eprintln!(
                "{bug:?}: seed {seed} fails '{}' ({}); shrunk {} -> {} steps in {} runs",
                f.check, f.message, s.before, s.after, s.runs
            );
            s
        })
        .min_by_key(|s| s.after)
        .unwrap();
    assert!(
        s.after <= 10,
        "{bug:?} shrank only to {} steps:\n{}",
        s.after,
        s.text
    );
    planted::disable_all();
    let v = swarm::oracles::judge("min", &s.text, Default::default());
    assert!(
        v.failure.is_none(),
        "{bug:?}: the minimal scenario fails without the bug:\n{}",
        s.text
    );
    assert!(steps(&s.text) == s.after);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_discard_over_backing() {
    find_and_shrink(Bug::DiscardOverBacking, 60);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_drain_end_losing_queued_requests() {
    find_and_shrink(Bug::DrainEndLosesQueued, 60);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_unserialised_read_modify_write() {
    find_and_shrink(Bug::RmwUnserialised, 80);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_mirror_forgetting_dirty_writes() {
    // Since the nbd family joined the draws, seeds 8 and 39 shrink to 22 and 11 steps; the
    // best of four findings is within 10.
    find_and_shrink_n(Bug::MirrorForgetsDirty, 120, 4);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_undrained_mirror_pivot() {
    // Seeds 15, 65 and 69 shrink to 13, 13 and 19 steps; seed 72 to 9.
    find_and_shrink_n(Bug::MirrorPivotUndrained, 120, 6);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_bitmaps_missing_write_zeroes() {
    find_and_shrink(Bug::BitmapMissesZeroes, 200);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "heavy (about 3 finds and shrinks): run with --release, as .ci/run does"
)]
fn finds_throttle_leaking_too_fast() {
    // The throttle family's rate oracle (`expect rate`) sees a device run at twice its limit.
    find_and_shrink(Bug::ThrottleLeaksFast, 120);
}

/// Run `seed` twice: it must pass, with the same trace both times. The first run's outcome.
fn passes_twice(seed: u64, text: &str) -> sim::scenario::RunOutcome {
    let (_, v) = swarm::run_seed(seed, false);
    assert!(v.failure.is_none(), "seed {seed}: {:?}\n{text}", v.failure);
    let (_, again) = swarm::run_seed(seed, false);
    let (a, b) = (v.outcome.unwrap(), again.outcome.unwrap());
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "seed {seed} is not deterministic"
    );
    a
}

/// Seeds that draw bitmaps pass, run the same twice, and their checks judge bitmaps that
/// recorded guest writes (the oracle is not vacuous).
#[test]
fn bitmap_seeds_check_bitmaps_that_recorded_writes() {
    planted::disable_all();
    let mut judged = 0;
    for seed in 0..40 {
        let g = swarm::generator::generate(seed);
        if !g.features.bitmaps {
            continue;
        }
        let a = passes_twice(seed, &g.text);
        judged += a
            .transcript
            .lines()
            .filter(|l| l.contains("bitmap check") && !l.contains("(0 granules written"))
            .count();
    }
    assert!(
        judged >= 5,
        "only {judged} checks of bitmaps with recorded writes"
    );
}

/// Seeds whose transactions take internal snapshots pass and replay identically, and the
/// oracle is not vacuous: snapshots taken in committed transactions are adopted by the model
/// (`isnap drive0 taken`) and later applied and verified, and failed transactions are shown
/// to leave none behind.
#[test]
fn transaction_internal_snapshots_are_adopted_and_applied() {
    planted::disable_all();
    let (mut taken, mut applied, mut refused) = (0, 0, 0);
    for seed in 0..3000 {
        let g = swarm::generator::generate(seed);
        if !g.text.contains("blockdev-snapshot-internal-sync") {
            continue;
        }
        let a = passes_twice(seed, &g.text);
        let t = &a.transcript;
        taken += t.lines().filter(|l| l.contains(" taken")).count();
        applied += t
            .lines()
            .filter(|l| l.contains("isnap drive0: applied tsn"))
            .count();
        refused += t
            .lines()
            .filter(|l| l.contains("name 'tsn") && l.contains("does not exist"))
            .count();
        if taken >= 3 && applied >= 1 && refused >= 1 {
            break;
        }
    }
    eprintln!("transaction snapshots: {taken} taken, {applied} applied, {refused} rolled back");
    assert!(taken >= 3, "only {taken} snapshots taken in transactions");
    assert!(applied >= 1, "no transaction snapshot applied later");
    assert!(
        refused >= 1,
        "no rolled-back transaction checked for its snapshot"
    );
}

/// Seeds that draw NBD rounds pass and replay identically, and their oracles judge data that
/// crossed network faults: the client device and the exported node both match the model.
#[test]
fn nbd_seeds_survive_network_faults() {
    planted::disable_all();
    let (mut faults, mut direct) = (0, 0);
    for seed in 0..60 {
        let g = swarm::generator::generate(seed);
        if !g.text.contains("workload start nw") {
            continue;
        }
        let a = passes_twice(seed, &g.text);
        let t = &a.transcript;
        faults += t
            .lines()
            .filter(|l| {
                l.contains("] net reset")
                    || l.contains("] net drop")
                    || l.contains("] net partition")
            })
            .count();
        direct += t
            .lines()
            .filter(|l| l.contains("] verify nd") && l.contains(": ok"))
            .count();
    }
    eprintln!("nbd seeds: {faults} network faults, {direct} exported-node checks");
    assert!(faults >= 5, "only {faults} network faults drawn");
    assert!(direct >= 3, "only {direct} checks of exported nodes");
}

#[test]
fn crash_points_find_qcow2_flush_ordering() {
    // Without the scenario's own power loss: the crash points alone must find the bug (the
    // built-in crash may expose it by itself, which would prove nothing about enumeration).
    let text = include_str!("../../scenarios/qcow2-crash.scn").replace("crash\nrestart\n", "");
    let sc = sim::scenario::parse("qcow2-crash.scn", &text).unwrap();
    planted::disable_all();
    planted::enable(Bug::Qcow2FlushOrder);
    let sum = crashes::enumerate(&sc, sc.seed, Some(30), Some(200), |_, _| {}).unwrap();
    planted::disable_all();
    let (at, v) = sum
        .failing
        .expect("a crash point exposes the missing flush");
    eprintln!(
        "Qcow2FlushOrder: {} fails '{}' after {} states",
        crashes::point_name(at),
        v.check().unwrap(),
        sum.tested
    );
    let again = swarm::oracles::judge_parsed(
        &sc,
        sc.seed,
        sim::scenario::RunOptions {
            crash_at: Some(at),
            ..Default::default()
        },
    );
    assert!(
        again.failure.is_none(),
        "the same crash point passes without the bug"
    );
}

/// Every seed of `seeds` passes with no bug planted.
fn all_pass(seeds: impl IntoIterator<Item = u64>) {
    planted::disable_all();
    for seed in seeds {
        let (g, v) = swarm::run_seed(seed, false);
        assert!(
            v.failure.is_none(),
            "seed {seed} fails: {:?}\n{}",
            v.failure,
            g.text
        );
    }
}

#[test]
fn seeds_pass_with_no_bug_planted() {
    all_pass(0..20);
}

/// qcow2 images with extended L2 entries are drawn (only with clusters of 16 KiB or more),
/// and the first seeds that draw one pass: their writes, zeroes, discards and crash points
/// run on subcluster images.
#[test]
#[ignore = "open data bug in subcluster writes: seed 76 (concurrent writes) and seed 77 (power \
            loss) fail 'verify'; the generator's DRAW_EXTENDED_L2 is off until it is fixed"]
fn seeds_draw_and_pass_extended_l2_images() {
    let drawn: Vec<u64> = (0..200)
        .filter(|&seed| {
            let text = swarm::generate(seed).text;
            let ext: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("image create") && l.contains("extended_l2=on"))
                .collect();
            for l in &ext {
                assert!(
                    !l.contains("cluster_size=4k"),
                    "seed {seed}: subclusters need 16k clusters: {l}"
                );
            }
            !ext.is_empty()
        })
        .collect();
    assert!(
        drawn.len() >= 10,
        "only {} seeds draw extended L2",
        drawn.len()
    );
    all_pass(drawn.into_iter().take(6));
}

/// The findings of a release run over seeds 0..1200, each fixed where it was wrong: 341, 560,
/// 607, 689 and 1028 (the generator kept the layers a commit dropped, so QEMU refused the next
/// job with "Need a root block node"), 721 and 1179 (a read fault failed a guest write under
/// `werror=stop` and the generator never resumed: workers parked forever), 988 and 1119 (an
/// intermediate commit into a raw base lost the committed data on power loss: an engine bug,
/// also kept as scenarios/commit-raw-base-crash.scn). Of 1200..5000: 4091 (an active commit
/// cancelled before READY left its filter in the graph: engine, scenarios/
/// active-commit-cancel-del.scn) and 4283 (the model settled a synchronous write before an
/// overlapping aio write reported ahead of it: oracle, scenarios/sync-write-over-aio.scn).
#[test]
fn findings_of_longer_runs_pass() {
    // 61: extended L2 entries over a data file, guest cluster 0 (host offset 0) taken for
    // an inconsistent entry.
    all_pass([
        61, 341, 560, 607, 689, 721, 988, 1028, 1119, 1179, 4091, 4283,
    ]);
}

#[test]
fn a_seed_writes_the_same_scenario_and_transcript_twice() {
    let (a, va) = swarm::run_seed(7, false);
    let (b, vb) = swarm::run_seed(7, false);
    assert_eq!(a.text, b.text);
    let (oa, ob) = (va.outcome.unwrap(), vb.outcome.unwrap());
    assert_eq!(oa.trace_hash, ob.trace_hash);
    assert_eq!(oa.transcript, ob.transcript);
}

#[test]
fn a_power_loss_at_any_point_of_a_snapshot_transaction_loses_nothing() {
    // Every disk event of the transaction (the overlay's creation and flushes in prepare, then
    // commit) is a crash point; after each the base must hold every flushed write and every
    // image check clean.
    let text = include_str!("../../scenarios/transaction-crash.scn");
    let sc = sim::scenario::parse("transaction-crash.scn", text).unwrap();
    planted::disable_all();
    let sum = crashes::enumerate(&sc, sc.seed, None, None, |_, _| {}).unwrap();
    if let Some((at, v)) = &sum.failing {
        panic!("{} fails: {:?}", crashes::point_name(*at), v.failure);
    }
    assert!(sum.tested >= 10, "only {} crash states", sum.tested);
    assert_eq!(sum.missed, 0, "every crash point struck");
}
