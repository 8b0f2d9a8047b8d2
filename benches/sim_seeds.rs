//! How fast the simulator turns seeds over, on one core: the shipped small scenarios
//! (raw-workload, drain-in-flight, eio-report) replayed seed after seed, and swarm seeds
//! (each draws and runs a whole generated scenario). Criterion reports seeds per second as
//! throughput ("elements/s"); issue #11 asks for 500 per second on the small scenarios.
//!
//! `cargo bench --bench sim_seeds` (BLK_BENCH_QUICK=1 for a short run).

use std::time::Duration;

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

fn main() {
    let quick = std::env::var_os("BLK_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 5 }));
    scenario_seeds(&mut c);
    swarm_seeds(&mut c);
    c.final_summary();
}
