//! `blk check`: qemu-img check on the blk engine.
//!
//! `blk check [-f qcow2] [--output=human|json] [-r leaks|all] [-q] FILE` opens FILE (read-only,
//! or read-write to repair), runs the qcow2 consistency check and prints qemu-img's report:
//! the diagnostics on stderr, then the human summary or the JSON `ImageCheck` on stdout.
//! When a repair fixed something, qemu-img's "repaired" note is printed and the numbers are
//! those of a second check of the fixed image. Exit status is qemu-img's: 0 clean, 1 check not
//! completed (or internal errors), 2 corruptions left, 3 leaks left, 63 format without checks.
//!
//! Only qcow2 can be checked; without `-f` the format is probed from the qcow2 magic.

use std::io::Read;
use std::rc::Rc;

use engine::Engine;
use engine::drivers::qcow2::{CheckReport, Repair, check_node};
use engine::env::real::RealEnv;
use engine::filename::{image_options, probe_target};
use engine::qemu_io::OpenSpec;

const USAGE: &str = "\
Usage: blk check [-f FMT] [--output=human|json] [-r leaks|all] [-q] FILE
Check a disk image for consistency (qemu-img check) with the blk engine.

  -f FMT             image format (only qcow2 supports checks; probed when omitted)
  --output=FMT       human (default) or json
  -r leaks|all       repair leaked clusters only, or all errors
  -q                 quiet: print no report on stdout
  -h, --help         display this help and exit";

struct Args {
    format: Option<String>,
    json: bool,
    repair: Option<Repair>,
    quiet: bool,
    file: String,
    /// `--image-opts`: `file` is an option string.
    image_opts: bool,
    /// `--object` arguments.
    objects: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, i32> {
    let (mut format, mut json, mut repair, mut quiet, mut file) = (None, false, None, false, None);
    let (mut image_opts, mut objects) = (false, Vec::new());
    let mut i = 0;
    let bad = |msg: String| Err(crate::cli::prog::usage_error("check", msg));
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        let mut value = |name: &str| -> Result<String, i32> {
            if let Some(v) = a.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
                return Ok(v.to_string());
            }
            if a.len() > 2 && a.starts_with(name) && !name.starts_with("--") {
                return Ok(a[name.len()..].to_string());
            }
            let v = args.get(i).cloned();
            i += 1;
            v.ok_or_else(|| {
                crate::cli::prog::error(format_args!("option '{name}' requires an argument"));
                1
            })
        };
        match a {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Err(0);
            }
            "-q" | "--quiet" => quiet = true,
            "--image-opts" => image_opts = true,
            _ if a.starts_with("--object") => objects.push(value("--object")?),
            _ if a.starts_with("-f") || a.starts_with("--format") => {
                format = Some(value(if a.starts_with("-f") {
                    "-f"
                } else {
                    "--format"
                })?)
            }
            _ if a.starts_with("--output") => match value("--output")?.as_str() {
                "human" => json = false,
                "json" => json = true,
                o => {
                    return bad(format!(
                        "--output must be used with human or json as argument. ({o})"
                    ));
                }
            },
            _ if a.starts_with("-r") || a.starts_with("--repair") => {
                match value(if a.starts_with("-r") {
                    "-r"
                } else {
                    "--repair"
                })?
                .as_str()
                {
                    "leaks" => repair = Some(Repair::Leaks),
                    "all" => repair = Some(Repair::All),
                    o => {
                        return bad(format!(
                            "Unknown option value for -r (expecting 'leaks' or 'all'): {o}"
                        ));
                    }
                }
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return bad(format!("unrecognized option '{a}'"));
            }
            _ => {
                if file.is_some() {
                    return bad(format!("Invalid parameter '{a}'"));
                }
                file = Some(a.to_string());
            }
        }
    }
    let Some(file) = file else {
        return bad("Expecting one image file name".into());
    };
    if image_opts && format.is_some() {
        crate::cli::prog::error(format_args!(
            "--image-opts and --format are mutually exclusive"
        ));
        return Err(1);
    }
    Ok(Args {
        format,
        json,
        repair,
        quiet,
        file,
        image_opts,
        objects,
    })
}

/// True when `file` starts with the qcow2 magic.
fn is_qcow2(file: &str) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| magic == *b"QFI\xfb")
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
    let named = match image_options(&a.file, a.format.as_deref(), a.image_opts) {
        Ok(n) => n,
        Err(e) => {
            crate::cli::prog::error(format_args!("Could not open '{}': {e}", a.file));
            return 1;
        }
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
        crate::cli::prog::error(format_args!(
            "Could not open '{}': Could not open '{h}': No such file or directory",
            a.file
        ));
        return 1;
    }
    if format != "qcow2" {
        crate::cli::prog::error(format_args!("This image format does not support checks"));
        return 63;
    }
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    if let Err(e) = env.block_on(crate::cli::img::add_objects(&engine, &a.objects)) {
        crate::cli::prog::error(format_args!("{e}"));
        let _ = env.block_on(engine.shutdown());
        return 1;
    }
    let spec = OpenSpec {
        filename: Some(a.file.clone()),
        format: Some(format),
        image_opts: a.image_opts,
        // check -r never discards guest data: no request reaches the file as a discard.
        discard_unmap: false,
        read_only: a.repair.is_none(),
        // The repair may write to an image marked corrupt (x-check).
        options: Some("x-check=on".into()),
        node_name: "check".into(),
        ..OpenSpec::default()
    };
    let result = env.block_on(async {
        let node = spec.add_to(&engine).await.map_err(Err)?;
        check_node(&node, a.repair).await.map_err(Ok)
    });
    let _ = env.block_on(engine.shutdown());
    let mut report = match result {
        Ok(r) => r,
        Err(Err(e)) => {
            crate::cli::prog::error(format_args!("Could not open '{}': {e}", a.file));
            return 1;
        }
        Err(Ok(e)) => {
            crate::cli::prog::error(format_args!("Check failed: {e}"));
            return 1;
        }
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
