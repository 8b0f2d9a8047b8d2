//! `blk check`: qemu-img check on the blk engine.
//!
//! `blk check [-f qcow2] [--output=human|json] [-r leaks|all] [-T cache] [-q] [-U] FILE` opens FILE
//! (read-only, or read-write to repair), runs the qcow2 consistency check and prints qemu-img's
//! report: the diagnostics on stderr, then the human summary or the JSON `ImageCheck` on stdout.
//! When a repair fixed something, qemu-img's "repaired" note is printed and the numbers are those
//! of a second check of the fixed image. Exit status is qemu-img's: 0 clean, 1 check not completed
//! (or internal errors), 2 corruptions left, 3 leaks left, 63 format without checks.
//!
//! Only qcow2 can be checked; without `-f` the format is probed from the qcow2 magic.

use std::io::Read;

use engine::drivers::qcow2::{CheckReport, Repair, check_node};
use engine::filename::{image_options, probe_target};
use engine::qemu_io::{CacheMode, OpenSpec};
use engine::{Errno, Error};

use crate::cli::img::{FORMAT_CONFLICT, Tool, parse_src_cache, split_or_fail};

const USAGE: &str = "\
Usage: blk check [-f FMT] [--output=human|json] [-r leaks|all] [-T SRC_CACHE] [-q] [-U] FILE
Check a disk image for consistency (qemu-img check) with the blk engine.

  -f FMT             image format (only qcow2 supports checks; probed when omitted)
  --output=FMT       human (default) or json
  -r leaks|all       repair leaked clusters only, or all errors
  -T SRC_CACHE       cache mode (none, writeback, writethrough, directsync, unsafe)
  -q                 quiet: print no report on stdout
  -U, --force-share  open the image in shared mode (not with -r)
  --image-opts       FILE is an option string (key=value,...)
  --object OBJDEF    create a user object (a secret)
  -h, --help         display this help and exit";

struct Args {
    format: Option<String>,
    json: bool,
    repair: Option<Repair>,
    quiet: bool,
    file: String,
    /// `-T`: the image's cache mode.
    cache: CacheMode,
    /// `-U`: open in shared mode (a repair refuses it, as in qemu-img).
    force_share: bool,
}

fn parse(args: &[String]) -> Result<Args, i32> {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("format", 'f', true),
        ("force-share", 'U', false),
        ("cache", 'T', true),
        ("output", 'o', true),
        super::img::OBJECT,
        ("repair", 'r', true),
    ];
    let (opts, operands) = split_or_fail("check", args, "hf:r:T:qU", &long, USAGE)?;
    let (mut format, mut json, mut repair, mut quiet) = (None, false, None, false);
    let (mut cache, mut force_share) = (None, false);
    let bad = |msg: String| Err(crate::cli::prog::usage_error("check", msg));
    for (c, v) in opts {
        match c {
            'f' => format = Some(v),
            'q' => quiet = true,
            'U' => force_share = true,
            'T' => cache = Some(v),
            'o' => match v.as_str() {
                "human" => json = false,
                "json" => json = true,
                o => return bad(format!("--output expects 'human' or 'json' not '{o}'")),
            },
            'r' => match v.as_str() {
                "leaks" => repair = Some(Repair::Leaks),
                "all" => repair = Some(Repair::All),
                o => return bad(format!("--repair (-r) expects 'leaks' or 'all' not '{o}'")),
            },
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [file] = operands.as_slice() else {
        return bad("Expecting one image file name".into());
    };
    let cache = match cache.as_deref().map(parse_src_cache).transpose() {
        Ok(c) => c.unwrap_or(CacheMode::Writeback),
        Err(e) => {
            crate::cli::prog::error(e);
            return Err(1);
        }
    };
    Ok(Args {
        format,
        json,
        repair,
        quiet,
        file: file.clone(),
        cache,
        force_share,
    })
}

/// True when `file` starts with the qcow2 magic.
fn is_qcow2(file: &str) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| magic == *b"QFI\xfb")
}

