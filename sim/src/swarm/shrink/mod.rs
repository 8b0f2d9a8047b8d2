//! Delta debugging over a failing scenario's text: drop chunks of steps (halving the chunk size
//! down to single steps), then simplify what is left (halve counts, depths, skips and waits; drop
//! optional `key=value` arguments such as think times, ranges and image options), and repeat
//! until no single reduction still fails the same check. Works on any scenario file, generated
//! or hand-written; the header (purpose, seed, scheduler, latency, limits) is kept.
//!
//! This file holds the search (the loop, chunk and entity drops, per-step simplification) and
//! the candidate budget; `reduce` the reductions themselves (pure text rewrites), `well_formed`
//! the rules a candidate must keep to be worth running.

mod reduce;
mod well_formed;

use engine::util::planted;

use super::oracles::judge;
use crate::scenario::{Failure, RunOptions};
use reduce::{
    cut_graph_backing, cut_header_backing, drop_entity, entities, mirror_creates_target, variants,
};
use well_formed::well_formed;

/// A scenario split into its header lines and its steps (a step is its line plus continuation
/// lines and any `expect error`/`expect return` that belongs to it).
#[derive(Clone, Debug)]
pub struct Split {
    /// Purpose line and settings.
    pub header: Vec<String>,
    /// Steps, each one or more lines.
    pub steps: Vec<Vec<String>>,
}

const HEADER: &[&str] = &["expect-failure", "seed", "scheduler", "latency", "limit"];

impl Split {
    /// Split `text` (comment lines other than the purpose are dropped).
    pub fn parse(text: &str) -> Split {
        let mut s = Split {
            header: Vec::new(),
            steps: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let word = line.split_whitespace().next().unwrap_or("");
            let continues = line.starts_with(char::is_whitespace) && !line.trim().is_empty();
            let tied = line.starts_with("expect error") || line.starts_with("expect return");
            if i == 0 || (s.steps.is_empty() && HEADER.contains(&word)) {
                s.header.push(line.to_string());
            } else if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            } else if (continues || tied) && !s.steps.is_empty() {
                s.steps.last_mut().unwrap().push(line.to_string());
            } else {
                s.steps.push(vec![line.to_string()]);
            }
        }
        s
    }

    /// Back to text.
    pub fn text(&self) -> String {
        let mut out = self.header.join("\n");
        for st in &self.steps {
            out.push('\n');
            out.push_str(&st.join("\n"));
        }
        out.push('\n');
        out
    }
}

/// The result of a shrink.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The minimal scenario text.
    pub text: String,
    /// Steps before and after.
    pub before: usize,
    /// Steps after.
    pub after: usize,
    /// The check that keeps failing.
    pub check: String,
    /// Runs it took.
    pub runs: usize,
}

/// Shrink `text`, keeping the failure of `check` (default: the check it fails now). `None`
/// when the scenario does not fail (or not that check).
///
/// With a planted bug switched on (`blk sim shrink --plant NAME`, the swarm proofs) and a
/// scenario that passes once the bug is off, every reduction must keep that difference too:
/// fail with the bug, pass without it. Otherwise a reduction could trade the bug's failure for
/// one the reduction itself causes (a model declaration whose data the shorter chain no longer
/// holds fails `verify` with the same words).
pub fn shrink(text: &str, check: Option<&str>) -> Option<Shrunk> {
    let first = judge("shrink", text, RunOptions::default());
    let got = first.check()?.to_string();
    if check.is_some_and(|c| c != got) {
        return None;
    }
    let want = signature(first.failure.as_ref()?);
    let passes_without_bug = |t: &str| {
        planted::suspended(|| judge("control", t, RunOptions::default()).failure.is_none())
    };
    let differential = planted::any_on() && passes_without_bug(text);
    // A reduction that runs far longer than the finding (a workload left without its stop
    // runs into the livelock limit) is no reduction: cut it off early.
    let budget = first.outcome.as_ref().map_or(u64::MAX, |o| {
        o.steps
            .saturating_mul(CANDIDATE_STEPS_FACTOR)
            .max(MIN_CANDIDATE_STEPS)
    });
    let mut runs = 1;
    let mut fails = |s: &Split| {
        if !well_formed(s) {
            return false;
        }
        runs += 1;
        let text = with_step_limit(s, budget).text();
        let v = judge("shrink", &text, RunOptions::default());
        v.failure.as_ref().map(signature).as_ref() == Some(&want)
            && (!differential || passes_without_bug(&text))
    };
    let mut cur = Split::parse(text);
    let before = cur.steps.len();
    loop {
        let n0 = cur.text().len();
        drop_entities(&mut cur, &mut fails);
        drop_chunks(&mut cur, &mut fails);
        simplify(&mut cur, &mut fails);
        if cur.text().len() >= n0 {
            break;
        }
    }
    Some(Shrunk {
        before,
        after: cur.steps.len(),
        text: cur.text(),
        check: got,
        runs,
    })
}

