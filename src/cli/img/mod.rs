//! The qemu-img style image tools: `blk create|info|map|compare|convert|resize`.
//!
//! Each subcommand lives in its own file and takes qemu-img's flags, prints qemu-img's
//! messages (prefixed `qemu-img:` like `blk io` prefixes `qemu-io:`) and uses its exit codes.
//! They all run on the real-file env (`RealEnv`) through the same engine as `blk io`: images are
//! opened with `blockdev-add` options (see `open.rs`), data moves through BlockBackends and the
//! generic request path, and allocation comes from block status through the backing chain.

mod compare;
mod convert;
mod create;
mod human;
mod info;
mod map;
mod open;
mod progress;
mod resize;

/// Entry point of `blk <cmd> ARGS...`; returns the exit status.
pub fn run(cmd: &str, args: &[String]) -> i32 {
    match cmd {
        "create" => create::run(args),
        "info" => info::run(args),
        "map" => map::run(args),
        "compare" => compare::run(args),
        "convert" => convert::run(args),
        "resize" => resize::run(args),
        _ => unreachable!("main dispatches only image commands here"),
    }
}

/// Print `qemu-img: MSG` on stderr; returns 1 (qemu-img's status for usage and open errors).
pub(crate) fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("qemu-img: {msg}");
    1
}

/// A long option: name, the character it stands for, and whether it takes an argument.
pub(crate) type LongOpt = (&'static str, char, bool);

/// Options with their arguments, in order, and the operands.
pub(crate) type Split = (Vec<(char, String)>, Vec<String>);

/// Split a command line glibc-style: `short` is a getopt string ("f:o:q"), `long` the long
/// options. Errors are getopt's messages.
pub(crate) fn split(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split, String> {
    let (mut opts, mut operands) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(name) = a.strip_prefix("--") {
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            let Some(&(_, c, takes)) = long.iter().find(|(n, _, _)| *n == name) else {
                return Err(format!("unrecognized option '--{name}'"));
            };
            let v = if takes {
                let v = inline.or_else(|| args.get(i).cloned().inspect(|_| i += 1));
                v.ok_or(format!("option '--{name}' requires an argument"))?
            } else if inline.is_some() {
                return Err(format!("option '--{name}' doesn't allow an argument"));
            } else {
                String::new()
            };
            opts.push((c, v));
            continue;
        }
        if !a.starts_with('-') || a.len() == 1 {
            operands.push(a.clone());
            continue;
        }
        for (pos, c) in a[1..].char_indices() {
            let Some(at) = short.find(c).filter(|_| c != ':') else {
                return Err(format!("invalid option -- '{c}'"));
            };
            if !short[at + 1..].starts_with(':') {
                opts.push((c, String::new()));
                continue;
            }
            let rest = &a[1 + pos + c.len_utf8()..];
            let v = if !rest.is_empty() {
                rest.to_string()
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(format!("option requires an argument -- '{c}'"));
            };
            opts.push((c, v));
            break;
        }
    }
    Ok((opts, operands))
}

/// `split`, reporting a bad option as qemu-img does (message and a hint, exit status 1).
pub(crate) fn split_or_fail(
    args: &[String],
    short: &str,
    long: &[LongOpt],
    usage: &str,
) -> Result<Split, i32> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        return Err(0);
    }
    split(args, short, long).map_err(|msg| {
        eprintln!("qemu-img: {msg}\nTry 'blk --help' for more information");
        1
    })
}

/// `--output=human|json`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Human,
    Json,
}

pub(crate) fn parse_output(v: &str) -> Result<Output, String> {
    match v {
        "human" => Ok(Output::Human),
        "json" => Ok(Output::Json),
        _ => Err("--output must be used with human or json as argument.".to_string()),
    }
}

/// Pretty JSON as qemu prints it: four-space indentation, and empty arrays and objects still
/// opened and closed on their own lines.
pub(crate) fn to_json_pretty(v: &serde_json::Value) -> String {
    let mut out = String::new();
    pretty(v, 0, &mut out);
    out
}

fn pretty(v: &serde_json::Value, depth: usize, out: &mut String) {
    use serde_json::Value;
    let pad = |d: usize| "    ".repeat(d);
    match v {
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                pretty(item, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                pretty(item, depth + 1, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}
