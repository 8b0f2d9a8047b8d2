//! Swarm testing: every seed draws a whole scenario ([`generator`]), runs it on the simulator with the
//! unchanged runner, and judges it with oracles outside the engine ([`oracles`]); a failing
//! scenario is reduced to a minimal one by delta debugging ([`shrink`]); [`coverage`] tallies
//! what a batch exercised, [`report`] writes one JSON line per seed.
//!
//! Everything here is a pure function of the seed (and of the engine's planted-bug switches,
//! see `engine::util::planted`): the same seed writes the same scenario text, which replays
//! standalone with `blk sim replay` to the same transcript.

pub mod coverage;
pub mod crashes;
pub mod generator;
pub mod oracles;
pub mod report;
pub mod shrink;

pub use generator::{Features, Generated, generate};
pub use oracles::{Verdict, judge};
pub use report::SeedResult;

use crate::scenario::RunOptions;

/// Draw, run and judge `seed`.
pub fn run_seed(seed: u64, trace: bool) -> (Generated, Verdict) {
    run_seed_with(
        seed,
        RunOptions {
            trace,
            ..Default::default()
        },
    )
}

/// Draw, run and judge `seed` with `opts`.
pub fn run_seed_with(seed: u64, opts: RunOptions) -> (Generated, Verdict) {
    let generated = generate(seed);
    let verdict = judge("swarm", &generated.text, opts);
    (generated, verdict)
}
