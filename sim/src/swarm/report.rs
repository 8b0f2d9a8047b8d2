//! One JSON line per seed: seed, features, steps, outcome, failing check, time. Lines from any
//! number of shards concatenate into one result set (each line stands alone).

use serde_json::{Value, json};

use super::{Generated, Verdict};

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Families that were on.
    pub features: Vec<String>,
    /// Steps in the generated scenario.
    pub steps: usize,
    /// The failing check (None: pass).
    pub check: Option<String>,
    /// Line of the failing step.
    pub line: usize,
    /// The failure's message.
    pub message: String,
    /// Virtual time the run took, ns.
    pub virtual_ns: u64,
}

impl SeedResult {
    /// Summarise a judged seed.
    pub fn new(seed: u64, generated: &Generated, verdict: &Verdict) -> SeedResult {
        let f = verdict.failure.as_ref();
        SeedResult {
            seed,
            features: generated
                .features
                .names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            steps: generated.steps,
            check: f.map(|f| f.check.clone()),
            line: f.map_or(0, |f| f.line),
            message: f.map(|f| f.message.clone()).unwrap_or_default(),
            virtual_ns: verdict.outcome.as_ref().map_or(0, |o| o.virtual_ns),
        }
    }

    /// The JSON line (wall time in ms is the caller's: the simulator reads no clock).
    pub fn to_json(&self, wall_ms: u64) -> Value {
        json!({
            "seed": self.seed,
            "features": self.features,
            "steps": self.steps,
            "outcome": if self.check.is_some() { "fail" } else { "pass" },
            "check": self.check,
            "line": self.line,
            "message": self.message,
            "virtual_ms": self.virtual_ns / 1_000_000,
            "time_ms": wall_ms,
        })
    }
}
