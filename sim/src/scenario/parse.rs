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
//! ```
//!
//! Parse errors name the file, line and column.

use std::fmt;

use super::lex::{byte_at, check_event_keys, words};
use crate::config::parse_duration;
use engine::util::parse_size;
use serde_json::Value;

/// A parse error with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// One `key=value` argument or bare word of a directive, with its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    /// The key (or the bare word).
    pub key: String,
    /// The value, if `key=value`.
    pub value: Option<String>,
    /// 1-based column where the argument starts.
    pub column: usize,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create an image on the virtual disk.
    ImageCreate {
        /// Path on the virtual disk.
        path: String,
        /// Format: `raw` (a sparse file of `size` bytes) or `qcow2`.
        format: String,
        /// Virtual size.
        size: u64,
        /// Format options (`cluster_size=`, `compat=`, `refcount_bits=`, `backing_file=`,
        /// `backing_fmt=`, `lazy_refcounts=` for qcow2).
        options: Vec<Arg>,
    },
    /// A QMP command; `expect` says how the reply must look (success if `None`).
    Qmp {
        /// The command object.
        command: Value,
        /// Required error class and message substring, if the command must fail.
        expect_error: Option<(String, String)>,
        /// JSON the successful reply's `return` must contain (objects by subset, the rest
        /// exactly).
        expect_return: Option<Value>,
    },
    /// Attach a device.
    DeviceAdd {
        /// Device name.
        name: String,
        /// Further arguments (node=, werror=, rerror=, cache=, read-only, share-rw).
        args: Vec<Arg>,
    },
    /// Detach a device (`device del NAME`).
    DeviceDel {
        /// Device name.
        name: String,
    },
    /// Declare content the device already shows (`model DEV fill PATTERN OFFSET LEN`): the
    /// reference model takes it as durable. For data put into lower layers of a chain through
    /// other devices; a `verify` right after checks the declaration.
    ModelFill {
        /// Device name.
        device: String,
        /// Byte pattern.
        pattern: u8,
        /// Offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A qemu-io command line on a device.
    Io {
        /// Device name.
        device: String,
        /// The command line.
        command: String,
        /// `io?`: the command may fail (check its output with `expect output`).
        may_fail: bool,
    },
    /// Start a seeded background workload.
    WorkloadStart {
        /// Workload name.
        name: String,
        /// Arguments (device=, mix=, bs=, iodepth=, range=, count=).
        args: Vec<Arg>,
    },
    /// Wait until a `count=` workload has issued all its requests.
    WorkloadWait {
        /// Workload name.
        name: String,
    },
    /// Stop a workload and wait for its requests.
    WorkloadStop {
        /// Workload name.
        name: String,
    },
    /// Inject a virtual-disk fault.
    FaultInject {
        /// Name to clear it by.
        name: String,
        /// Fault class.
        kind: String,
        /// Targeting and trigger arguments.
        args: Vec<Arg>,
    },
    /// Remove one fault, or all.
    FaultClear {
        /// The fault's name; `None` clears all.
        name: Option<String>,
    },
    /// Begin a drained section on a node.
    DrainBegin {
        /// Node name.
        node: String,
        /// Drain the whole subtree.
        subtree: bool,
    },
    /// End the innermost drained section on a node.
    DrainEnd {
        /// Node name.
        node: String,
    },
    /// Let virtual time pass.
    Advance {
        /// Nanoseconds.
        ns: u64,
    },
    /// Wait for a QMP event (matching fields) with a virtual-time timeout.
    WaitEvent {
        /// Event name.
        name: String,
        /// `key=value` fields the event's data must have.
        fields: Vec<Arg>,
        /// Timeout in virtual ns.
        timeout_ns: u64,
    },
    /// An expectation.
    Expect(Expectation),
    /// Compare a device's bytes with the reference model.
    Verify {
        /// Device name.
        device: String,
    },
    /// `check NODE`: the qcow2 consistency check of a node (read-only: no repair). Fails the
    /// run on corruptions or check errors; leaks (normal after a power loss) are reported.
    Check {
        /// Node name.
        node: String,
    },
    /// Power loss.
    Crash,
    /// Reopen every image from its durable state and re-create the devices.
    Restart,
    /// `check-file PATH`: open a qcow2 image file on its own (read-only, no backing) and check
    /// it; corruptions or check errors fail the run, leaks are reported.
    CheckFile {
        /// Path on the virtual disk.
        path: String,
    },
}

