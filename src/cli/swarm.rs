//! `blk sim swarm --seeds A..B [--shard I/N] [--jobs N] [--time 60s] [--out DIR] [--coverage]
//! [--plant NAME]` and `blk sim shrink FILE.scn [--check NAME] [--out FILE] [--plant NAME]`:
//! the simulator drawing its own scenarios from seeds, and delta debugging a failing one; and
//! `blk sim crashes FILE.scn`: a power loss at every flush and (sampled) operation of a run.
//!
//! `--jobs N` runs N child processes of this binary, each with its own `--shard`, and passes
//! their JSON lines through; a shard of a shard composes (seed % (N*J) picks the child).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine::{Error, Result};
use sim::swarm::{self, SeedResult, coverage::Coverage, shrink};

use super::prog;

pub const USAGE: &str = "       blk sim swarm --seeds A..B [--shard I/N] [--jobs N] [--time 60s] [--out DIR] [--coverage] [--qemu-check] [--plant NAME]\n\
                         \x20      blk sim coverage FILE.json... [--out FILE]\n\
                         \x20      blk sim shrink FILE.scn [--check NAME] [--out FILE] [--plant NAME]\n\
                         \x20      blk sim crashes FILE.scn [--max N] [--sample K] [--seed N] [--at POINT] [--plant NAME]";

struct SwarmArgs {
    seeds: (u64, u64),
    shard: (u64, u64),
    jobs: u64,
    time: Option<Duration>,
    out: PathBuf,
    coverage: bool,
    plants: Vec<String>,
    qemu_check: bool,
}

/// A seed range `A..B` (B excluded).
pub(super) fn parse_range(v: &str) -> Result<(u64, u64)> {
    let (a, b) = v
        .split_once("..")
        .ok_or_else(|| Error::generic(format!("bad seed range '{v}' (A..B)")))?;
    let a: u64 = a
        .parse()
        .map_err(|_| Error::generic(format!("bad seed '{a}'")))?;
    let b: u64 = b
        .parse()
        .map_err(|_| Error::generic(format!("bad seed '{b}'")))?;
    if a >= b {
        return Err(Error::generic(format!("empty seed range '{v}'")));
    }
    Ok((a, b))
}

fn parse_duration(v: &str) -> Result<Duration> {
    let bad = || Error::generic(format!("bad duration '{v}' (e.g. 90s, 10m, 2h)"));
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

fn enable_plants(plants: &[String]) -> Result<()> {
    for p in plants {
        if !engine::util::planted::enable_named(p) {
            return Err(Error::generic(format!(
                "unknown planted bug '{p}' (known: {})",
                engine::util::planted::NAMES.join(", ")
            )));
        }
    }
    Ok(())
}

fn parse_swarm(args: &[String]) -> Result<SwarmArgs> {
    let mut a = SwarmArgs {
        seeds: (0, 0),
        shard: (0, 1),
        jobs: 1,
        time: None,
        out: PathBuf::from("swarm-out"),
        coverage: false,
        plants: Vec::new(),
        qemu_check: false,
    };
    let mut it = args.iter();
    let mut have_seeds = false;
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| Error::generic(format!("{k} needs a value")))
        };
        match k.as_str() {
            "--seeds" => {
                a.seeds = parse_range(val()?)?;
                have_seeds = true;
            }
            "--shard" => {
                let v = val()?;
                let (i, n) = v
                    .split_once('/')
                    .ok_or_else(|| Error::generic(format!("bad shard '{v}' (I/N)")))?;
                let (i, n) = (i.parse::<u64>(), n.parse::<u64>());
                match (i, n) {
                    (Ok(i), Ok(n)) if i < n => a.shard = (i, n),
                    _ => return Err(Error::generic(format!("bad shard '{v}' (I/N with I < N)"))),
                }
            }
            "--jobs" => {
                let v = val()?;
                a.jobs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Error::generic(format!("bad --jobs '{v}'")))?
            }
            "--time" => a.time = Some(parse_duration(val()?)?),
            "--out" => a.out = PathBuf::from(val()?),
            "--plant" => a.plants.push(val()?.clone()),
            "--coverage" => a.coverage = true,
            "--qemu-check" => a.qemu_check = true,
            other => return Err(Error::generic(format!("unknown option '{other}'"))),
        }
    }
    if !have_seeds {
        return Err(Error::generic("--seeds A..B is required"));
    }
    Ok(a)
}