/// Open the image (only qcow2 has checks: status 63 for any other format) and check it,
/// repairing with `-r`; an error has been printed when this returns `Err(status)`.
fn open_and_check(tool: &Tool, a: &Args, image_opts: bool) -> Result<CheckReport, i32> {
    let fail = |msg: Error| {
        crate::cli::prog::error(msg);
        Err(1)
    };
    if image_opts && a.format.is_some() {
        return fail(Error::generic(FORMAT_CONFLICT));
    }
    let named = match image_options(&a.file, a.format.as_deref(), image_opts) {
        Ok(n) => n,
        Err(e) => return fail(e.could_not_open(&a.file)),
    };
    let host = probe_target(&named);
    let format = match named.get("driver").and_then(|d| d.as_str()) {
        Some(d) => d.to_string(),
        None if host.as_deref().is_some_and(is_qcow2) => "qcow2".to_string(),
        None => "raw".to_string(),
    };
    if let Some(h) = &host
        && !std::path::Path::new(h).exists()
    {
        let missing = Error::io(Errno::ENOENT).could_not_open(h);
        return fail(missing.could_not_open(&a.file));
    }
    if format != "qcow2" {
        crate::cli::prog::error("This image format does not support checks");
        return Err(63);
    }
    let spec = OpenSpec {
        filename: Some(a.file.clone()),
        format: Some(format),
        image_opts,
        // check -r never discards guest data: no request reaches the file as a discard.
        discard_unmap: false,
        read_only: a.repair.is_none(),
        force_share: a.force_share,
        cache: a.cache,
        // The repair may write to an image marked corrupt (x-check).
        options: Some("x-check=on".into()),
        node_name: "check".into(),
        ..OpenSpec::default()
    };
    let result = tool.block_on(async {
        let node = spec.add_to(&tool.engine).await.map_err(Err)?;
        if let Some(w) = host
            .as_deref()
            .and_then(crate::cli::img::stale_bitmaps_warning)
        {
            eprint!("{w}");
        }
        check_node(&node, a.repair).await.map_err(Ok)
    });
    match result {
        Ok(r) => Ok(r),
        Err(Err(e)) => fail(e.could_not_open(&a.file)),
        Err(Ok(e)) => fail(e.context("Check failed")),
    }
}

/// qemu-img's human summary.
fn print_human(r: &CheckReport) {
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        println!("No errors were found on the image.");
    } else {
        if r.corruptions != 0 {
            println!(
                "\n{} errors were found on the image.\n\
                 Data may be corrupted, or further writes to the image may corrupt it.",
                r.corruptions
            );
        }
        if r.leaks != 0 {
            println!(
                "\n{} leaked clusters were found on the image.\n\
                 This means waste of disk space, but no harm to data.",
                r.leaks
            );
        }
        if r.check_errors != 0 {
            println!(
                "\n{} internal errors have occurred during the check.",
                r.check_errors
            );
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let alloc = r.allocated_clusters as f64;
        println!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            r.allocated_clusters,
            r.total_clusters,
            alloc * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / alloc,
            r.compressed_clusters as f64 * 100.0 / alloc
        );
    }
    if r.image_end_offset != 0 {
        println!("Image end offset: {}", r.image_end_offset);
    }
}

/// The JSON report with qemu-img's four-space indentation (the object is flat).
fn print_json(r: &CheckReport) {
    let text = serde_json::to_string_pretty(&r.to_json()).unwrap_or_default();
    for line in text.lines() {
        match line.strip_prefix("  ") {
            Some(member) => println!("    {member}"),
            None => println!("{line}"),
        }
    }
}

/// Entry point of `blk check ARGS...` (ARGS without "blk check"); returns the exit status.
pub fn run_check(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // The engine session, with the --object/--image-opts that split_or_fail kept for it.
    let tool = Tool::new();
    let image_opts = tool.image_opts.get();
    let result = open_and_check(&tool, &a, image_opts);
    let _ = tool.finish();
    let mut report = match result {
        Ok(r) => r,
        Err(code) => return code,
    };
    report.filename = a.file.clone();
    for m in &report.messages {
        eprintln!("{m}");
    }
    if let Some(errno) = report.failed {
        crate::cli::prog::error(format_args!("Check failed: {}", errno.description()));
        return 1;
    }
    if !a.quiet {
        if (report.leaks_fixed != 0 || report.corruptions_fixed != 0) && !a.json {
            println!(
                "The following inconsistencies were found and repaired:\n\n    \
                 {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                report.leaks_fixed, report.corruptions_fixed
            );
        }
        if a.json {
            print_json(&report);
        } else {
            print_human(&report);
        }
    }
    if report.check_errors != 0 {
        crate::cli::prog::error(format_args!("Check failed"));
        1
    } else if report.corruptions != 0 {
        2
    } else if report.leaks != 0 {
        3
    } else {
        0
    }
}
