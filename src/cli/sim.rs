//! `blk sim run PATH... [--seed N | --seeds A..B] [--check-determinism]` and
//! `blk sim replay FILE [--seed N] [--trace]`: replay scenario files on the simulator; `blk sim
//! swarm` and `blk sim shrink` live in `swarm.rs`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use engine::{Error, Result};
use sim::scenario::{self, RunOptions, RunOutcome, Scenario};

use super::prog;

const USAGE: &str = "usage: blk sim run PATH... [--seed N | --seeds A..B] [--check-determinism]\n\
                     \x20      blk sim replay FILE [--seed N] [--trace] [--plant NAME]";

/// Entry point of `blk sim`.
pub fn run_sim(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("run") => run_cmd(&args[1..]),
        Some("replay") => replay_cmd(&args[1..]),
        Some("swarm") => super::swarm::swarm_cmd(&args[1..]),
        Some("shrink") => super::swarm::shrink_cmd(&args[1..]),
        Some("crashes") => super::swarm::crashes_cmd(&args[1..]),
        Some("coverage") => super::swarm::coverage_cmd(&args[1..]),
        _ => {
            eprintln!("{USAGE}\n{}", super::swarm::USAGE);
            2
        }
    }
}

struct RunArgs {
    paths: Vec<String>,
    seeds: Option<Vec<u64>>,
    check_determinism: bool,
    trace: bool,
}

fn parse_seeds(v: &str) -> Result<Vec<u64>> {
    let (a, b) = super::swarm::parse_range(v)?;
    Ok((a..b).collect())
}

fn parse_args(args: &[String]) -> Result<RunArgs> {
    let mut out = RunArgs {
        paths: Vec::new(),
        seeds: None,
        check_determinism: false,
        trace: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::generic("--seed needs a number"))?;
                out.seeds = Some(vec![
                    v.parse()
                        .map_err(|_| Error::generic(format!("bad seed '{v}'")))?,
                ]);
            }
            "--seeds" => {
                out.seeds = Some(parse_seeds(
                    it.next()
                        .ok_or_else(|| Error::generic("--seeds needs A..B"))?,
                )?)
            }
            "--check-determinism" => out.check_determinism = true,
            "--trace" => out.trace = true,
            "--plant" => {
                let name = it
                    .next()
                    .ok_or_else(|| Error::generic("--plant needs a name"))?;
                if !engine::util::planted::enable_named(name) {
                    return Err(Error::generic(format!("unknown planted bug '{name}'")));
                }
            }
            s if s.starts_with('-') => return Err(Error::generic(format!("unknown option '{s}'"))),
            p => out.paths.push(p.to_string()),
        }
    }
    if out.paths.is_empty() {
        return Err(Error::generic("no scenario file or directory given"));
    }
    Ok(out)
}

fn collect(paths: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::generic(format!("{p}: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "scn"))
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            return Err(Error::generic(format!("{p}: no such file or directory")));
        }
    }
    Ok(files)
}

fn load(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::generic(format!("{}: {e}", path.display())))?;
    scenario::parse(&path.display().to_string(), &text).map_err(|e| Error::generic(e.to_string()))
}

fn reproduce(path: &Path, seed: u64) -> String {
    format!("blk sim replay {} --seed {seed} --trace", path.display())
}

struct Row {
    name: String,
    runs: usize,
    passed: usize,
    expected_failure: Option<String>,
    virtual_ns: u64,
    hash: u64,
}

/// The progress line on a terminal: which run of how many.
struct Progress {
    on: bool,
    done: usize,
    total: usize,
}

fn run_cmd(args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            prog::command_error("sim run", format_args!("{e}\n{USAGE}"));
            return 2;
        }
    };
    let files = match collect(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            prog::command_error("sim run", e);
            return 2;
        }
    };
    let mut failures = Vec::new();
    let mut progress = Progress {
        on: std::io::stderr().is_terminal(),
        done: 0,
        total: files.len() * args.seeds.as_ref().map_or(1, Vec::len),
    };
    let rows: Vec<Row> = files
        .iter()
        .map(|path| run_file(&args, path, &mut progress, &mut failures))
        .collect();
    if progress.on {
        eprint!("\r\x1b[K");
    }
    report(&rows, &failures);
    i32::from(!failures.is_empty())
}