/// Entry point of `blk sim swarm`.
pub fn swarm_cmd(args: &[String]) -> i32 {
    let a = match parse_swarm(args).and_then(|a| enable_plants(&a.plants).map(|_| a)) {
        Ok(a) => a,
        Err(e) => {
            prog::command_error("sim swarm", format_args!("{e}\nusage:{USAGE}"));
            return 2;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        prog::command_error("sim swarm", format_args!("{}: {e}", a.out.display()));
        return 2;
    }
    if a.jobs > 1 {
        return spawn_jobs(&a, args);
    }
    let start = Instant::now();
    let (mut runs, mut failed) = (0u64, 0u64);
    let mut cov = Coverage::default();
    for seed in (a.seeds.0..a.seeds.1).filter(|s| s % a.shard.1 == a.shard.0) {
        if a.time.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        let t0 = Instant::now();
        let (generated, verdict) = if a.qemu_check {
            run_seed_qemu_checked(seed, &a)
        } else {
            swarm::run_seed(seed, a.coverage)
        };
        let res = SeedResult::new(seed, &generated, &verdict);
        println!("{}", res.to_json(t0.elapsed().as_millis() as u64));
        runs += 1;
        if a.coverage
            && let Some(o) = &verdict.outcome
        {
            cov.add(&generated.text, &o.transcript);
        }
        if let Some(check) = &res.check {
            failed += 1;
            report_finding(&a.out, seed, check, &res, &generated.text, &a.plants);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "swarm: {runs} seeds, {failed} failed, {:.1} s, {:.1} seeds/s (shard {}/{})",
        secs,
        runs as f64 / secs.max(1e-9),
        a.shard.0,
        a.shard.1
    );
    if a.coverage {
        let path = a
            .out
            .join(format!("coverage-{}-{}.json", a.shard.0, a.shard.1));
        let _ = std::fs::write(&path, cov.to_json().to_string());
        // A job of `--jobs N` leaves the table to its parent, which merges every job's.
        if std::env::var_os(CHILD_ENV).is_none() {
            eprint!("{}", cov.table());
            eprintln!("coverage JSON: {}", path.display());
        }
    }
    i32::from(failed > 0)
}

/// Set in the environment of the jobs `--jobs N` starts.
const CHILD_ENV: &str = "BLK_SWARM_JOB";

/// Sum coverage files into one table, and into `out` when given.
fn merge_coverage(files: &[PathBuf], out: Option<&Path>) -> Result<Coverage, String> {
    let mut total = Coverage::default();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        total.merge(&Coverage::from_json(&v).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    if let Some(out) = out {
        std::fs::write(out, total.to_json().to_string())
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(total)
}

/// Entry point of `blk sim coverage FILE.json... [--out FILE]`: the shards of a batch (each
/// `OUT/coverage-I-N.json`, from any number of machines) summed into one table and file.
pub fn coverage_cmd(args: &[String]) -> i32 {
    let mut files = Vec::new();
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => match it.next() {
                Some(v) => out = Some(PathBuf::from(v)),
                None => {
                    eprintln!("blk sim coverage: --out needs a value\nusage:{USAGE}");
                    return 2;
                }
            },
            f if f.starts_with("--") => {
                eprintln!("blk sim coverage: unknown option '{f}'\nusage:{USAGE}");
                return 2;
            }
            f => files.push(PathBuf::from(f)),
        }
    }
    if files.is_empty() {
        eprintln!("blk sim coverage: give coverage files\nusage:{USAGE}");
        return 2;
    }
    match merge_coverage(&files, out.as_deref()) {
        Ok(c) => {
            print!("{}", c.table());
            0
        }
        Err(e) => {
            eprintln!("blk sim coverage: {e}");
            2
        }
    }
}

fn plant_args(plants: &[String]) -> String {
    plants.iter().map(|p| format!(" --plant {p}")).collect()
}

/// Run `seed` with its images exported at the end, then judge every qcow2 image with `qemu-img
/// check` (exit 0, or 3 for leaks only, passes: blk's own end-of-run check allows leaks too).
/// The export is removed when the seed passes and kept beside the finding when it fails.
fn run_seed_qemu_checked(seed: u64, a: &SwarmArgs) -> (swarm::Generated, swarm::oracles::Verdict) {
    let dir = a.out.join(format!("seed-{seed}.images"));
    let opts = sim::scenario::RunOptions {
        trace: a.coverage,
        export_to: Some(dir.clone()),
        ..Default::default()
    };
    let (generated, mut verdict) = swarm::run_seed_with(seed, opts);
    if verdict.failure.is_none() {
        verdict.failure = qemu_img_check_all(&dir);
    }
    if verdict.failure.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (generated, verdict)
}

/// `qemu-img check` of every `*.qcow2` file in `dir` (run there, so that backing and data
/// file names resolve); the first rejection as a `qemu-check` failure.
fn qemu_img_check_all(dir: &Path) -> Option<sim::scenario::Failure> {
    let fail = |message: String| sim::scenario::Failure {
        check: "qemu-check".into(),
        line: 0,
        message,
    };
    let mut images: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".qcow2"))
            .collect(),
        Err(e) => return Some(fail(format!("{}: {e}", dir.display()))),
    };
    images.sort();
    for image in images {
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2", &image])
            .current_dir(dir)
            .output();
        match out {
            Err(e) => return Some(fail(format!("qemu-img is not runnable: {e}"))),
            Ok(o) if matches!(o.status.code(), Some(0 | 3)) => {}
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let first: Vec<&str> = text.lines().take(4).collect();
                return Some(fail(format!(
                    "qemu-img check {image} exited {:?}: {}",
                    o.status.code(),
                    first.join(" | ")
                )));
            }
        }
    }
    None
}

