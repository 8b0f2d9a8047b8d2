//! Crash-point enumeration of any scenario: one run counts its disk flushes and side-effecting
//! operations, then the scenario is re-run with a power loss just before and just after every
//! flush and at every operation (or `sample` of them, drawn from a ChaCha stream of the seed),
//! each followed by restart, recovery and every oracle (see `scenario/crash_point.rs`).
//! Each point is written `flush:N:before`, `flush:N:after` or `op:N`.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::oracles::{Verdict, judge_parsed};
use crate::rng::below;
use crate::scenario::{RunOptions, Scenario};
use crate::{CrashAt, DiskCounts};

/// `flush:N:before|after` or `op:N`.
pub fn point_name(at: CrashAt) -> String {
    match at {
        CrashAt::Flush { nth, after } => {
            format!("flush:{nth}:{}", if after { "after" } else { "before" })
        }
        CrashAt::Op { nth } => format!("op:{nth}"),
    }
}

/// Parse [`point_name`]'s form.
pub fn parse_point(s: &str) -> Result<CrashAt, String> {
    let bad = || format!("bad crash point '{s}' (flush:N:before, flush:N:after or op:N)");
    let parts: Vec<&str> = s.split(':').collect();
    let n = |v: &str| v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(bad);
    match parts.as_slice() {
        ["flush", nth, "before"] => Ok(CrashAt::Flush {
            nth: n(nth)?,
            after: false,
        }),
        ["flush", nth, "after"] => Ok(CrashAt::Flush {
            nth: n(nth)?,
            after: true,
        }),
        ["op", nth] => Ok(CrashAt::Op { nth: n(nth)? }),
        _ => Err(bad()),
    }
}

/// The points to test for a run that made `counts` disk events (`setup` of them before the
/// first guest step): both sides of every later flush, then every later operation or `sample`
/// distinct ones, at most `max` in all.
pub fn points(
    setup: DiskCounts,
    counts: DiskCounts,
    seed: u64,
    sample: Option<u64>,
    max: Option<usize>,
) -> Vec<CrashAt> {
    let mut v = Vec::new();
    for nth in setup.flushes + 1..=counts.flushes {
        v.push(CrashAt::Flush { nth, after: false });
        v.push(CrashAt::Flush { nth, after: true });
    }
    let ops: Vec<u64> = match sample {
        Some(k) if k < counts.ops - setup.ops => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6372_6173_6865_7321);
            let mut picked: Vec<u64> = Vec::new();
            while (picked.len() as u64) < k {
                let nth = setup.ops + 1 + below(&mut rng, counts.ops - setup.ops);
                if !picked.contains(&nth) {
                    picked.push(nth);
                }
            }
            picked.sort_unstable();
            picked
        }
        _ => (setup.ops + 1..=counts.ops).collect(),
    };
    v.extend(ops.into_iter().map(|nth| CrashAt::Op { nth }));
    if let Some(m) = max {
        v.truncate(m);
    }
    v
}

/// Outcome of an enumeration.
#[derive(Clone, Debug, Default)]
pub struct CrashSummary {
    /// The counting run's disk events.
    pub counts: DiskCounts,
    /// Crash states tested.
    pub tested: usize,
    /// Points where the crash did not strike (the run took another path).
    pub missed: usize,
    /// The first failing point and its failure.
    pub failing: Option<(CrashAt, Verdict)>,
}

/// Count, then crash at each point; stops at the first failure. `progress` sees each point.
pub fn enumerate(
    sc: &Scenario,
    seed: u64,
    sample: Option<u64>,
    max: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<CrashSummary, Box<Verdict>> {
    let base = judge_parsed(sc, seed, RunOptions::default());
    if base.failure.is_some() {
        return Err(Box::new(base));
    }
    let counts = base.outcome.as_ref().map(|o| o.disk).unwrap_or_default();
    let setup = base
        .outcome
        .as_ref()
        .map(|o| o.setup_disk)
        .unwrap_or_default();
    let pts = points(setup, counts, seed, sample, max);
    let mut sum = CrashSummary {
        counts,
        ..CrashSummary::default()
    };
    for (i, at) in pts.iter().enumerate() {
        progress(i, pts.len());
        let v = judge_parsed(
            sc,
            seed,
            RunOptions {
                crash_at: Some(*at),
                ..RunOptions::default()
            },
        );
        sum.tested += 1;
        if !v.outcome.as_ref().is_some_and(|o| o.crash_struck) && v.failure.is_none() {
            sum.missed += 1;
        }
        if v.failure.is_some() {
            sum.failing = Some((*at, v));
            break;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_cover_both_sides_of_each_flush_and_sample_ops() {
        let c = DiskCounts {
            flushes: 2,
            ops: 10,
        };
        let none = DiskCounts::default();
        let p = points(none, c, 1, Some(3), None);
        assert_eq!(p.len(), 4 + 3);
        assert_eq!(parse_point(&point_name(p[1])).unwrap(), p[1]);
        assert_eq!(points(none, c, 1, None, Some(5)).len(), 5);
        let setup = DiskCounts { flushes: 1, ops: 8 };
        assert_eq!(points(setup, c, 1, None, None).len(), 2 + 2);
        assert!(parse_point("op:0").is_err());
    }
}
