//! What the CI swarm window (seeds 0..4000, see .ci/run) exercises: every fault class of the
//! table is drawn, and every blkdebug event the engine declares is raised, except the known gaps
//! listed here with their reason. A class or event that stops being reached fails the test; one
//! that starts being reached fails it too, so the gap list stays true.

use sim::swarm::coverage::{BLKDEBUG_EVENTS, Coverage, FAULT_CLASSES};
use sim::swarm::{self, generate};

/// The CI window.
const CI_SEEDS: std::ops::Range<u64> = 0..4000;

/// blkdebug events no seed of the window raises, and why (measured with
/// `blk sim swarm --seeds 0..4000 --coverage`).
const EVENT_GAPS: &[(&str, &str)] = &[
    // Declared, and raised nowhere in the engine yet.
    (
        "l2_alloc_cow_read",
        "not raised yet: L2 tables are never copied (no internal snapshots)",
    ),
    (
        "refblock_update_part",
        "not raised yet (QEMU no longer raises it either)",
    ),
    // Raised by the engine, on paths the generator does not draw.
    (
        "reftable_update",
        "an image rebuilt empty switching its tables; engine/tests/debug_events.rs",
    ),
    (
        "empty_image_prepare",
        "qemu-img commit's emptying of the top; engine/tests/debug_events.rs",
    ),
    (
        "l1_shrink_write_table",
        "the swarm only grows devices; engine/tests/debug_events.rs",
    ),
    (
        "l1_shrink_free_l2_clusters",
        "the swarm only grows devices; engine/tests/debug_events.rs",
    ),
    (
        "reftable_grow",
        "images of at most 16 MiB never outgrow their refcount table",
    ),
    (
        "refblock_alloc_write_blocks",
        "only when the refcount table grows (as reftable_grow)",
    ),
    (
        "refblock_alloc_write_table",
        "only when the refcount table grows (as reftable_grow)",
    ),
    (
        "refblock_alloc_switch_table",
        "only when the refcount table grows (as reftable_grow)",
    ),
];

#[test]
fn the_ci_window_draws_every_fault_class() {
    let mut cov = Coverage::default();
    for seed in CI_SEEDS {
        cov.add(&generate(seed).text, "");
    }
    assert_eq!(
        cov.gaps(FAULT_CLASSES),
        Vec::<String>::new(),
        "{}",
        cov.table()
    );
}

#[test]
#[ignore = "runs the whole CI window traced (about 14 CPU-minutes in release); run with --release -- --ignored"]
fn the_ci_window_raises_every_blkdebug_event_but_the_known_gaps() {
    let mut cov = Coverage::default();
    for seed in CI_SEEDS {
        let (g, v) = swarm::run_seed(seed, true);
        if let Some(o) = &v.outcome {
            cov.add(&g.text, &o.transcript);
        }
    }
    let mut want: Vec<String> = EVENT_GAPS.iter().map(|(e, _)| e.to_string()).collect();
    want.sort();
    assert_eq!(cov.gaps(BLKDEBUG_EVENTS), want, "{}", cov.table());
}

/// The table reads the transcript's `[time] trace NODE EVENT` and `[time] qmp {...}` lines.
#[test]
fn coverage_counts_traced_events_and_qmp_commands() {
    let (g, v) = swarm::run_seed(1, true);
    let mut cov = Coverage::default();
    cov.add(&g.text, &v.outcome.expect("seed 1 runs").transcript);
    let hit = |cat: &str| {
        cov.counts
            .get(cat)
            .map_or(0, |m| m.values().filter(|n| **n > 0).count())
    };
    assert!(hit(BLKDEBUG_EVENTS) > 5, "{}", cov.table());
    assert!(hit("qmp commands") > 0, "{}", cov.table());
}

/// A job raises `job_iteration` at its main node before each unit of work, and mirror raises
/// `job_pivot` at its source when it cuts over, so breakpoints and traces see job progress.
#[test]
fn jobs_raise_iteration_and_cutover_events() {
    let text = include_str!("../../scenarios/mirror-cutover.scn");
    let v = swarm::oracles::judge(
        "mirror-cutover.scn",
        text,
        sim::scenario::RunOptions {
            trace: true,
            ..Default::default()
        },
    );
    let t = v.outcome.expect("the scenario runs").transcript;
    assert!(v.failure.is_none(), "{t}");
    assert!(t.contains(" job_iteration\n"), "{t}");
    assert_eq!(t.matches(" job_pivot\n").count(), 1, "{t}");
}