fn report_finding(
    out: &Path,
    seed: u64,
    check: &str,
    res: &SeedResult,
    text: &str,
    plants: &[String],
) {
    let path = out.join(format!("seed-{seed}.scn"));
    if let Err(e) = std::fs::write(&path, text) {
        prog::command_error("sim swarm", format_args!("{}: {e}", path.display()));
    }
    if check == "qemu-check" {
        eprintln!(
            "FAILED seed {seed}: {check}: {}\n  images:    {}\n  reproduce: blk sim swarm --seeds {seed}..{} --qemu-check --out {}{}",
            res.message,
            out.join(format!("seed-{seed}.images")).display(),
            seed + 1,
            out.display(),
            plant_args(plants),
        );
        return;
    }
    eprintln!(
        "FAILED seed {seed}: {check} at line {}: {}\n  reproduce: blk sim replay {} --trace{}\n  shrink:    blk sim shrink {} --check {check}{}",
        res.line,
        res.message,
        path.display(),
        plant_args(plants),
        path.display(),
        plant_args(plants),
    );
}

/// Run `jobs` children, each a shard of this shard, and pass their lines through.
fn spawn_jobs(a: &SwarmArgs, args: &[String]) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            prog::command_error("sim swarm", format_args!("cannot find own executable: {e}"));
            return 2;
        }
    };
    let base = child_args(args);
    let n = a.shard.1 * a.jobs;
    let mut children = Vec::new();
    for j in 0..a.jobs {
        let shard = format!("{}/{n}", a.shard.0 + a.shard.1 * j);
        let child = Command::new(&exe)
            .args(["sim", "swarm"])
            .args(&base)
            .args(["--shard", &shard])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                prog::command_error("sim swarm", format_args!("cannot start a job: {e}"));
                return 2;
            }
        }
    }
    let mut rc = relay_and_wait(children);
    if a.coverage {
        rc = rc.max(merge_shard_coverage(a, n));
    }
    rc
}

