//! Delta debugging over a failing scenario's text: drop chunks of steps (halving the chunk size
//! down to single steps), then simplify what is left (halve counts, depths, skips and waits; drop
//! optional `key=value` arguments such as think times, ranges and image options), and repeat
//! until no single reduction still fails the same check. Works on any scenario file, generated
//! or hand-written; the header (purpose, seed, scheduler, latency, limits) is kept.

use engine::util::planted;
use serde_json::Value;

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

/// A reduction must not make the scenario misuse the runner: a `verify` while a workload still
/// writes the device reads a moving target and would fail for the wrong reason.
/// Nor may it verify while qemu-io aio requests are in flight (before `aio_flush`), or drop
/// the `model` declaration of data written into a lower layer through a deleted device.
/// Likewise a `model` declaration must keep the write it declares and the flush that made that
/// write durable (the declaration says it is: without the flush a restart may rightly lose it),
/// a drained section its end and a blkdebug breakpoint its resume: without them the run fails
/// or hangs for that reason. A `resume` needs the `wait_break` that saw the request parked:
/// without it the resume races the request to the breakpoint and fails when it loses. And a
/// `wait_break` needs a request issued after its `break`, or it waits for nothing, forever.
fn well_formed(s: &Split) -> bool {
    let mut usage = Usage::default();
    for st in &s.steps {
        let w: Vec<&str> = st[0].split_whitespace().collect();
        if !usage.step(&w) {
            return false;
        }
    }
    usage.ends_clean()
}

/// What [`well_formed`] tracks through a scenario's steps.
#[derive(Default)]
struct Usage<'a> {
    /// Workloads running.
    running: Vec<&'a str>,
    /// qemu-io aio writes issued and not yet flushed with `aio_flush`.
    aio: bool,
    /// Writes not yet flushed, by device; `written` holds the flushed (durable) data.
    unflushed: Vec<(&'a str, Data<'a>)>,
    written: Vec<Data<'a>>,
    /// Writes through each device, devices deleted, data declared with `model ... fill`.
    lower: Vec<(&'a str, Data<'a>)>,
    deleted: Vec<&'a str>,
    fills: Vec<Data<'a>>,
    /// Drained sections open.
    drained: Vec<&'a str>,
    /// Breakpoints set, parked on (`wait_break` seen), and whether a request came after each.
    breaks: Vec<&'a str>,
    parked: Vec<&'a str>,
    armed: Vec<(&'a str, bool)>,
}

impl<'a> Usage<'a> {
    /// Take one step; false when the scenario misuses the runner there.
    fn step(&mut self, w: &[&'a str]) -> bool {
        if matches!(
            w,
            ["io", _, "aio_write" | "write" | "aio_read" | "read", ..] | ["workload", "start", ..]
        ) {
            self.armed.iter_mut().for_each(|a| a.1 = true);
        }
        match w {
            ["crash"] => {
                self.aio = false;
                self.running.clear();
                self.drained.clear();
                self.breaks.clear();
                self.parked.clear();
                true
            }
            ["workload", ..] | ["verify", ..] => self.guest(w),
            ["drain", ..] => self.drain(w),
            ["io", _, "break" | "wait_break" | "resume", ..] => self.breakpoint(w),
            _ => self.data(w),
        }
    }

    /// Workloads, aio and verifies: no verify reads a moving target.
    fn guest(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["workload", "start", name, ..] => self.running.push(name),
            ["workload", "stop" | "wait", name] => self.running.retain(|r| *r != name),
            ["verify", ..] => return self.running.is_empty() && !self.aio,
            _ => {}
        }
        true
    }

