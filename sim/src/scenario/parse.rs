//! The scenario file format: line-oriented text, parsed into [`Step`]s.
//!
//! ```text
//! # One line saying what this scenario shows (required first line).
//! expect-failure verify          # optional, at the top: this scenario must fail this check
//! seed 42                        # default seed (blk sim run --seed overrides)
//! scheduler fifo                 # or random (default)
//! latency 10us..100us            # virtual disk latency
//! limit time 10m                 # livelock limits (defaults: 10m virtual, 5M steps)
//! limit steps 5000000
//! image create disk.img raw 64M  # a file on the virtual disk
//! image create d.qcow2 qcow2 64M cluster_size=4k lazy_refcounts=on
//! qmp {"execute": "blockdev-add", "arguments": {...}}   # JSON may span lines
//! expect error GenericError "is in use"                 # the previous qmp must fail so
//! expect return {"node-name": "disk"}                  # ...or succeed with a reply containing this
//! device add drive0 node=disk werror=stop               # a BlockBackend (guest device)
//! io drive0 write -P 0xab 0 64k  # a qemu-io command on a device (a failure fails the run)
//! io? drive0 read -P 0 0 4k      # ... that may fail (check it with `expect output`)
//! workload start w1 device=drive0 mix=write:70,read:30 bs=4k..64k iodepth=8
//! workload wait w1             # until a count= workload is done
//! workload stop w1
//! fault inject f1 eio path=disk.img ops=write once
//! fault clear f1
//! drain begin disk [subtree]  /  drain end disk
//! advance 10ms
//! wait event BLOCK_JOB_READY device=m0 timeout=60s
//! expect event BLOCK_IO_ERROR action=stop
//! expect iostatus drive0 failed
//! verify drive0
//! crash
//! restart
//! check-file disk.qcow2          # the image file passes a consistency check (leaks allowed)
//! net reset unix:/run/nbd.sock after=4096   # network faults: partition heal drop reset refuse latency
//! ```
//!
//! Parse errors name the file, line and column.

use engine::util::parse_size;
use serde_json::Value;

use super::device_args::device_options;
use super::faults::fault_spec;
use super::lex::{args_of, byte_at, check_event_keys, json_complete, words};
use super::outcome::CHECKS;
use super::workload::WorkloadSpec;
use crate::config::parse_duration;

use super::syntax::Cursor;
pub use super::syntax::{
    Action, Arg, BitmapStep, Expectation, ParseError, Scenario, SnapVerb, Step,
};

/// One directive being parsed: its words, and the file's lines for JSON that spans lines.
struct Line<'a> {
    cur: Cursor<'a>,
    /// The code of the line, leading blanks and comment removed.
    text: &'a str,
    /// Columns of `words` count from `text`; messages add the indent back.
    indent: usize,
    ws: Vec<(usize, String)>,
    lines: &'a [&'a str],
    /// Index in `lines` of the first line not consumed yet.
    next: usize,
}

impl Line<'_> {
    fn kw(&self) -> &str {
        &self.ws[0].1
    }

    fn kw_col(&self) -> usize {
        self.ws[0].0 + self.indent
    }

    /// Column of word `n` (or just past the line when it is missing), for messages.
    fn col_of(&self, n: usize) -> usize {
        self.ws.get(n).map_or(self.text.len() + 1, |w| w.0) + self.indent
    }

    /// Word `n`, or the error that the directive needs `what` there.
    fn need(&self, n: usize, what: &str) -> Result<String, ParseError> {
        self.ws.get(n).map(|w| w.1.clone()).ok_or_else(|| {
            self.cur
                .err(self.col_of(n), format!("'{}' needs {what}", self.kw()))
        })
    }

    fn err(&self, column: usize, message: impl Into<String>) -> ParseError {
        self.cur.err(column, message)
    }

    /// Arguments from word `n` on.
    fn args_from(&self, n: usize) -> Vec<Arg> {
        args_of(&self.ws[n.min(self.ws.len())..])
    }

    /// The text from byte `from` on, joined with the following lines until its brackets close.
    fn json_from(&mut self, from: usize) -> String {
        let mut json = self.text[from..].trim().to_string();
        while !json_complete(&json) && self.next < self.lines.len() {
            json.push(' ');
            json.push_str(self.lines[self.next].trim());
            self.next += 1;
        }
        json
    }
}