/// Run one scenario file under each seed; its row of the table.
fn run_file(
    args: &RunArgs,
    path: &Path,
    progress: &mut Progress,
    failures: &mut Vec<String>,
) -> Row {
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let mut row = Row {
        name: name.clone(),
        runs: 0,
        passed: 0,
        expected_failure: None,
        virtual_ns: 0,
        hash: 0,
    };
    let sc = match load(path) {
        Ok(sc) => sc,
        Err(e) => {
            failures.push(e.to_string());
            return row;
        }
    };
    row.expected_failure = sc.expect_failure.clone();
    let seeds = args.seeds.clone().unwrap_or_else(|| vec![sc.seed]);
    for seed in seeds {
        progress.done += 1;
        if progress.on {
            eprint!(
                "\r\x1b[K[{}/{}] {name} seed {seed}",
                progress.done, progress.total
            );
            let _ = std::io::stderr().flush();
        }
        if run_seed(args, path, &sc, seed, &mut row, failures) {
            row.passed += 1;
        }
    }
    row
}

/// One run (twice with --check-determinism); whether it passed.
fn run_seed(
    args: &RunArgs,
    path: &Path,
    sc: &Scenario,
    seed: u64,
    row: &mut Row,
    failures: &mut Vec<String>,
) -> bool {
    let opts = RunOptions {
        trace: args.trace,
        ..Default::default()
    };
    let out = scenario::run(sc, seed, opts.clone());
    row.runs += 1;
    if row.runs == 1 {
        row.virtual_ns = out.virtual_ns;
        row.hash = out.trace_hash;
    }
    let ok = out.passed(sc.expect_failure.as_deref());
    if !ok {
        failures.push(describe_failure(path, sc, &out));
    }
    if ok && args.check_determinism {
        let again = scenario::run(sc, seed, opts);
        if again.trace_hash != out.trace_hash || again.transcript != out.transcript {
            failures.push(format!(
                "{} seed {seed}: two runs differ (hash {:016x} vs {:016x})\n  reproduce: {}",
                row.name,
                out.trace_hash,
                again.trace_hash,
                reproduce(path, seed)
            ));
            return false;
        }
    }
    ok
}

/// The table, the failures, the totals.
fn report(rows: &[Row], failures: &[String]) {
    print_table(rows);
    for f in failures {
        println!("\nFAILED {f}");
    }
    let runs: usize = rows.iter().map(|r| r.runs).sum();
    let passed: usize = rows.iter().map(|r| r.passed).sum();
    println!(
        "\n{passed} passed, {} failed",
        runs - passed + rows.iter().filter(|r| r.runs == 0).count()
    );
}

fn describe_failure(path: &Path, sc: &Scenario, out: &RunOutcome) -> String {
    let what = match (&out.failure, &sc.expect_failure) {
        (Some(f), None) => format!("{} failed at line {}: {}", f.check, f.line, f.message),
        (None, Some(c)) => format!("was declared to fail its '{c}' check but passed"),
        (Some(f), Some(c)) => format!(
            "was declared to fail its '{c}' check but failed '{}' at line {}: {}",
            f.check, f.line, f.message
        ),
        (None, None) => "passed".into(),
    };
    format!(
        "{} (seed {}): {what}\n  reproduce: {}",
        path.display(),
        out.seed,
        reproduce(path, out.seed)
    )
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<40} {:>5} {:>6} {:>16} {:>12} {:>16}",
        "scenario", "runs", "passed", "must fail", "virtual s", "trace hash"
    );
    for r in rows {
        println!(
            "{:<40} {:>5} {:>6} {:>16} {:>12.6} {:>16}",
            r.name,
            r.runs,
            r.passed,
            r.expected_failure.as_deref().unwrap_or("-"),
            r.virtual_ns as f64 / 1e9,
            if r.runs > 0 {
                format!("{:016x}", r.hash)
            } else {
                "parse error".into()
            }
        );
    }
}

fn replay_cmd(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--seeds") {
        prog::command_error(
            "sim replay",
            format_args!(
                "--seeds runs a range, which 'blk sim run' does; replay takes one --seed N\n{USAGE}"
            ),
        );
        return 2;
    }
    let args = match parse_args(args) {
        Ok(a) if a.paths.len() == 1 => a,
        Ok(_) => {
            prog::command_error(
                "sim replay",
                format_args!("give exactly one scenario file\n{USAGE}"),
            );
            return 2;
        }
        Err(e) => {
            prog::command_error("sim replay", format_args!("{e}\n{USAGE}"));
            return 2;
        }
    };
    let path = PathBuf::from(&args.paths[0]);
    let sc = match load(&path) {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let seed = args
        .seeds
        .as_ref()
        .and_then(|s| s.first().copied())
        .unwrap_or(sc.seed);
    let out = scenario::run(
        &sc,
        seed,
        RunOptions {
            trace: args.trace,
            ..Default::default()
        },
    );
    print!("{}", out.transcript);
    println!("trace hash {:016x}", out.trace_hash);
    if out.passed(sc.expect_failure.as_deref()) {
        0
    } else {
        eprintln!("{}", describe_failure(&path, &sc, &out));
        1
    }
}
