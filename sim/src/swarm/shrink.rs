//! Delta debugging over a failing scenario's text: drop chunks of steps (halving the chunk size
//! down to single steps), then simplify what is left (halve counts, depths, skips and waits; drop
//! optional `key=value` arguments such as think times, ranges and image options), and repeat
//! until no single reduction still fails the same check. Works on any scenario file, generated
//! or hand-written; the header (purpose, seed, scheduler, latency, limits) is kept.

use super::oracles::judge;
use crate::scenario::{Failure, RunOptions};

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
pub fn shrink(text: &str, check: Option<&str>) -> Option<Shrunk> {
    let first = judge("shrink", text, RunOptions::default());
    let got = first.check()?.to_string();
    if check.is_some_and(|c| c != got) {
        return None;
    }
    let want = signature(first.failure.as_ref()?);
    let mut runs = 1;
    let mut fails = |s: &Split| {
        if !well_formed(s) {
            return false;
        }
        runs += 1;
        let v = judge("shrink", &s.text(), RunOptions::default());
        v.failure.as_ref().map(signature).as_ref() == Some(&want)
    };
    let mut cur = Split::parse(text);
    let before = cur.steps.len();
    loop {
        let n0 = cur.text().len();
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

/// A reduction must not make the scenario misuse the runner: a `verify` while a workload still
/// writes the device reads a moving target and would fail for the wrong reason.
/// Nor may it verify while qemu-io aio requests are in flight (before `aio_flush`), or drop
/// the `model` declaration of data written into a lower layer through a deleted device.
/// Likewise a `model` declaration must keep the write it declares and the flush that made that
/// write durable (the declaration says it is: without the flush a restart may rightly lose it),
/// a drained section its end and a blkdebug breakpoint its resume: without them the run fails
/// or hangs for that reason.
fn well_formed(s: &Split) -> bool {
    let mut running: Vec<&str> = Vec::new();
    // Writes not yet flushed, by device; `written` holds the flushed ones.
    let mut unflushed: Vec<(&str, (&str, &str, &str))> = Vec::new();
    let mut written: Vec<(&str, &str, &str)> = Vec::new();
    let mut drained: Vec<&str> = Vec::new();
    let mut breaks: Vec<&str> = Vec::new();
    let mut aio = false;
    let mut lower: Vec<(&str, (&str, &str, &str))> = Vec::new();
    let mut deleted: Vec<&str> = Vec::new();
    let mut fills: Vec<(&str, &str, &str)> = Vec::new();
    for st in &s.steps {
        let w: Vec<&str> = st[0].split_whitespace().collect();
        match w.as_slice() {
            ["workload", "start", name, ..] => running.push(name),
            ["workload", "stop" | "wait", name] => running.retain(|r| r != name),
            ["crash"] => {
                aio = false;
                running.clear();
                drained.clear();
                breaks.clear();
            }
            ["verify", ..] if !running.is_empty() || aio => return false,
            ["io", _, "aio_write", ..] => aio = true,
            ["io", dev, op @ ("aio_flush" | "flush")] => {
                aio &= *op != "aio_flush";
                for (_, w) in unflushed.iter().filter(|(d, _)| d == dev) {
                    written.push(*w);
                }
                unflushed.retain(|(d, _)| d != dev);
            }
            ["io", dev, "write", "-P", p, off, len] => {
                unflushed.push((dev, (p, off, len)));
                lower.push((dev, (p, off, len)));
            }
            ["device", "del", dev] => deleted.push(dev),
            ["model", _, "fill", p, off, len] if !written.contains(&(p, off, len)) => {
                return false;
            }
            ["model", _, "fill", p, off, len] => fills.push((p, off, len)),
            ["drain", "begin", node, ..] => drained.push(node),
            ["drain", "end", node] => match drained.iter().rposition(|d| d == node) {
                Some(i) => {
                    drained.remove(i);
                }
                None => return false,
            },
            ["io", _, "break", _, tag] => breaks.push(tag),
            ["io", _, "wait_break", tag] if !breaks.contains(tag) => return false,
            ["io", _, "resume", tag] => breaks.retain(|b| b != tag),
            _ => {}
        }
    }
    // Data written through a device that is gone (a lower layer) must stay declared.
    let undeclared = lower
        .iter()
        .any(|(dev, w)| deleted.contains(dev) && !fills.contains(w));
    drained.is_empty() && breaks.is_empty() && !undeclared
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

/// Keys whose numbers are halved and optional arguments that are dropped.
const HALVE: &[&str] = &["count=", "iodepth=", "skip=", "times="];
const OPTIONAL: &[&str] = &[
    "think=",
    "range=",
    "cluster_size=",
    "refcount_bits=",
    "lazy_refcounts=",
    "compat=",
    "werror=",
    "rerror=",
    "cache=",
    "subtree",
];

/// Candidate rewrites of one single-line step.
fn variants(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let mut with = |nw: Option<String>| {
            let mut v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
            match nw {
                Some(n) => v[i] = n,
                None => {
                    v.remove(i);
                }
            }
            out.push(v.join(" "));
        };
        if let Some(k) = HALVE.iter().find(|k| w.starts_with(*k)) {
            if let Ok(n) = w[k.len()..].parse::<u64>()
                && n > 1
            {
                with(Some(format!("{k}{}", n / 2)));
            }
        } else if OPTIONAL.iter().any(|k| w.starts_with(k)) && !line.starts_with("qmp") {
            with(None);
        } else if i == 1 && words[0] == "advance" {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>()
                && n > 1
            {
                with(Some(format!("{}{}", n / 2, &w[digits.len()..])));
            }
        }
    }
    out
}

fn simplify(cur: &mut Split, fails: &mut impl FnMut(&Split) -> bool) {
    for i in 0..cur.steps.len() {
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
    fn a_model_fill_needs_its_write_flushed() {
        let setup = "# p\ndevice add d1 node=l1\nio d1 write -P 0x11 0 4096\n";
        let tail = "device del d1\nmodel d0 fill 0x11 0 4096\n";
        assert!(well_formed(&Split::parse(&format!(
            "{setup}io d1 flush\n{tail}"
        ))));
        assert!(!well_formed(&Split::parse(&format!("{setup}{tail}"))));
        // Another device's flush does not make it durable.
        assert!(!well_formed(&Split::parse(&format!(
            "{setup}io d0 flush\n{tail}"
        ))));
    }

    #[test]
    fn variants_halve_and_drop() {
        let v = variants("workload start w device=d count=40 think=1ms");
        assert!(v.contains(&"workload start w device=d count=20 think=1ms".to_string()));
        assert!(v.contains(&"workload start w device=d count=40".to_string()));
        assert_eq!(variants("advance 9ms"), vec!["advance 4ms".to_string()]);
    }
}