/// A directive's parser: the step it makes, or `None` when it only set something (a header
/// directive, or `expect error` / `expect return` completing the `qmp` step before it).
type Directive = fn(&mut Line, &mut Scenario) -> Result<Option<Action>, ParseError>;

/// Every directive, by its first word.
const DIRECTIVES: &[(&str, Directive)] = &[
    ("expect-failure", expect_failure),
    ("seed", seed),
    ("scheduler", scheduler),
    ("latency", latency),
    ("limit", limit),
    ("image", image),
    ("qmp", qmp),
    ("device", device),
    ("model", model),
    ("io", io),
    ("io?", io),
    ("workload", workload),
    ("fault", fault),
    ("drain", drain),
    ("advance", advance),
    ("wait", wait),
    ("expect", expect),
    ("verify", verify),
    ("crash", crash),
    ("restart", restart),
    ("shutdown", shutdown),
    ("check", check),
    ("check-file", check_file),
    ("amend", amend),
    ("bitmap", bitmap),
    ("isnap", isnap),
    ("net", net),
];

/// Parse a scenario file's text.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let first = Cursor { file, line: 1 };
    // The purpose must say something: `#` or `##` alone is no purpose.
    let purpose = match lines.first().map(|l| l.trim()) {
        Some(l) if l.starts_with('#') && !l.trim_start_matches('#').trim().is_empty() => {
            l.trim_start_matches('#').trim().to_string()
        }
        _ => return Err(first.err(1, "the first line must be a '# purpose' comment")),
    };
    let mut sc = Scenario {
        file: file.to_string(),
        purpose,
        expect_failure: None,
        seed: 0,
        fifo: false,
        latency: None,
        time_limit_ns: 600_000_000_000,
        step_limit: 5_000_000,
        steps: Vec::new(),
    };
    let mut i = 1;
    while i < lines.len() {
        let start_line = i + 1;
        let raw = lines[i];
        i += 1;
        let code = raw
            .split_once(" #")
            .map_or(raw, |(code, _)| code)
            .trim_end();
        if code.trim().is_empty() || code.trim_start().starts_with('#') {
            continue;
        }
        let text = code.trim_start();
        let mut l = Line {
            cur: Cursor {
                file,
                line: start_line,
            },
            text,
            indent: code.len() - text.len(),
            ws: words(text),
            lines: &lines,
            next: i,
        };
        let Some((_, directive)) = DIRECTIVES.iter().find(|(kw, _)| *kw == l.kw()) else {
            return Err(l.err(l.kw_col(), format!("unknown directive '{}'", l.kw())));
        };
        let action = directive(&mut l, &mut sc)?;
        i = l.next;
        let Some(action) = action else { continue };
        let text = lines[start_line - 1..i]
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        sc.steps.push(Step {
            line: start_line,
            text,
            action,
        });
    }
    Ok(sc)
}

// ---- header directives: they set the scenario's options and make no step

fn expect_failure(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    if !sc.steps.is_empty() {
        return Err(l.err(
            l.kw_col(),
            "'expect-failure' must come before the first step",
        ));
    }
    let check = l.need(1, "the name of the check that must fail")?;
    if !CHECKS.contains(&check.as_str()) {
        return Err(l.err(
            l.col_of(1),
            format!("unknown check '{check}' (checks: {})", CHECKS.join(", ")),
        ));
    }
    sc.expect_failure = Some(check);
    Ok(None)
}

fn seed(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let v = l.need(1, "a number")?;
    sc.seed = v
        .parse()
        .map_err(|_| l.err(l.col_of(1), format!("bad seed '{v}'")))?;
    Ok(None)
}