    /// Writes, flushes, fills and declarations: a declaration needs its data durable.
    fn data(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["io", _, "aio_write", ..] => self.aio = true,
            ["io", dev, op @ ("aio_flush" | "flush")] => {
                self.aio &= op != "aio_flush";
                let (now, still): (Vec<_>, Vec<_>) =
                    self.unflushed.drain(..).partition(|(d, _)| *d == dev);
                self.written.extend(now.into_iter().map(|(_, w)| w));
                self.unflushed = still;
            }
            ["io", dev, "write", "-P", p, off, len] => {
                self.unflushed.push((dev, (p, off, len)));
                self.lower.push((dev, (p, off, len)));
            }
            ["image", "create", ..] => {
                for f in w.iter().filter_map(|a| a.strip_prefix("fill=")) {
                    let mut p = f.split(':');
                    if let (Some(pat), Some(off), Some(len)) = (p.next(), p.next(), p.next()) {
                        self.written.push((pat, off, len));
                    }
                }
            }
            ["device", "del", dev] => self.deleted.push(dev),
            ["model", _, "fill", p, off, len] => {
                if !self.written.contains(&(p, off, len)) {
                    return false;
                }
                self.fills.push((p, off, len));
            }
            _ => {}
        }
        true
    }

    /// Drained sections: each end closes a section that was begun.
    fn drain(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["drain", "begin", node, ..] => self.drained.push(node),
            ["drain", "end", node] => match self.drained.iter().rposition(|d| *d == node) {
                Some(i) => {
                    self.drained.remove(i);
                }
                None => return false,
            },
            _ => {}
        }
        true
    }

    /// Breakpoints: a wait needs a request after its break, a resume its wait.
    fn breakpoint(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["io", _, "break", _, tag] => {
                self.breaks.push(tag);
                self.armed.push((tag, false));
            }
            ["io", _, "wait_break", tag] => {
                if !self.armed.contains(&(tag, true)) || !self.breaks.contains(&tag) {
                    return false;
                }
                self.parked.push(tag);
            }
            ["io", _, "resume", tag] => {
                if !self.parked.contains(&tag) {
                    return false;
                }
                self.breaks.retain(|b| *b != tag);
                self.parked.retain(|b| *b != tag);
            }
            _ => {}
        }
        true
    }

    /// At the end: every section ended, every breakpoint resumed, and data written through a
    /// device that is gone (a lower layer) still declared.
    fn ends_clean(&self) -> bool {
        let undeclared = self
            .lower
            .iter()
            .any(|(dev, w)| self.deleted.contains(dev) && !self.fills.contains(w));
        self.drained.is_empty() && self.breaks.is_empty() && !undeclared
    }
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
    "copy-on-read",
    "subtree",
];

/// Candidate rewrites of one single-line step.
fn variants(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<String> = backing_from_header(line).into_iter().collect();
    out.extend(without_optional_members(line));
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

/// A `blockdev-add` without its `backing` member: the node opens the chain its image header
/// names, so the `blockdev-add`s of the layers below become droppable.
fn backing_from_header(line: &str) -> Option<String> {
    if !line.starts_with("qmp ") {
        return None;
    }
    let key = ",\"backing\":";
    let at = line.find(key)?;
    let value = &line[at + key.len()..];
    let len = if value.starts_with("null") {
        return None;
    } else {
        value[1..].find('"')? + 2
    };
    Some(format!("{}{}", &line[..at], &value[len..]))
}

/// Data a step writes or declares, as the scenario spells it: pattern, offset, length.
type Data<'a> = (&'a str, &'a str, &'a str);

/// An `image create` step: the path, its backing file, and the data its `fill=`s write.
struct Image<'a> {
    path: &'a str,
    backing: Option<&'a str>,
    fills: Vec<Data<'a>>,
}

/// The `image create` steps.
fn images(cur: &Split) -> Vec<Image<'_>> {
    cur.steps
        .iter()
        .filter(|st| st[0].starts_with("image create "))
        .filter_map(|st| {
            let w: Vec<&str> = st[0].split_whitespace().collect();
            let backing = w.iter().find_map(|a| a.strip_prefix("backing_file="));
            let fills = w
                .iter()
                .filter_map(|a| a.strip_prefix("fill="))
                .filter_map(|f| {
                    let mut p = f.split(':');
                    Some((p.next()?, p.next()?, p.next()?))
                })
                .collect();
            Some(Image {
                path: w.get(2)?,
                backing,
                fills,
            })
        })
        .collect()
}

/// The fills of `path` and of every image below it by backing file.
fn fills_from<'a>(imgs: &[Image<'a>], path: &str) -> Vec<Data<'a>> {
    let mut out = Vec::new();
    let mut at = Some(path);
    let mut hops = 0;
    while let Some(p) = at
        && hops <= imgs.len()
    {
        hops += 1;
        let Some(img) = imgs.iter().find(|i| i.path == p) else {
            break;
        };
        out.extend(img.fills.iter().copied());
        at = img.backing;
    }
    out
}