/// The child arguments: ours without --jobs and --shard.
fn child_args(args: &[String]) -> Vec<String> {
    let mut base = Vec::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--jobs" || k == "--shard" {
            it.next();
        } else {
            base.push(k.clone());
        }
    }
    base
}

/// Pass the children's output lines through whole, then wait for them; the worst status.
fn relay_and_wait(mut children: Vec<std::process::Child>) -> i32 {
    let mut readers = Vec::new();
    for c in &mut children {
        let out = c.stdout.take().expect("piped stdout");
        readers.push(std::thread::spawn(move || {
            let stdout = std::io::stdout();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut lock = stdout.lock();
                let _ = writeln!(lock, "{line}");
            }
        }));
    }
    for r in readers {
        let _ = r.join();
    }
    let mut rc = 0;
    for mut c in children {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => rc = rc.max(s.code().unwrap_or(2)),
            Err(_) => rc = 2,
        }
    }
    rc
}

/// Merge the children's coverage files (shards of `n`) into this shard's; 2 if that fails.
fn merge_shard_coverage(a: &SwarmArgs, n: u64) -> i32 {
    let files: Vec<PathBuf> = (0..a.jobs)
        .map(|j| {
            a.out
                .join(format!("coverage-{}-{n}.json", a.shard.0 + a.shard.1 * j))
        })
        .collect();
    let merged = a
        .out
        .join(format!("coverage-{}-{}.json", a.shard.0, a.shard.1));
    match merge_coverage(&files, Some(&merged)) {
        Ok(c) => {
            eprint!("{}", c.table());
            eprintln!("coverage JSON: {}", merged.display());
            0
        }
        Err(e) => {
            eprintln!("blk sim swarm: {e}");
            2
        }
    }
}

/// Entry point of `blk sim shrink`.
pub fn shrink_cmd(args: &[String]) -> i32 {
    let (mut file, mut check, mut out, mut plants) = (None, None, None, Vec::new());
    let mut it = args.iter();
    while let Some(k) = it.next() {
        match k.as_str() {
            "--check" => check = it.next().cloned(),
            "--out" => out = it.next().cloned(),
            "--plant" => plants.extend(it.next().cloned()),
            s if s.starts_with('-') => {
                prog::command_error(
                    "sim shrink",
                    format_args!("unknown option '{s}'\nusage:{USAGE}"),
                );
                return 2;
            }
            f => file = Some(f.to_string()),
        }
    }
    let Some(file) = file else {
        prog::command_error(
            "sim shrink",
            format_args!("give a scenario file\nusage:{USAGE}"),
        );
        return 2;
    };
    if let Err(e) = enable_plants(&plants) {
        prog::command_error("sim shrink", e);
        return 2;
    }
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            prog::command_error("sim shrink", format_args!("{file}: {e}"));
            return 2;
        }
    };
    let start = Instant::now();
    let Some(s) = shrink::shrink(&text, check.as_deref()) else {
        prog::command_error(
            "sim shrink",
            format_args!(
                "{file} does not fail{}",
                check
                    .map(|c| format!(" the '{c}' check"))
                    .unwrap_or_default()
            ),
        );
        return 1;
    };
    let out = out.unwrap_or_else(|| {
        let stem = file.strip_suffix(".scn").unwrap_or(&file);
        format!("{stem}.min.scn")
    });
    if let Err(e) = std::fs::write(&out, &s.text) {
        prog::command_error("sim shrink", format_args!("{out}: {e}"));
        return 2;
    }
    println!(
        "shrunk {file}: {} steps -> {} steps, still failing '{}' ({} runs, {:.1} s)\nwrote {out}\n  reproduce: blk sim replay {out} --trace{}",
        s.before,
        s.after,
        s.check,
        s.runs,
        start.elapsed().as_secs_f64(),
        plant_args(&plants),
    );
    0
}

/// Entry point of `blk sim crashes FILE.scn [--max N] [--sample K] [--seed N] [--at POINT]`.
pub fn crashes_cmd(args: &[String]) -> i32 {
    match crashes(args) {
        Ok(rc) => rc,
        Err(e) => {
            prog::command_error("sim crashes", format_args!("{e}\nusage:{USAGE}"));
            2
        }
    }
}