fn scheduler(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    sc.fifo = match l.need(1, "fifo or random")?.as_str() {
        "fifo" => true,
        "random" => false,
        other => return Err(l.err(l.col_of(1), format!("unknown scheduler '{other}'"))),
    };
    Ok(None)
}

fn latency(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let v = l.need(1, "a range like 10us..100us")?;
    let (a, b) = v.split_once("..").unwrap_or((&v, &v));
    match (parse_duration(a), parse_duration(b)) {
        (Some(a), Some(b)) if a <= b => sc.latency = Some((a, b)),
        _ => return Err(l.err(l.col_of(1), format!("bad latency range '{v}'"))),
    }
    Ok(None)
}

fn limit(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let what = l.need(1, "'time' or 'steps'")?;
    let v = l.need(2, "a value")?;
    match what.as_str() {
        "time" => {
            sc.time_limit_ns = parse_duration(&v)
                .ok_or_else(|| l.err(l.col_of(2), format!("bad duration '{v}'")))?
        }
        "steps" => {
            sc.step_limit = v
                .parse()
                .map_err(|_| l.err(l.col_of(2), format!("bad step count '{v}'")))?
        }
        _ => {
            return Err(l.err(
                l.col_of(1),
                format!("unknown limit '{what}' (time or steps)"),
            ));
        }
    }
    Ok(None)
}

// ---- setup: images, QMP, devices

fn image(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    if l.need(1, "'create'")? != "create" {
        return Err(l.err(l.col_of(1), "expected 'image create PATH FORMAT SIZE'"));
    }
    let path = l.need(2, "a path")?;
    let format = l.need(3, "a format")?;
    if format != "raw" && format != "qcow2" {
        return Err(l.err(
            l.col_of(3),
            format!("unsupported image format '{format}' (raw or qcow2)"),
        ));
    }
    let size_text = l.need(4, "a size")?;
    let size = parse_size(&size_text)
        .ok_or_else(|| l.err(l.col_of(4), format!("bad size '{size_text}'")))?;
    Ok(Some(Action::ImageCreate {
        path,
        format,
        size,
        options: l.args_from(5),
    }))
}

fn qmp(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let json = l.json_from(l.kw().len());
    let command: Value = serde_json::from_str(&json)
        .map_err(|e| l.err(l.col_of(1), format!("bad QMP JSON: {e}")))?;
    Ok(Some(Action::Qmp {
        command,
        expect_error: None,
        expect_return: None,
    }))
}

fn device(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let verb = l.need(1, "'add' or 'del'")?;
    if verb == "del" {
        let name = l.need(2, "a device name")?;
        if l.ws.len() > 3 {
            return Err(l.err(l.col_of(3), "'device del' takes only a name"));
        }
        return Ok(Some(Action::DeviceDel { name }));
    }
    if verb != "add" {
        return Err(l.err(l.col_of(1), "expected 'device add NAME node=NODE ...'"));
    }
    let name = l.need(2, "a device name")?;
    let args = l.args_from(3);
    if !args.iter().any(|a| a.key == "node") {
        return Err(l.err(l.col_of(3), "'device add' needs node=NODE"));
    }
    device_options(&args).map_err(|m| l.err(l.col_of(3), m))?;
    Ok(Some(Action::DeviceAdd { name, args }))
}

