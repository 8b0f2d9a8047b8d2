//! How fast the simulator turns seeds over, on one core: the shipped small scenarios
//! (raw-workload, drain-in-flight, eio-report) replayed seed after seed, and swarm seeds
//! (each draws and runs a whole generated scenario). Criterion reports seeds per second as
//! throughput ("elements/s"); issue #11 asks for 500 per second on the small scenarios.
//!
//! Virtual-time compression: a rate-limited job (block-commit of 4 MiB at 1 MiB/s, about four
//! virtual seconds) runs to completion seed after seed; besides criterion's figure, the run
//! prints how many virtual seconds pass per wall-clock second.
//!
//! `cargo bench --bench sim_seeds` (BLK_BENCH_QUICK=1 for a short run).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sim::scenario::{RunOptions, parse, run};

/// Seeds per measured iteration.
const SEEDS: u64 = 20;

fn scenario_seeds(c: &mut Criterion) {
    let mut group = c.benchmark_group("scenario_seeds");
    group.throughput(Throughput::Elements(SEEDS));
    for name in ["raw-workload", "drain-in-flight", "eio-report"] {
        let path = format!("{}/scenarios/{name}.scn", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("a shipped scenario");
        let sc = parse(&path, &text).expect("the scenario parses");
        let mut next = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..SEEDS {
                    let out = run(&sc, next, RunOptions::default());
                    assert!(out.failure.is_none(), "{name} seed {next} failed");
                    next += 1;
                }
            })
        });
    }
    group.finish();
}

fn swarm_seeds(c: &mut Criterion) {
    let mut group = c.benchmark_group("swarm_seeds");
    group.throughput(Throughput::Elements(SEEDS));
    let mut next = 0u64;
    group.bench_function("generated", |b| {
        b.iter(|| {
            for _ in 0..SEEDS {
                let (_, verdict) = sim::swarm::run_seed(next, false);
                std::hint::black_box(verdict);
                next += 1;
            }
        })
    });
    group.finish();
}

/// A commit of 4 MiB limited to 1 MiB/s (commit-speed.scn without its speed change), waited
/// for to the end: about four seconds of virtual time.
fn rate_limited_commit() -> sim::scenario::Scenario {
    let path = format!("{}/scenarios/commit-speed.scn", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("a shipped scenario");
    let setup: String = text
        .lines()
        .take_while(|l| !l.starts_with("qmp {\"execute\": \"block-commit\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = setup
        + "qmp {\"execute\": \"block-commit\", \"arguments\": {\"device\": \"drive0\", \
           \"job-id\": \"c0\", \"top-node\": \"mid\", \"speed\": 1048576}}\n\
           wait event BLOCK_JOB_COMPLETED device=c0 timeout=10s\n\
           verify drive0\n";
    parse("rate-limited-commit.scn", &text).expect("the scenario parses")
}

fn rate_limited_job(c: &mut Criterion, quick: bool) {
    let sc = rate_limited_commit();
    let mut group = c.benchmark_group("rate_limited_job");
    group.throughput(Throughput::Elements(1));
    let mut next = 0u64;
    group.bench_function("commit_4MiB_at_1MiBps", |b| {
        b.iter(|| {
            let out = run(&sc, next, RunOptions::default());
            assert!(out.failure.is_none(), "seed {next} failed");
            next += 1;
        })
    });
    group.finish();
    let seeds = if quick { 5 } else { 50 };
    let (mut virtual_ns, start) = (0u64, Instant::now());
    for seed in 0..seeds {
        let out = run(&sc, seed, RunOptions::default());
        assert!(out.failure.is_none(), "seed {seed} failed");
        virtual_ns += out.virtual_ns;
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "rate-limited commit: {seeds} seeds, {:.1} virtual s in {wall:.2} wall s: \
         virtual time runs {:.0}x faster than the clock",
        virtual_ns as f64 / 1e9,
        virtual_ns as f64 / 1e9 / wall
    );
}

fn main() {
    let quick = std::env::var_os("BLK_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 5 }));
    scenario_seeds(&mut c);
    swarm_seeds(&mut c);
    rate_limited_job(&mut c, quick);
    c.final_summary();
}