/// A candidate may take this many times the scheduler steps of the finding it reduces.
const CANDIDATE_STEPS_FACTOR: u64 = 4;
/// ... and at least this many.
const MIN_CANDIDATE_STEPS: u64 = 200_000;

/// `s` with its `limit steps` lowered to `budget` (added when it has none).
fn with_step_limit(s: &Split, budget: u64) -> Split {
    let mut t = s.clone();
    let limit = |l: &String| l.starts_with("limit steps ");
    let current = t
        .header
        .iter()
        .find(|l| limit(l))
        .and_then(|l| l["limit steps ".len()..].trim().parse::<u64>().ok());
    if current.is_some_and(|c| c <= budget) {
        return t;
    }
    t.header.retain(|l| !limit(l));
    t.header.push(format!("limit steps {budget}"));
    t
}

/// What must stay the same while shrinking: the check and the shape of its message (numbers
/// dropped, first words kept), so "no device 'drive0'" does not stand in for a bad sector.
fn signature(f: &Failure) -> String {
    let words: Vec<String> = f
        .message
        .split_whitespace()
        .take(4)
        .map(|w| w.chars().filter(|c| !c.is_ascii_digit()).collect())
        .collect();
    format!("{}: {}", f.check, words.join(" "))
}

fn drop_chunks(cur: &mut Split, fails: &mut impl FnMut(&Split) -> bool) {
    let mut chunk = cur.steps.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < cur.steps.len() {
            let mut t = cur.clone();
            let end = (i + chunk).min(t.steps.len());
            t.steps.drain(i..end);
            if fails(&t) {
                *cur = t;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
}

fn drop_entities(cur: &mut Split, fails: &mut impl FnMut(&Split) -> bool) {
    for name in entities(cur) {
        let t = drop_entity(cur, &name);
        if t.steps.len() < cur.steps.len() && fails(&t) {
            *cur = t;
        }
    }
}

fn simplify(cur: &mut Split, fails: &mut impl FnMut(&Split) -> bool) {
    for i in (0..cur.steps.len()).rev() {
        for cut in [cut_graph_backing, cut_header_backing, mirror_creates_target] {
            if i < cur.steps.len()
                && let Some(t) = cut(cur, i)
                && fails(&t)
            {
                *cur = t;
            }
        }
    }
    // Last step first: a node's `blockdev-add` is then simplified before the `image create`
    // above it, so "open the chain the header names" is tried while the header still names it.
    for i in (0..cur.steps.len()).rev() {
        if cur.steps[i].len() != 1 {
            continue;
        }
        let mut progress = true;
        while progress {
            progress = false;
            for v in variants(&cur.steps[i][0]) {
                let mut t = cur.clone();
                t.steps[i][0] = v;
                if fails(&t) {
                    *cur = t;
                    progress = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn split_keeps_continuations_and_expectations_with_their_step() {
        let s = Split::parse(
            "# p\nseed 1\nqmp {\"a\":\n   1}\nexpect error GenericError \"x\"\n# c\nverify d\n",
        );
        assert_eq!(s.header, vec!["# p", "seed 1"]);
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[0].len(), 3);
    }

    #[test]
    fn candidates_run_under_a_step_budget() {
        let s = Split::parse("# p\nseed 1\nlimit steps 2000000\nverify d\n");
        let t = with_step_limit(&s, 300_000);
        assert_eq!(t.header, ["# p", "seed 1", "limit steps 300000"]);
        assert_eq!(with_step_limit(&t, 900_000).header, t.header);
        let bare = Split::parse("# p\nverify d\n");
        assert_eq!(with_step_limit(&bare, 5).header, ["# p", "limit steps 5"]);
    }
}