fn model(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let device = l.need(1, "a device name")?;
    let what = l.need(2, "'fill' or 'snapshot'")?;
    if what == "snapshot" {
        let name = l.need(3, "a snapshot name")?;
        return Ok(Some(Action::ModelSnapshot { device, name }));
    }
    if what != "fill" {
        return Err(l.err(
            l.col_of(2),
            "expected 'model DEV fill PATTERN OFFSET LEN' or 'model DEV snapshot NAME'",
        ));
    }
    let p = l.need(3, "a pattern")?;
    let pattern = p
        .strip_prefix("0x")
        .map_or_else(|| p.parse::<u8>().ok(), |h| u8::from_str_radix(h, 16).ok())
        .ok_or_else(|| l.err(l.col_of(3), format!("bad pattern '{p}'")))?;
    let o = l.need(4, "an offset")?;
    let offset = parse_size(&o).ok_or_else(|| l.err(l.col_of(4), format!("bad offset '{o}'")))?;
    let n = l.need(5, "a length")?;
    let len = parse_size(&n).ok_or_else(|| l.err(l.col_of(5), format!("bad length '{n}'")))?;
    if offset % 512 != 0 || len % 512 != 0 {
        return Err(l.err(l.col_of(4), "model fill works on whole 512-byte sectors"));
    }
    Ok(Some(Action::ModelFill {
        device,
        pattern,
        offset,
        len,
    }))
}

// ---- the guest, faults, drains, time

fn io(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let device = l.need(1, "a device name")?;
    l.need(2, "a qemu-io command")?;
    let command = l.text[byte_at(l.text, l.ws[2].0)..].to_string();
    Ok(Some(Action::Io {
        device,
        command,
        may_fail: l.kw() == "io?",
    }))
}

fn workload(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let verb = l.need(1, "'start' or 'stop'")?;
    let name = l.need(2, "a workload name")?;
    Ok(Some(match verb.as_str() {
        "start" => {
            let args = l.args_from(3);
            WorkloadSpec::parse(&args).map_err(|m| l.err(l.col_of(3), m))?;
            Action::WorkloadStart { name, args }
        }
        "stop" => Action::WorkloadStop { name },
        "wait" => Action::WorkloadWait { name },
        _ => return Err(l.err(l.col_of(1), format!("unknown workload verb '{verb}'"))),
    }))
}

fn fault(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(match l.need(1, "'inject' or 'clear'")?.as_str() {
        "inject" => {
            let name = l.need(2, "a fault name")?;
            let kind = l.need(3, "a fault kind")?;
            let args = l.args_from(4);
            fault_spec(&kind, &args).map_err(|m| l.err(l.col_of(3), m))?;
            Action::FaultInject { name, kind, args }
        }
        "clear" => Action::FaultClear {
            name: l.ws.get(2).map(|w| w.1.clone()),
        },
        other => return Err(l.err(l.col_of(1), format!("unknown fault verb '{other}'"))),
    }))
}

fn drain(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let verb = l.need(1, "'begin' or 'end'")?;
    let node = l.need(2, "a node name")?;
    Ok(Some(match verb.as_str() {
        "begin" => Action::DrainBegin {
            node,
            subtree: l.ws.get(3).is_some_and(|w| w.1 == "subtree"),
        },
        "end" => Action::DrainEnd { node },
        _ => return Err(l.err(l.col_of(1), format!("unknown drain verb '{verb}'"))),
    }))
}

fn advance(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let v = l.need(1, "a duration")?;
    Ok(Some(Action::Advance {
        ns: parse_duration(&v).ok_or_else(|| l.err(l.col_of(1), format!("bad duration '{v}'")))?,
    }))
}

// ---- waits and expectations

fn wait(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    if l.need(1, "'event'")? != "event" {
        return Err(l.err(
            l.col_of(1),
            "expected 'wait event NAME [key=value..] [timeout=DUR]'",
        ));
    }
    let name = l.need(2, "an event name")?;
    let mut fields = l.args_from(3);
    check_event_keys(
        &l.cur,
        (&name, l.col_of(2)),
        &fields,
        &["timeout"],
        l.indent,
    )?;
    let mut timeout_ns = 60_000_000_000;
    if let Some(pos) = fields.iter().position(|a| a.key == "timeout") {
        let t = fields.remove(pos);
        let v = t.value.clone().unwrap_or_default();
        timeout_ns = parse_duration(&v)
            .ok_or_else(|| l.err(t.column + l.indent, format!("bad timeout '{v}'")))?;
    }
    Ok(Some(Action::WaitEvent {
        name,
        fields,
        timeout_ns,
    }))
}

