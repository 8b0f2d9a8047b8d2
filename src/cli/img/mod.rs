//! The qemu-img style image tools: `blk amend|bench|bitmap|create|info|map|measure|compare|convert|dd|resize|commit|rebase|snapshot`.
//!
//! Each subcommand lives in its own file and takes qemu-img's flags, prints qemu-img's
//! messages (prefixed `qemu-img:` like `blk io` prefixes `qemu-io:`) and uses its exit codes.
//! They all run on the real-file env (`RealEnv`) through the same engine as `blk io`: images are
//! opened with `blockdev-add` options (see `open.rs`), data moves through BlockBackends and the
//! generic request path, and allocation comes from block status through the backing chain.

mod amend;
mod bench;
mod bench_run;
mod bitmap;
mod chain;
mod commit;
mod compare;
mod convert;
mod convert_args;
mod create;
mod create_luks;
mod dd;
mod human;
mod info;
mod map;
mod measure;
mod number;
mod open;
mod open_args;
mod opt_help;

pub(crate) use bitmap::stale_bitmaps_warning;
pub(crate) use open::{Tool, parse_src_cache};
pub(crate) use open_args::{FORMAT_CONFLICT, add_objects, help_text as object_help};
mod progress;
mod rebase;
mod resize;
mod snapshot;
mod sparse;

use engine::{Error, Result};

/// Entry point of `blk <cmd> ARGS...`; returns the exit status.
pub fn run(cmd: &str, args: &[String]) -> i32 {
    match cmd {
        "amend" => amend::run(args),
        "bench" => bench::run(args),
        "bitmap" => bitmap::run(args),
        "create" => create::run(args),
        "info" => info::run(args),
        "map" => map::run(args),
        "measure" => measure::run(args),
        "compare" => compare::run(args),
        "convert" => convert::run(args),
        "dd" => dd::run(args),
        "resize" => resize::run(args),
        "commit" => commit::run(args),
        "rebase" => rebase::run(args),
        "snapshot" => snapshot::run(args),
        _ => unreachable!("main dispatches only image commands here"),
    }
}

/// Print `PROG: MSG` on stderr (`qemu-img: ` through the qemu-img link, `blk: ` as blk);
/// returns 1 (qemu-img's status for usage and open errors).
pub(crate) fn fail(msg: impl std::fmt::Display) -> i32 {
    crate::cli::prog::error(msg);
    1
}

pub(crate) use super::getopt::{LongOpt, Split, split};
pub(crate) use open_args::{IMAGE_OPTS, OBJECT};

/// `split`, reporting a bad option as qemu-img does (message and a hint, exit status 1).
/// `--object` and `--image-opts` are recognised here for every subcommand and kept for its
/// `Tool` (see `open_args`).
pub(crate) fn split_or_fail(
    cmd: &str,
    args: &[String],
    short: &str,
    long: &[LongOpt],
    usage: &str,
) -> Result<Split, i32> {
    split_or_fail_as(cmd, args, short, long, usage, 1)
}

/// `split_or_fail` for a command whose status for a bad `--object` is `object_status`
/// (compare's errors are 2, its usage errors 1).
pub(crate) fn split_or_fail_as(
    cmd: &str,
    args: &[String],
    short: &str,
    long: &[LongOpt],
    usage: &str,
    object_status: i32,
) -> Result<Split, i32> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        return Err(0);
    }
    // Tables that place --object/--image-opts themselves (QEMU's order, which its ambiguity
    // messages show) keep them there; the others get them at the end.
    let mut all = long.to_vec();
    for extra in [open_args::OBJECT, open_args::IMAGE_OPTS] {
        // A table may take one in full only ("=object").
        if !all
            .iter()
            .any(|(name, _, _)| name.trim_start_matches('=') == extra.0)
        {
            all.push(extra);
        }
    }
    let (mut opts, operands) =
        split(args, short, &all).map_err(|msg| crate::cli::prog::getopt_error(cmd, msg))?;
    open_args::take(&mut opts).map_err(|c| if c == 0 { 0 } else { object_status })?;
    Ok((opts, operands))
}

/// `--output=human|json`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Human,
    Json,
}

pub(crate) fn parse_output(v: &str) -> Result<Output> {
    match v {
        "human" => Ok(Output::Human),
        "json" => Ok(Output::Json),
        _ => Err(Error::generic(
            "--output must be used with human or json as argument.",
        )),
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