/// Drop the `model ... fill` declarations of data in `gone`.
fn drop_declarations(t: &mut Split, gone: &[(String, String, String)]) {
    t.steps.retain(|st| {
        !matches!(st[0].split_whitespace().collect::<Vec<_>>()[..],
            ["model", _, "fill", p, off, len]
                if gone.iter().any(|(gp, go, gl)| (gp.as_str(), go.as_str(), gl.as_str()) == (p, off, len)))
    });
}

fn owned(v: Vec<Data<'_>>) -> Vec<(String, String, String)> {
    v.into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// QMP arguments a command cannot do without (names, targets, what to do); every other
/// member of `arguments` is a candidate to drop (speeds, modes, sizes of buffers, ...).
const REQUIRED_MEMBERS: &[&str] = &[
    "job-id",
    "id",
    "device",
    "target",
    "sync",
    "node-name",
    "driver",
    "file",
    "filename",
    "image",
    "size",
    "base",
    "base-node",
    "top",
    "top-node",
    "format",
    "backing",
    "options",
];

/// The `qmp` line without one of its optional `arguments` members, for each such member.
fn without_optional_members(line: &str) -> Vec<String> {
    let Some(json) = line.strip_prefix("qmp ") else {
        return Vec::new();
    };
    let Ok(cmd) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let Some(args) = cmd["arguments"].as_object() else {
        return Vec::new();
    };
    args.keys()
        .filter(|k| !REQUIRED_MEMBERS.contains(&k.as_str()))
        .map(|k| {
            let mut c = cmd.clone();
            c["arguments"].as_object_mut().expect("an object").remove(k);
            format!("qmp {c}")
        })
        .collect()
}

/// Chain cut in a header: step `i`, an image created with a backing file, is created without
/// one, and the declarations of the data in the layers below go with it.
fn cut_header_backing(cur: &Split, i: usize) -> Option<Split> {
    let words: Vec<&str> = cur.steps[i][0].split_whitespace().collect();
    if !words.starts_with(&["image", "create"]) {
        return None;
    }
    let below = words.iter().find_map(|w| w.strip_prefix("backing_file="))?;
    let gone = owned(fills_from(&images(cur), below));
    let kept: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !w.starts_with("backing_file=") && !w.starts_with("backing_fmt="))
        .collect();
    let mut t = cur.clone();
    t.steps[i][0] = kept.join(" ");
    drop_declarations(&mut t, &gone);
    Some(t)
}

/// Step `i`, a `blockdev-mirror` to a node that a plain `image create` (no backing file, no
/// content; its format options give way to the defaults) and `blockdev-add` made just for it,
/// becomes the one `drive-mirror` that creates a like target itself: three steps in one.
fn mirror_creates_target(cur: &Split, i: usize) -> Option<Split> {
    let qmp = |st: &Vec<String>| -> Option<Value> {
        serde_json::from_str(st.join(" ").strip_prefix("qmp ")?).ok()
    };
    let mut cmd = qmp(&cur.steps[i])?;
    if cmd["execute"] != "blockdev-mirror" {
        return None;
    }
    let target = cmd["arguments"]["target"].as_str()?.to_string();
    let add = cur.steps.iter().position(|st| {
        qmp(st).is_some_and(|c| {
            c["execute"] == "blockdev-add" && c["arguments"]["node-name"] == target.as_str()
        })
    })?;
    let node = qmp(&cur.steps[add])?["arguments"].clone();
    let file = node["file"].as_object()?;
    let path = file.get("filename")?.as_str()?;
    let plain_node = node
        .as_object()?
        .keys()
        .all(|k| matches!(k.as_str(), "node-name" | "driver" | "file" | "backing"))
        && node.get("backing").is_none_or(Value::is_null)
        && file.get("driver")? == "file"
        && file
            .keys()
            .all(|k| matches!(k.as_str(), "driver" | "filename"));
    let create = cur.steps.iter().position(|st| {
        let w: Vec<&str> = st[0].split_whitespace().collect();
        w.len() >= 5
            && w[..3] == ["image", "create", path]
            && !w
                .iter()
                .any(|a| a.starts_with("backing_file=") || a.starts_with("fill="))
    })?;
    if !plain_node || create > add || add > i {
        return None;
    }
    let args = cmd["arguments"].as_object_mut()?;
    args.insert("target".into(), Value::from(path));
    args.insert("format".into(), node["driver"].clone());
    cmd["execute"] = Value::from("drive-mirror");
    let mut t = cur.clone();
    t.steps[i] = vec![format!("qmp {cmd}")];
    t.steps.remove(add);
    t.steps.remove(create);
    Some(t)
}