fn expect(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let what = l.need(1, "what to expect")?;
    let e = match what.as_str() {
        "error" => return expect_error(l, sc),
        "return" => return expect_return(l, sc),
        "event" => {
            let name = l.need(2, "an event name")?;
            let fields = l.args_from(3);
            check_event_keys(&l.cur, (&name, l.col_of(2)), &fields, &[], l.indent)?;
            Expectation::Event { name, fields }
        }
        "no-event" => {
            let name = l.need(2, "an event name")?;
            let fields = l.args_from(3);
            check_event_keys(&l.cur, (&name, l.col_of(2)), &fields, &[], l.indent)?;
            Expectation::NoEvent { name, fields }
        }
        "iostatus" => Expectation::Iostatus {
            device: l.need(2, "a device")?,
            status: l.need(3, "ok, failed or nospace")?,
        },
        "running" => Expectation::Running(match l.need(2, "yes or no")?.as_str() {
            "yes" => true,
            "no" => false,
            other => {
                return Err(l.err(l.col_of(2), format!("expected yes or no, not '{other}'")));
            }
        }),
        "rate" => {
            let workload = l.need(2, "a workload")?;
            let group = l.need(3, "group=GROUP")?;
            let Some(group) = group.strip_prefix("group=") else {
                return Err(l.err(l.col_of(3), format!("expected group=GROUP, not '{group}'")));
            };
            let drained = match l.ws.get(4).map(|_| l.need(4, "drained")).transpose()? {
                None => false,
                Some(w) if w == "drained" => true,
                Some(w) => {
                    return Err(l.err(l.col_of(4), format!("expected drained, not '{w}'")));
                }
            };
            Expectation::Rate {
                workload,
                group: group.to_string(),
                drained,
            }
        }
        "output" => {
            l.need(2, "the expected output line")?;
            Expectation::Output(
                l.text[byte_at(l.text, l.ws[2].0)..]
                    .trim_matches('"')
                    .to_string(),
            )
        }
        other => return Err(l.err(l.col_of(1), format!("unknown expectation '{other}'"))),
    };
    Ok(Some(Action::Expect(e)))
}

/// `expect error CLASS [TEXT]`: the `qmp` step just before must fail so.
fn expect_error(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let class = l.need(2, "an error class")?;
    let text = l.ws.get(3).map(|w| w.1.clone()).unwrap_or_default();
    match sc.steps.last_mut() {
        Some(Step {
            action:
                Action::Qmp {
                    expect_error,
                    expect_return: None,
                    ..
                },
            ..
        }) if expect_error.is_none() => {
            *expect_error = Some((class, text));
            Ok(None)
        }
        _ => Err(l.err(l.kw_col(), "'expect error' must follow a 'qmp' step")),
    }
}

/// `expect return JSON`: the `qmp` step just before must succeed with a reply containing it.
fn expect_return(l: &mut Line, sc: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let json = l.json_from(byte_at(l.text, l.ws[1].0) + l.ws[1].1.len());
    let want: Value = serde_json::from_str(&json)
        .map_err(|e| l.err(l.col_of(2), format!("bad JSON after 'expect return': {e}")))?;
    match sc.steps.last_mut() {
        Some(Step {
            action:
                Action::Qmp {
                    expect_error: None,
                    expect_return,
                    ..
                },
            ..
        }) if expect_return.is_none() => {
            *expect_return = Some(want);
            Ok(None)
        }
        _ => Err(l.err(l.kw_col(), "'expect return' must follow a 'qmp' step")),
    }
}

// ---- checks, crash and restart

fn verify(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let device = l.need(1, "a device name")?;
    let snapshot = match l.ws.get(2) {
        None => None,
        Some(_) => {
            let arg = l.need(2, "snapshot=NAME")?;
            Some(
                arg.strip_prefix("snapshot=")
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        l.err(l.col_of(2), format!("expected snapshot=NAME, got '{arg}'"))
                    })?
                    .to_string(),
            )
        }
    };
    Ok(Some(Action::Verify { device, snapshot }))
}