/// What `expect` checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Expectation {
    /// An event of this name with these fields was emitted (and not yet matched).
    Event {
        /// Event name.
        name: String,
        /// Required fields.
        fields: Vec<Arg>,
    },
    /// No event of this name is pending.
    NoEvent {
        /// Event name.
        name: String,
    },
    /// A device's I/O status.
    Iostatus {
        /// Device.
        device: String,
        /// ok, failed or nospace.
        status: String,
    },
    /// Whether the machine runs.
    Running(bool),
    /// The last qemu-io command's output contains this text.
    Output(String),
}

/// One parsed step with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// 1-based line of the step's first line.
    pub line: usize,
    /// The source text (joined if it spanned lines).
    pub text: String,
    /// What to do.
    pub action: Action,
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// File name (for messages).
    pub file: String,
    /// The purpose line.
    pub purpose: String,
    /// `expect-failure CHECK`: this scenario must fail with this check.
    pub expect_failure: Option<String>,
    /// Default seed.
    pub seed: u64,
    /// FIFO scheduling instead of random.
    pub fifo: bool,
    /// Disk latency range in ns.
    pub latency: Option<(u64, u64)>,
    /// Virtual-time limit (livelock detection).
    pub time_limit_ns: u64,
    /// Scheduling-step limit (livelock detection).
    pub step_limit: u64,
    /// The steps.
    pub steps: Vec<Step>,
}

pub(super) struct Cursor<'a> {
    file: &'a str,
    line: usize,
}

impl Cursor<'_> {
    pub(super) fn err(&self, column: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line: self.line,
            column,
            message: message.into(),
        }
    }
}

fn args_of(ws: &[(usize, String)]) -> Vec<Arg> {
    ws.iter()
        .map(|(col, w)| match w.split_once('=') {
            Some((k, v)) => Arg {
                key: k.to_string(),
                value: Some(v.to_string()),
                column: *col,
            },
            None => Arg {
                key: w.clone(),
                value: None,
                column: *col,
            },
        })
        .collect()
}

