//! Runs the compat cases of `tests/compat/*.txt`: parsing, the two runs of a case (QEMU's tools,
//! then blk behind symlinks named after them), output normalisation and the comparison of the
//! files each run leaves behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::BLK;

/// One line of a case.
#[derive(Debug, Clone)]
pub enum Line {
    /// `> cmd`: run with QEMU's tools in both directories, not compared.
    Setup(String),
    /// `$ cmd`: compared between the two runs.
    Compared(String),
}

/// One case: a name, its lines and its options.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// Where it is written (file:line), for messages.
    pub at: String,
    pub lines: Vec<Line>,
    /// `! bytes`: every file must be byte-identical.
    pub bytes: bool,
    /// `! known-diff WHY`: blk differs here on purpose or for now; the case must still differ.
    pub known_diff: Option<String>,
}

impl Case {
    /// The tool the case is about: the program of its first compared line.
    pub fn tool(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Compared(c) => c.split_whitespace().next(),
            Line::Setup(_) => None,
        })
    }
}

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

/// Every case of every `tests/compat/*.txt`, in file-name order.
pub fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(compat_dir())
        .expect("tests/compat exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        cases.extend(parse(&name, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    cases
}

/// Parse one case file.
pub fn parse(file: &str, text: &str) -> Result<Vec<Case>, String> {
    let mut cases: Vec<Case> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        let line = raw.trim_end();
        if let Some(name) = line.strip_prefix("## ") {
            if cases.iter().any(|c| c.name == name.trim()) {
                return Err(format!("{at}: duplicate case name '{}'", name.trim()));
            }
            cases.push(Case {
                name: name.trim().to_string(),
                at,
                lines: Vec::new(),
                bytes: false,
                known_diff: None,
            });
            continue;
        }
        if line.is_empty() || line.starts_with("# ") || line == "#" {
            continue;
        }
        let case = cases
            .last_mut()
            .ok_or_else(|| format!("{at}: a line before the first '## name'"))?;
        if let Some(cmd) = line.strip_prefix("> ") {
            case.lines.push(Line::Setup(cmd.to_string()));
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            case.lines.push(Line::Compared(cmd.to_string()));
        } else if line == "! bytes" {
            case.bytes = true;
        } else if let Some(why) = line.strip_prefix("! known-diff ") {
            case.known_diff = Some(why.to_string());
        } else {
            return Err(format!("{at}: not a case line: '{line}'"));
        }
    }
    for c in &cases {
        if !c.lines.iter().any(|l| matches!(l, Line::Compared(_))) {
            return Err(format!("{}: case '{}' compares nothing", c.at, c.name));
        }
    }
    Ok(cases)
}

/// What one compared command did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A directory with symlinks `qemu-img` and `qemu-io` to blk, put first on PATH for blk's run.
fn blk_bin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("compat-bin-{}", std::process::id()));
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["qemu-img", "qemu-io"] {
            std::os::unix::fs::symlink(BLK, dir.join(name)).unwrap();
        }
    }
    dir
}

fn fresh_dir(case: usize, side: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("compat-{}", std::process::id()))
        .join(format!("{case}-{side}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh(dir: &Path, cmd: &str, path_prefix: Option<&Path>) -> Outcome {
    let mut c = Command::new("timeout");
    c.args(["120", "sh", "-c", cmd]).current_dir(dir);
    c.env("LC_ALL", "C");
    if let Some(p) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", p.display()));
    }
    let o = c.output().unwrap();
    Outcome {
        code: o.status.code().unwrap_or(-1),
        stdout: normalise(&String::from_utf8_lossy(&o.stdout), dir),
        stderr: normalise(&String::from_utf8_lossy(&o.stderr), dir),
    }
}