fn crash(_: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(Action::Crash))
}

fn restart(_: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(Action::Restart))
}

fn shutdown(_: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(Action::Shutdown))
}

fn check(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(Action::Check {
        node: l.need(1, "a node name")?,
    }))
}

fn check_file(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    Ok(Some(Action::CheckFile {
        path: l.need(1, "an image path")?,
    }))
}

fn amend(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let path = l.need(1, "an image path")?;
    let mut opts = Vec::new();
    for a in l.args_from(2) {
        match (a.key.as_str(), a.value) {
            ("compat" | "refcount_bits" | "lazy_refcounts", Some(v)) => opts.push((a.key, v)),
            _ => return Err(l.err(a.column, format!("unknown argument '{}'", a.key))),
        }
    }
    if opts.is_empty() {
        return Err(l.err(
            1,
            "amend needs options (compat=, refcount_bits=, lazy_refcounts=)",
        ));
    }
    Ok(Some(Action::Amend { path, opts }))
}

fn bitmap(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let verb = l.need(1, "a verb (add enable disable clear remove merge check)")?;
    let names = |from: usize| l.ws[from.min(l.ws.len())..].iter().map(|w| w.1.clone());
    let step = match verb.as_str() {
        "add" => {
            let device = l.need(2, "a device name")?;
            let name = l.need(3, "a bitmap name")?;
            let (mut granularity, mut disabled, mut persistent) = (None, false, false);
            for a in l.args_from(4) {
                match (a.key.as_str(), a.value.as_deref()) {
                    ("disabled", None) => disabled = true,
                    ("persistent", None) => persistent = true,
                    ("granularity", Some(v)) => {
                        let g = v.parse::<u64>().ok().filter(|g| g.is_power_of_two());
                        let g =
                            g.ok_or_else(|| l.err(a.column, format!("bad granularity '{v}'")))?;
                        granularity = Some(g);
                    }
                    _ => return Err(l.err(a.column, format!("unknown argument '{}'", a.key))),
                }
            }
            BitmapStep::Add {
                device,
                name,
                granularity,
                disabled,
                persistent,
            }
        }
        "enable" => BitmapStep::Enable(l.need(2, "a bitmap name")?),
        "disable" => BitmapStep::Disable(l.need(2, "a bitmap name")?),
        "clear" => BitmapStep::Clear(l.need(2, "a bitmap name")?),
        "remove" => BitmapStep::Remove(l.need(2, "a bitmap name")?),
        "merge" => {
            let target = l.need(2, "a target bitmap")?;
            l.need(3, "source bitmaps")?;
            BitmapStep::Merge {
                target,
                sources: names(3).collect(),
            }
        }
        "check" => BitmapStep::Check(names(2).collect()),
        _ => return Err(l.err(l.col_of(1), format!("unknown bitmap verb '{verb}'"))),
    };
    Ok(Some(Action::Bitmap(step)))
}

fn isnap(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let device = l.need(1, "a device name")?;
    let verb = match l.need(2, "create, apply, delete or taken")?.as_str() {
        "create" => SnapVerb::Create,
        "apply" => SnapVerb::Apply,
        "delete" => SnapVerb::Delete,
        "taken" => SnapVerb::Taken,
        other => return Err(l.err(l.col_of(2), format!("unknown isnap verb '{other}'"))),
    };
    let name = l.need(3, "a snapshot name")?;
    Ok(Some(Action::InternalSnapshot { device, verb, name }))
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;

fn net(l: &mut Line, _: &mut Scenario) -> Result<Option<Action>, ParseError> {
    let words: Vec<String> = l.ws[1..].iter().map(|w| w.1.clone()).collect();
    let step = super::net_steps::parse_net(&words).map_err(|(i, m)| l.err(l.col_of(i + 1), m))?;
    Ok(Some(Action::Net(step)))
}