/// True when the brackets of a JSON text are balanced (outside strings).
fn json_complete(text: &str) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0i64, false, false);
    for c in text.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0
}

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
        let cur = Cursor {
            file,
            line: start_line,
        };
        let raw = lines[i];
        i += 1;
        let line = raw
            .split_once(" #")
            .map_or(raw, |(code, _)| code)
            .trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let line = line.trim_start();
        let ws = words(line);
        let (kw_col, kw) = (ws[0].0 + indent, ws[0].1.as_str());
        let col_of = |n: usize| ws.get(n).map_or(line.len() + 1, |w| w.0) + indent;
        let need = |n: usize, what: &str| -> Result<String, ParseError> {
            ws.get(n)
                .map(|w| w.1.clone())
                .ok_or_else(|| cur.err(col_of(n), format!("'{kw}' needs {what}")))
        };
        let action = match kw {
            "expect-failure" => {
                if !sc.steps.is_empty() {
                    return Err(cur.err(kw_col, "'expect-failure' must come before the first step"));
                }
                let check = need(1, "the name of the check that must fail")?;
                if !super::run::CHECKS.contains(&check.as_str()) {
                    return Err(cur.err(
                        col_of(1),
                        format!(
                            "unknown check '{check}' (checks: {})",
                            super::run::CHECKS.join(", ")
                        ),
                    ));
                }
                sc.expect_failure = Some(check);
                continue;
            }
            "seed" => {
                let v = need(1, "a number")?;
                sc.seed = v
                    .parse()
                    .map_err(|_| cur.err(col_of(1), format!("bad seed '{v}'")))?;
                continue;
            }
            "scheduler" => {
                sc.fifo = match need(1, "fifo or random")?.as_str() {
                    "fifo" => true,
                    "random" => false,
                    other => return Err(cur.err(col_of(1), format!("unknown scheduler '{other}'"))),
                };
                continue;
            }
            "latency" => {
                let v = need(1, "a range like 10us..100us")?;
                let (a, b) = v.split_once("..").unwrap_or((&v, &v));
                let (a, b) = (parse_duration(a), parse_duration(b));
                match (a, b) {
                    (Some(a), Some(b)) if a <= b => sc.latency = Some((a, b)),
                    _ => return Err(cur.err(col_of(1), format!("bad latency range '{v}'"))),
                }
                continue;
            }
            "limit" => {
                let what = need(1, "'time' or 'steps'")?;
                let v = need(2, "a value")?;
                match what.as_str() {
                    "time" => {
                        sc.time_limit_ns = parse_duration(&v)
                            .ok_or_else(|| cur.err(col_of(2), format!("bad duration '{v}'")))?
                    }
                    "steps" => {
                        sc.step_limit = v
                            .parse()
                            .map_err(|_| cur.err(col_of(2), format!("bad step count '{v}'")))?
                    }
                    _ => {
                        return Err(
                            cur.err(col_of(1), format!("unknown limit '{what}' (time or steps)"))
                        );
                    }
                }
                continue;
            }
            "image" => {
                if need(1, "'create'")? != "create" {
                    return Err(cur.err(col_of(1), "expected 'image create PATH FORMAT SIZE'"));
                }
                let path = need(2, "a path")?;
                let format = need(3, "a format")?;
                if format != "raw" && format != "qcow2" {
                    return Err(cur.err(
                        col_of(3),
                        format!("unsupported image format '{format}' (raw or qcow2)"),
                    ));
                }
                let size_text = need(4, "a size")?;
                let size = parse_size(&size_text)
                    .ok_or_else(|| cur.err(col_of(4), format!("bad size '{size_text}'")))?;
                Action::ImageCreate {
                    path,
                    format,
                    size,
                    options: args_of(&ws[5..]),
                }
            }
            "qmp" => {
                let mut json = line[kw.len()..].trim().to_string();
                while !json_complete(&json) && i < lines.len() {
                    json.push(' ');
                    json.push_str(lines[i].trim());
                    i += 1;
                }
                let command: Value = serde_json::from_str(&json)
                    .map_err(|e| cur.err(col_of(1), format!("bad QMP JSON: {e}")))?;
                Action::Qmp {
                    command,
                    expect_error: None,
                    expect_return: None,
                }
            }
            "device" => {
                let verb = need(1, "'add' or 'del'")?;
                if verb == "del" {
                    let name = need(2, "a device name")?;
                    if ws.len() > 3 {
                        return Err(cur.err(col_of(3), "'device del' takes only a name"));
                    }
                    Action::DeviceDel { name }
                } else {
                    if verb != "add" {
                        return Err(cur.err(col_of(1), "expected 'device add NAME node=NODE ...'"));
                    }
                    let name = need(2, "a device name")?;
                    let args = args_of(&ws[3..]);
                    if !args.iter().any(|a| a.key == "node") {
                        return Err(cur.err(col_of(3), "'device add' needs node=NODE"));
                    }
                    super::run::device_options(&args).map_err(|m| cur.err(col_of(3), m))?;
                    Action::DeviceAdd { name, args }
                }
            }
            "model" => {
                let device = need(1, "a device name")?;
                if need(2, "'fill'")? != "fill" {
                    return Err(cur.err(col_of(2), "expected 'model DEV fill PATTERN OFFSET LEN'"));
                }
                let p = need(3, "a pattern")?;
                let pattern = p
                    .strip_prefix("0x")
                    .map_or_else(|| p.parse::<u8>().ok(), |h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| cur.err(col_of(3), format!("bad pattern '{p}'")))?;
                let o = need(4, "an offset")?;
                let offset = engine::util::parse_size(&o)
                    .ok_or_else(|| cur.err(col_of(4), format!("bad offset '{o}'")))?;
                let l = need(5, "a length")?;
                let len = engine::util::parse_size(&l)
                    .ok_or_else(|| cur.err(col_of(5), format!("bad length '{l}'")))?;
                if offset % 512 != 0 || len % 512 != 0 {
                    return Err(cur.err(col_of(4), "model fill works on whole 512-byte sectors"));
                }
                Action::ModelFill {
                    device,
                    pattern,
                    offset,
                    len,
                }
            }
            "io" | "io?" => {
                let device = need(1, "a device name")?;
                need(2, "a qemu-io command")?;
                let command = line[byte_at(line, ws[2].0)..].to_string();
                Action::Io {
                    device,
                    command,
                    may_fail: kw == "io?",
                }
            }
            "workload" => {
                let verb = need(1, "'start' or 'stop'")?;
                let name = need(2, "a workload name")?;
                match verb.as_str() {
                    "start" => {
                        let args = args_of(&ws[3..]);
                        super::workload::WorkloadSpec::parse(&args)
                            .map_err(|m| cur.err(col_of(3), m))?;
                        Action::WorkloadStart { name, args }
                    }
                    "stop" => Action::WorkloadStop { name },
                    "wait" => Action::WorkloadWait { name },
                    _ => return Err(cur.err(col_of(1), format!("unknown workload verb '{verb}'"))),
                }
            }
            "fault" => match need(1, "'inject' or 'clear'")?.as_str() {
                "inject" => {
                    let name = need(2, "a fault name")?;
                    let kind = need(3, "a fault kind")?;
                    let args = args_of(&ws[4..]);
                    super::faults::fault_spec(&kind, &args).map_err(|m| cur.err(col_of(3), m))?;
                    Action::FaultInject { name, kind, args }
                }
                "clear" => Action::FaultClear {
                    name: ws.get(2).map(|w| w.1.clone()),
                },
                other => return Err(cur.err(col_of(1), format!("unknown fault verb '{other}'"))),
            },
            "drain" => {
                let verb = need(1, "'begin' or 'end'")?;
                let node = need(2, "a node name")?;
                match verb.as_str() {
                    "begin" => Action::DrainBegin {
                        node,
                        subtree: ws.get(3).is_some_and(|w| w.1 == "subtree"),
                    },
                    "end" => Action::DrainEnd { node },
                    _ => return Err(cur.err(col_of(1), format!("unknown drain verb '{verb}'"))),
                }
            }
            "advance" => {
                let v = need(1, "a duration")?;
                Action::Advance {
                    ns: parse_duration(&v)
                        .ok_or_else(|| cur.err(col_of(1), format!("bad duration '{v}'")))?,
                }
            }
            "wait" => {
                if need(1, "'event'")? != "event" {
                    return Err(cur.err(
                        col_of(1),
                        "expected 'wait event NAME [key=value..] [timeout=DUR]'",
                    ));
                }
                let name = need(2, "an event name")?;
                let mut fields = args_of(&ws[3..]);
                check_event_keys(&cur, (&name, col_of(2)), &fields, &["timeout"], indent)?;
                let mut timeout_ns = 60_000_000_000;
                if let Some(pos) = fields.iter().position(|a| a.key == "timeout") {
                    let t = fields.remove(pos);
                    let v = t.value.clone().unwrap_or_default();
                    timeout_ns = parse_duration(&v)
                        .ok_or_else(|| cur.err(t.column + indent, format!("bad timeout '{v}'")))?;
                }
                Action::WaitEvent {
                    name,
                    fields,
                    timeout_ns,
                }
            }
            "expect" => {
                let what = need(1, "what to expect")?;
                match what.as_str() {
                    "error" => {
                        let class = need(2, "an error class")?;
                        let text = ws.get(3).map(|w| w.1.clone()).unwrap_or_default();
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
                                continue;
                            }
                            _ => {
                                return Err(
                                    cur.err(kw_col, "'expect error' must follow a 'qmp' step")
                                );
                            }
                        }
                    }
                    "return" => {
                        let mut json = line[byte_at(line, ws[1].0) + ws[1].1.len()..]
                            .trim()
                            .to_string();
                        while !json_complete(&json) && i < lines.len() {
                            json.push(' ');
                            json.push_str(lines[i].trim());
                            i += 1;
                        }
                        let want: Value = serde_json::from_str(&json).map_err(|e| {
                            cur.err(col_of(2), format!("bad JSON after 'expect return': {e}"))
                        })?;
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
                                continue;
                            }
                            _ => {
                                return Err(
                                    cur.err(kw_col, "'expect return' must follow a 'qmp' step")
                                );
                            }
                        }
                    }
                    "event" => {
                        let name = need(2, "an event name")?;
                        let fields = args_of(&ws[3..]);
                        check_event_keys(&cur, (&name, col_of(2)), &fields, &[], indent)?;
                        Action::Expect(Expectation::Event { name, fields })
                    }
                    "no-event" => {
                        let name = need(2, "an event name")?;
                        check_event_keys(&cur, (&name, col_of(2)), &[], &[], indent)?;
                        Action::Expect(Expectation::NoEvent { name })
                    }
                    "iostatus" => Action::Expect(Expectation::Iostatus {
                        device: need(2, "a device")?,
                        status: need(3, "ok, failed or nospace")?,
                    }),
                    "running" => {
                        Action::Expect(Expectation::Running(match need(2, "yes or no")?.as_str() {
                            "yes" => true,
                            "no" => false,
                            other => {
                                return Err(cur
                                    .err(col_of(2), format!("expected yes or no, not '{other}'")));
                            }
                        }))
                    }
                    "output" => {
                        need(2, "the expected output line")?;
                        Action::Expect(Expectation::Output(
                            line[byte_at(line, ws[2].0)..].trim_matches('"').to_string(),
                        ))
                    }
                    other => {
                        return Err(cur.err(col_of(1), format!("unknown expectation '{other}'")));
                    }
                }
            }
            "verify" => Action::Verify {
                device: need(1, "a device name")?,
            },
            "crash" => Action::Crash,
            "restart" => Action::Restart,
            "check" => Action::Check {
                node: need(1, "a node name")?,
            },
            "check-file" => Action::CheckFile {
                path: need(1, "an image path")?,
            },
            other => return Err(cur.err(kw_col, format!("unknown directive '{other}'"))),
        };
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