/// Paths of the case directory become `$DIR`; qemu-io's timing figures become `<timing>`.
fn normalise(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "$DIR");
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.find(" ops; ") {
            Some(i) if line.contains("/sec") => {
                out.push_str(&line[..i + 6]);
                out.push_str("<timing>");
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// Run both sides of a case; `Ok(())` when they agree, else what differs.
pub fn run_case_at(idx: usize, case: &Case) -> Result<(), String> {
    let (q, b) = (fresh_dir(idx, "qemu"), fresh_dir(idx, "blk"));
    let bin = blk_bin_dir();
    let mut diffs = String::new();
    for line in &case.lines {
        match line {
            Line::Setup(cmd) => {
                for d in [&q, &b] {
                    let o = sh(d, cmd, None);
                    if o.code != 0 {
                        return Err(format!("setup '{cmd}' failed: {}{}", o.stdout, o.stderr));
                    }
                }
            }
            Line::Compared(cmd) => {
                let (oq, ob) = (sh(&q, cmd, None), sh(&b, cmd, Some(&bin)));
                if oq != ob {
                    describe(&mut diffs, cmd, &oq, &ob);
                }
            }
        }
    }
    compare_dirs(&q, &b, case.bytes, &mut diffs);
    let _ = std::fs::remove_dir_all(&q);
    let _ = std::fs::remove_dir_all(&b);
    if diffs.is_empty() { Ok(()) } else { Err(diffs) }
}

fn describe(out: &mut String, cmd: &str, q: &Outcome, b: &Outcome) {
    let _ = writeln!(out, "  $ {cmd}");
    if q.code != b.code {
        let _ = writeln!(out, "    exit: qemu {} / blk {}", q.code, b.code);
    }
    for (what, a, c) in [
        ("stdout", &q.stdout, &b.stdout),
        ("stderr", &q.stderr, &b.stderr),
    ] {
        if a != c {
            let _ = writeln!(out, "    {what} qemu: {a:?}\n    {what} blk:  {c:?}");
        }
    }
}

/// Counts and failures over all cases.
#[derive(Default)]
pub struct Report {
    passed: usize,
    known: usize,
    failures: Vec<String>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Run one case (numbered in call order).
pub fn run_case(case: &Case) -> Result<(), String> {
    let idx = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    run_case_at(idx, case)
}

impl Report {
    /// Account for a case's result, honouring `! known-diff`.
    pub fn add(&mut self, case: &Case, result: Result<(), String>) {
        match (result, &case.known_diff) {
            (Ok(()), None) => self.passed += 1,
            (Err(_), Some(_)) => self.known += 1,
            (Ok(()), Some(why)) => self.failures.push(format!(
                "{} '{}': marked known-diff ({why}) but blk now matches QEMU: remove the marker",
                case.at, case.name
            )),
            (Err(d), None) => self
                .failures
                .push(format!("{} '{}':\n{d}", case.at, case.name)),
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "compat: {} passed, {} failed, {} known differences",
            self.passed,
            self.failures.len(),
            self.known
        )
    }

    pub fn failures(&self) -> String {
        self.failures.join("\n")
    }
}

/// Files left in the two directories: the same names; raw files with the same bytes; qcow2 (or
/// any non-raw) images with the same format, `check` verdict, `map` and guest data. `bytes`
/// demands identical bytes for every file.
fn compare_dirs(q: &Path, b: &Path, bytes: bool, diffs: &mut String) {
    let (nq, nb) = (file_names(q), file_names(b));
    if nq != nb {
        let _ = writeln!(diffs, "  files: qemu {nq:?} / blk {nb:?}");
        return;
    }
    for name in &nq {
        let (fq, fb) = (q.join(name), b.join(name));
        let (bq, bb) = (std::fs::read(&fq).unwrap(), std::fs::read(&fb).unwrap());
        if bq == bb {
            continue;
        }
        let fmt = image_format(q, name);
        if bytes || fmt.as_deref() == Some("raw") || fmt.is_none() {
            let at = bq
                .iter()
                .zip(&bb)
                .position(|(x, y)| x != y)
                .unwrap_or(bq.len().min(bb.len()));
            let _ = writeln!(
                diffs,
                "  file {name}: bytes differ (qemu {} bytes / blk {} bytes, first difference at {at})",
                bq.len(),
                bb.len()
            );
            continue;
        }
        if image_format(b, name) != fmt {
            let _ = writeln!(
                diffs,
                "  file {name}: blk's is not {}",
                fmt.unwrap_or_default()
            );
            continue;
        }
        // check: the verdict (exit code) must agree; its statistics (end offset, fragmentation)
        // may differ with metadata placement. map: guest offsets, allocation and zero flags
        // must agree exactly.
        let args = ["check", "-U", name.as_str()];
        let (cq, cb) = (qemu_img(q, &args), qemu_img(b, &args));
        if cq.code != cb.code {
            let _ = writeln!(diffs, "  file {name}: qemu-img check verdicts differ");
            describe(diffs, &args.join(" "), &cq, &cb);
        }
        let args = ["map", "-U", "--output=json", name.as_str()];
        let (mq, mb) = (map_without_offsets(q, &args), map_without_offsets(b, &args));
        if mq != mb {
            let _ = writeln!(diffs, "  file {name}: qemu-img map differs");
            describe(diffs, &args.join(" "), &mq, &mb);
        }
        let cmp = qemu_img(
            q,
            &[
                "compare",
                "-U",
                &fq.display().to_string(),
                &fb.display().to_string(),
            ],
        );
        if cmp.code != 0 {
            let _ = writeln!(
                diffs,
                "  file {name}: qemu-img compare: {}{}",
                cmp.stdout, cmp.stderr
            );
        }
    }
}

fn file_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// QEMU's probed format of a file (`None` when qemu-img cannot open it).
fn image_format(dir: &Path, name: &str) -> Option<String> {
    let o = qemu_img(dir, &["info", "-U", "--output=json", name]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
    v.get("format")?.as_str().map(str::to_string)
}

/// The real qemu-img, in `dir`.
fn qemu_img(dir: &Path, args: &[&str]) -> Outcome {
    let o = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    Outcome {
        code: o.status.code().unwrap_or(-1),
        stdout: normalise(&String::from_utf8_lossy(&o.stdout), dir),
        stderr: normalise(&String::from_utf8_lossy(&o.stderr), dir),
    }
}

/// `qemu-img map --output=json` with the host offsets left out: where a cluster lands in the
/// file is the allocator's business; which guest ranges are data, zero or unallocated is not.
fn map_without_offsets(dir: &Path, args: &[&str]) -> Outcome {
    let mut o = qemu_img(dir, args);
    if let Ok(serde_json::Value::Array(mut v)) = serde_json::from_str(&o.stdout) {
        for e in &mut v {
            if let Some(m) = e.as_object_mut() {
                m.remove("offset");
            }
        }
        o.stdout = serde_json::to_string_pretty(&v).unwrap();
    }
    o
}