/// `blk sim crashes`'s command line.
struct CrashArgs {
    file: String,
    max: Option<usize>,
    sample: Option<u64>,
    seed: Option<u64>,
    at: Option<sim::CrashAt>,
    plants: Vec<String>,
}

fn crashes(args: &[String]) -> Result<i32> {
    let a = parse_crash_args(args)?;
    let file = &a.file;
    let text = std::fs::read_to_string(file).map_err(|e| Error::generic(format!("{file}: {e}")))?;
    let sc = sim::scenario::parse(file, &text).map_err(|e| Error::generic(e.to_string()))?;
    let seed = a.seed.unwrap_or(sc.seed);
    match a.at {
        Some(at) => Ok(crash_at(&a, &sc, seed, at)),
        None => enumerate_crashes(&a, &sc, seed),
    }
}

/// Parse the options (and enable the planted bugs they name).
fn parse_crash_args(args: &[String]) -> Result<CrashArgs> {
    use sim::swarm::crashes::parse_point;
    let (mut file, mut max, mut sample, mut seed, mut at, mut plants) =
        (None, None, None, None, None, Vec::new());
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error::generic(format!("{k} needs a value")))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| Error::generic(format!("bad number '{v}'")))
        };
        match k.as_str() {
            "--max" => max = Some(num(val()?)? as usize),
            "--sample" => sample = Some(num(val()?)?),
            "--seed" => seed = Some(num(val()?)?),
            "--at" => at = Some(parse_point(&val()?).map_err(Error::generic)?),
            "--plant" => plants.push(val()?),
            s if s.starts_with('-') => return Err(Error::generic(format!("unknown option '{s}'"))),
            f => file = Some(f.to_string()),
        }
    }
    enable_plants(&plants)?;
    let file = file.ok_or_else(|| Error::generic("give a scenario file"))?;
    Ok(CrashArgs {
        file,
        max,
        sample,
        seed,
        at,
        plants,
    })
}

/// `--at POINT`: one run crashed at that point, with its transcript.
fn crash_at(a: &CrashArgs, sc: &sim::scenario::Scenario, seed: u64, at: sim::CrashAt) -> i32 {
    let opts = sim::scenario::RunOptions {
        trace: true,
        crash_at: Some(at),
        ..Default::default()
    };
    let v = swarm::oracles::judge_parsed(sc, seed, opts);
    if let Some(o) = &v.outcome {
        print!("{}", o.transcript);
    }
    match &v.failure {
        None => 0,
        Some(f) => {
            eprintln!(
                "{} crashed at {}: {} failed: {}",
                a.file,
                sim::swarm::crashes::point_name(at),
                f.check,
                f.message
            );
            1
        }
    }
}

/// Crash the run at every point (or a sample of them) and report the first failing one.
fn enumerate_crashes(a: &CrashArgs, sc: &sim::scenario::Scenario, seed: u64) -> Result<i32> {
    use sim::swarm::crashes::{enumerate, point_name};
    let file = &a.file;
    let start = Instant::now();
    let sum = match enumerate(sc, seed, a.sample, a.max, |_, _| {}) {
        Ok(s) => s,
        Err(v) => {
            let f = v.failure.expect("a failing base run");
            return Err(Error::generic(format!(
                "{file} fails without a crash ({}: {})",
                f.check, f.message
            )));
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{file} seed {seed}: {} flushes, {} operations; {} crash states tested ({} not reached) in {secs:.1} s, {:.1} states/s",
        sum.counts.flushes,
        sum.counts.ops,
        sum.tested,
        sum.missed,
        sum.tested as f64 / secs.max(1e-9)
    );
    Ok(match sum.failing {
        None => 0,
        Some((at, v)) => {
            let f = v.failure.expect("failing point has a failure");
            println!(
                "FAILED at {}: {} at line {}: {}\n  reproduce: blk sim crashes {file} --seed {seed} --at {}{}",
                point_name(at),
                f.check,
                f.line,
                f.message,
                point_name(at),
                plant_args(&a.plants)
            );
            1
        }
    })
}
