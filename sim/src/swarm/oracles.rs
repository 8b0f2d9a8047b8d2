//! The oracles that judge a run, all outside the engine: the runner's own checks (reference
//! model of guest bytes, image checks after restarts, drain checker, expectations, deadlock and
//! livelock detection), plus checks over the transcript: every job's status changes follow
//! QEMU's job state table, a job's terminal event comes once and only for a job that was
//! started, and a panic anywhere in the engine is caught and reported as the `panic` check.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

use crate::scenario::{self, Failure, RunOptions, RunOutcome, Scenario};

/// A judged run.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The run (absent when it panicked or the text did not parse).
    pub outcome: Option<RunOutcome>,
    /// The first failed check, if any.
    pub failure: Option<Failure>,
    /// The seed the scenario ran with.
    pub seed: u64,
}

impl Verdict {
    /// The failing check's name.
    pub fn check(&self) -> Option<&str> {
        self.failure.as_ref().map(|f| f.check.as_str())
    }
}

/// Parse `text`, run it with its own seed, then apply every oracle.
pub fn judge(file: &str, text: &str, opts: RunOptions) -> Verdict {
    let sc = match scenario::parse(file, text) {
        Ok(sc) => sc,
        Err(e) => {
            return Verdict {
                outcome: None,
                failure: Some(scenario_failure("parse", e.line, e.message)),
                seed: 0,
            };
        }
    };
    judge_parsed(&sc, sc.seed, opts)
}

/// Run a parsed scenario with `seed` and apply every oracle.
pub fn judge_parsed(sc: &Scenario, seed: u64, opts: RunOptions) -> Verdict {
    let run = catch_unwind(AssertUnwindSafe(|| scenario::run(sc, seed, opts)));
    let outcome = match run {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            return Verdict {
                outcome: None,
                failure: Some(scenario_failure("panic", 0, msg)),
                seed,
            };
        }
    };
    let failure = outcome
        .failure
        .clone()
        .or_else(|| transcript_failure(&outcome.transcript));
    Verdict {
        outcome: Some(outcome),
        failure,
        seed,
    }
}

fn scenario_failure(check: &str, line: usize, message: String) -> Failure {
    Failure {
        check: check.into(),
        line,
        message,
    }
}

/// QEMU's job status table: which status may follow which.
pub fn transition_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("undefined", "created")
            | ("created", "running" | "aborting" | "null")
            | ("running", "paused" | "ready" | "waiting" | "aborting")
            | ("paused", "running")
            | ("ready", "standby" | "waiting" | "aborting")
            | ("standby", "ready")
            | ("waiting", "pending" | "aborting")
            | ("pending", "concluded" | "aborting")
            | ("aborting", "concluded" | "null")
            | ("concluded", "null")
    )
}

/// Events of a transcript: (name, data), in order.
pub fn transcript_events(transcript: &str) -> Vec<(String, Value)> {
    transcript
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("event ")? + 6..];
            let (name, data) = rest.split_once(' ')?;
            let data: Value = serde_json::from_str(data).ok()?;
            Some((name.to_string(), data))
        })
        .collect()
}

/// The transcript oracles: job status legality and terminal events.
pub fn transcript_failure(transcript: &str) -> Option<Failure> {
    let mut status: BTreeMap<String, String> = BTreeMap::new();
    let mut ended: BTreeMap<String, &str> = BTreeMap::new();
    for (name, data) in transcript_events(transcript) {
        match name.as_str() {
            "JOB_STATUS_CHANGE" => {
                let id = data["id"].as_str().unwrap_or("").to_string();
                let to = data["status"].as_str().unwrap_or("").to_string();
                let from = status
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| "undefined".into());
                if !transition_allowed(&from, &to) {
                    return Some(scenario_failure(
                        "job-state",
                        0,
                        format!("job '{id}' went from {from} to {to}"),
                    ));
                }
                if to == "null" {
                    status.remove(&id);
                    ended.remove(&id);
                } else {
                    status.insert(id, to);
                }
            }
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => {
                let id = data["device"].as_str().unwrap_or("").to_string();
                if let Some(prev) = ended.get(&id) {
                    return Some(scenario_failure(
                        "job-events",
                        0,
                        format!("job '{id}' ended twice ({prev}, then {name})"),
                    ));
                }
                if !status.contains_key(&id) {
                    return Some(scenario_failure(
                        "job-events",
                        0,
                        format!("{name} for job '{id}', which has no status"),
                    ));
                }
                ended.insert(
                    id,
                    if name == "BLOCK_JOB_COMPLETED" {
                        "completed"
                    } else {
                        "cancelled"
                    },
                );
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_table_rejects_skipped_states() {
        assert!(transition_allowed("running", "ready"));
        assert!(!transition_allowed("created", "concluded"));
        assert!(!transition_allowed("paused", "ready"));
        let t = "0 event JOB_STATUS_CHANGE {\"id\":\"j\",\"status\":\"created\"}\n\
                 0 event JOB_STATUS_CHANGE {\"id\":\"j\",\"status\":\"concluded\"}\n";
        assert_eq!(transcript_failure(t).unwrap().check, "job-state");
    }
}