/// The names a scenario gives to things: workloads, jobs, nodes, image files, breakpoints.
fn entities(cur: &Split) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for st in &cur.steps {
        let line = &st[0];
        let w: Vec<&str> = line.split_whitespace().collect();
        let name = match w.as_slice() {
            ["workload", "start", name, ..] | ["image", "create", name, ..] => {
                Some(name.to_string())
            }
            _ if line.starts_with("qmp ") => quoted_after(line, "\"job-id\":")
                .or_else(|| quoted_after(line, "\"node-name\":"))
                .map(str::to_string),
            _ => None,
        };
        if let Some(n) = name
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// Whether `line` names `name` as a whole word, a `key=name` value or a JSON string.
fn mentions(line: &str, name: &str) -> bool {
    line.split(|c: char| c.is_whitespace() || matches!(c, '"' | '=' | ',' | ':' | '{' | '}'))
        .any(|w| w == name)
}

/// Every step that names `name` dropped at once (a workload's start and stop, a job's start,
/// verbs and events, a target's creation, node and mirror), with the declarations of what an
/// image of that name held.
fn drop_entity(cur: &Split, name: &str) -> Split {
    let gone = owned(
        images(cur)
            .into_iter()
            .filter(|i| i.path == name)
            .flat_map(|i| i.fills)
            .collect(),
    );
    let mut t = cur.clone();
    t.steps.retain(|st| !st.iter().any(|l| mentions(l, name)));
    drop_declarations(&mut t, &gone);
    t
}

fn drop_entities(cur: &mut Split, fails: &mut impl FnMut(&Split) -> bool) {
    for name in entities(cur) {
        let t = drop_entity(cur, &name);
        if t.steps.len() < cur.steps.len() && fails(&t) {
            *cur = t;
        }
    }
}

/// Chain cut in the graph: step `i`, a `blockdev-add` naming its backing node, adds the node
/// with `"backing":null` instead, and the `model ... fill` declarations of the devices on that
/// node go with it (what they declared lived in the layers now cut off). With the layers below
/// cut off, chunk dropping can then remove their steps.
fn cut_graph_backing(cur: &Split, i: usize) -> Option<Split> {
    let line = &cur.steps[i][0];
    if cur.steps[i].len() != 1 || !line.starts_with("qmp ") {
        return None;
    }
    let value = line.find("\"backing\":\"")? + "\"backing\":".len();
    let len = line[value + 1..].find('"')?;
    let node = quoted_after(line, "\"node-name\":")?;
    let devices: Vec<&str> = cur
        .steps
        .iter()
        .filter_map(
            |st| match st[0].split_whitespace().collect::<Vec<_>>()[..] {
                ["device", "add", dev, on, ..] if on == format!("node={node}") => Some(dev),
                _ => None,
            },
        )
        .collect();
    let mut t = cur.clone();
    t.steps[i][0] = format!("{}null{}", &line[..value], &line[value + len + 2..]);
    t.steps.retain(|st| {
        !matches!(st[0].split_whitespace().collect::<Vec<_>>()[..],
            ["model", dev, "fill", ..] if devices.contains(&dev))
    });
    Some(t)
}

/// The JSON string that follows `key` in `line`.
fn quoted_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len() + 1;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
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
    fn a_model_fill_may_come_from_an_image_fill() {
        let fill = "image create l0.qcow2 qcow2 4M fill=0x11:0:4096";
        let tail = "model d0 fill 0x11 0 4096\n";
        assert!(well_formed(&Split::parse(&format!("# p\n{fill}\n{tail}"))));
        assert!(!well_formed(&Split::parse(&format!(
            "# p\nimage create l0.qcow2 qcow2 4M\n{tail}"
        ))));
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

    #[test]
    fn variants_cut_backing_chains() {
        let s = Split::parse(
            "# p\nimage create l0.img raw 4M fill=0x10:0:512\n\
             image create top.qcow2 qcow2 4M backing_file=l0.img backing_fmt=raw fill=0x11:0:512\n\
             model d0 fill 0x10 0 512\nmodel d0 fill 0x11 0 512\n",
        );
        let t = cut_header_backing(&s, 1).unwrap();
        assert_eq!(
            t.steps[1][0],
            "image create top.qcow2 qcow2 4M fill=0x11:0:512"
        );
        assert_eq!(t.steps.len(), 3, "the declaration of l0's data goes");
        let add =
            r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top","backing":"l1"}}"#;
        let cut =
            r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top","backing":null}}"#;
        let s = Split::parse(&format!(
            "# p\n{add}\ndevice add d0 node=top\nmodel d0 fill 0x11 0 4096\nmodel d9 fill 1 0 512\nverify d0\n"
        ));
        let t = cut_graph_backing(&s, 0).unwrap();
        assert_eq!(t.steps[0][0], cut);
        assert_eq!(t.steps.len(), 4, "d0's declaration goes, d9's stays");
        assert!(cut_graph_backing(&t, 0).is_none());
        let from_header = r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top"}}"#;
        assert_eq!(variants(add), vec![from_header.to_string()]);
        assert!(variants(cut).is_empty());
    }

    #[test]
    fn an_entity_goes_with_every_step_that_names_it() {
        let s = Split::parse(
            "# p\nworkload start w1 device=d\nworkload start w10 device=d\nworkload stop w1\n\
             qmp {\"execute\":\"blockdev-mirror\",\"arguments\":{\"job-id\":\"j1\"}}\n\
             wait event BLOCK_JOB_READY device=j1\n",
        );
        assert_eq!(entities(&s), ["w1", "w10", "j1"]);
        assert_eq!(drop_entity(&s, "w1").steps.len(), 3, "w10 stays");
        assert_eq!(drop_entity(&s, "j1").steps.len(), 3);
    }

    #[test]
    fn a_mirror_to_a_plain_new_image_becomes_drive_mirror() {
        let s = Split::parse(
            "# p\nimage create t.img raw 4M\n\
             qmp {\"execute\":\"blockdev-add\",\"arguments\":{\"node-name\":\"t\",\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"t.img\"}}}\n\
             qmp {\"execute\":\"blockdev-mirror\",\"arguments\":{\"job-id\":\"j\",\"device\":\"d\",\"target\":\"t\",\"sync\":\"full\"}}\n",
        );
        let t = mirror_creates_target(&s, 2).unwrap();
        assert_eq!(t.steps.len(), 1);
        let cmd: Value = serde_json::from_str(&t.steps[0][0][4..]).unwrap();
        assert_eq!(cmd["execute"], "drive-mirror");
        assert_eq!(cmd["arguments"]["target"], "t.img");
        assert_eq!(cmd["arguments"]["format"], "raw");
        assert_eq!(cmd["arguments"]["job-id"], "j");
    }

    #[test]
    fn optional_qmp_members_are_dropped_one_at_a_time() {
        let line = r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","speed":5,"copy-mode":"write-blocking"}}"#;
        assert_eq!(
            without_optional_members(line),
            [
                r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","copy-mode":"write-blocking"}}"#,
                r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","speed":5}}"#,
            ]
        );
        assert!(without_optional_members("verify d").is_empty());
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

    #[test]
    fn a_resume_needs_its_wait_break() {
        assert!(!well_formed(&Split::parse(
            "# p\nio d break pwritev B1\nio d wait_break B1\nio d resume B1\n"
        )));
        let head = "# p\nio d break pwritev B1\nio d aio_write -P 1 0 512\n";
        assert!(!well_formed(&Split::parse(&format!(
            "{head}io d resume B1\n"
        ))));
        assert!(well_formed(&Split::parse(&format!(
            "{head}io d wait_break B1\nio d resume B1\n"
        ))));
    }
}
