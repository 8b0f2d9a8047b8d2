//! Whole-image operations on real files, in production mode:
//! - `blk convert` (raw → qcow2), `blk check` and `blk compare` (raw vs qcow2 of the same
//!   data), run as the user runs them: the blk binary, start-up included;
//! - the block jobs `block-stream`, `block-commit` and `blockdev-mirror` (sync=full), driven
//!   through QMP on an in-process engine and timed from the command until the job concluded
//!   and the images are closed (so the copy is on disk), on freshly made images each time.
//!
//! The data: three MiB of every four hold xorshift bytes, the fourth is a hole.
//! `cargo bench --bench img_ops` (BLK_BENCH_QUICK=1: 32 MiB images instead of 256 MiB).

use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use engine::Engine;
use engine::env::Env;
use engine::env::real::RealEnv;
use engine::job::JobStatus;
use serde_json::{Value, json};

const BLK: &str = env!("CARGO_BIN_EXE_blk");

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run blk with `args`; it must succeed (compare's status 0: the images are identical).
fn blk(args: &[&str]) {
    let out = Command::new(BLK).args(args).output().expect("run blk");
    assert!(out.status.success(), "blk {args:?}: {out:?}");
}

/// The raw data file and its qcow2 copy.
fn make_data(dir: &Scratch, size: u64) -> (String, String) {
    let mut data = vec![0u8; size as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (i * 8) % (4 << 20) < (3 << 20) {
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
    let raw = dir.path("data.raw");
    std::fs::write(&raw, &data).expect("write the raw data");
    let qcow2 = dir.path("data.qcow2");
    blk(&["convert", "-f", "raw", "-O", "qcow2", &raw, &qcow2]);
    (raw, qcow2)
}

/// Time `n` runs of blk with `args`, running `prep` (untimed) before each.
fn time_runs(n: u64, prep: impl Fn(), args: &[&str]) -> Duration {
    (0..n)
        .map(|_| {
            prep();
            let t = Instant::now();
            blk(args);
            t.elapsed()
        })
        .sum()
}

fn tools(c: &mut Criterion, dir: &Scratch, raw: &str, qcow2: &str, size: u64) {
    let mut group = c.benchmark_group("img");
    group.throughput(Throughput::Bytes(size));
    let out = dir.path("out.qcow2");
    group.bench_function("convert_raw_to_qcow2", |b| {
        b.iter_custom(|n| {
            let prep = || drop(std::fs::remove_file(&out));
            time_runs(n, prep, &["convert", "-f", "raw", "-O", "qcow2", raw, &out])
        })
    });
    group.bench_function("check_qcow2", |b| {
        b.iter_custom(|n| time_runs(n, || {}, &["check", "-q", qcow2]))
    });
    group.bench_function("compare_raw_qcow2", |b| {
        b.iter_custom(|n| {
            time_runs(
                n,
                || {},
                &["compare", "-f", "raw", "-F", "qcow2", raw, qcow2],
            )
        })
    });
    group.finish();
}

/// Which job, and how it is started on the chain base ← mid ← top (top opened as "top").
#[derive(Clone, Copy, Debug)]
enum Job {
    /// Stream the chain's data (mid's) into top.
    Stream,
    /// Commit mid into base (an intermediate commit, which completes by itself).
    Commit,
    /// Mirror the whole chain into a new image, then complete the job.
    Mirror,
}

/// A fresh chain: base and top are empty, mid holds the data (a copy of `qcow2` put over
/// base), so that every job copies all of it; plus an empty mirror target.
fn fresh_chain(dir: &Scratch, qcow2: &str, size: u64) {
    let size = size.to_string();
    for img in ["base.qcow2", "tgt.qcow2", "top.qcow2"] {
        let _ = std::fs::remove_file(dir.path(img));
    }
    blk(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &dir.path("base.qcow2"),
        &size,
    ]);
    blk(&["create", "-q", "-f", "qcow2", &dir.path("tgt.qcow2"), &size]);
    let mid = dir.path("mid.qcow2");
    std::fs::copy(qcow2, &mid).expect("copy the data");
    blk(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &mid,
    ]);
    let top = dir.path("top.qcow2");
    blk(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &top,
    ]);
}

/// One run of `job` on a fresh chain: from the QMP command until the images are closed.
fn run_job(dir: &Scratch, qcow2: &str, size: u64, job: Job) -> Duration {
    fresh_chain(dir, qcow2, size);
    let env = RealEnv::new();
    let dyn_env: Rc<dyn Env> = env.clone();
    let engine = Rc::new(Engine::new(dyn_env));
    let (base, mid, top) = (
        dir.path("base.qcow2"),
        dir.path("mid.qcow2"),
        dir.path("top.qcow2"),
    );
    let tgt = dir.path("tgt.qcow2");
    let elapsed = env.block_on(async move {
        let node = |name: &str, file: &str, backing: Value| {
            json!({"driver": "qcow2", "node-name": name, "backing": backing,
                   "file": {"driver": "file", "filename": file}})
        };
        // The chain opened node by node, so that its nodes have names to give the jobs.
        let chain = [
            ("base", base, Value::Null),
            ("mid", mid, json!("base")),
            ("top", top, json!("mid")),
        ];
        for (name, file, backing) in chain {
            engine
                .blockdev_add(node(name, &file, backing))
                .await
                .unwrap();
        }
        let cmd: Value = match job {
            Job::Stream => json!({"execute": "block-stream",
                "arguments": {"job-id": "j", "device": "top"}}),
            Job::Commit => json!({"execute": "block-commit",
                "arguments": {"job-id": "j", "device": "top", "top-node": "mid"}}),
            Job::Mirror => {
                engine
                    .blockdev_add(node("tgt", &tgt, Value::Null))
                    .await
                    .unwrap();
                json!({"execute": "blockdev-mirror",
                    "arguments": {"job-id": "j", "device": "top", "target": "tgt", "sync": "full"}})
            }
        };
        let start = Instant::now();
        let reply = engine::qmp::execute(&engine, &cmd).await;
        assert!(reply.get("return").is_some(), "{cmd}: {reply}");
        let j = engine.find_job("j").unwrap();
        if let Job::Mirror = job {
            j.wait_status(|s| matches!(s, JobStatus::Ready | JobStatus::Concluded))
                .await;
            let reply = engine::qmp::execute(
                &engine,
                &json!({"execute": "job-complete",
                "arguments": {"id": "j"}}),
            )
            .await;
            assert!(reply.get("return").is_some(), "job-complete: {reply}");
        }
        j.wait_concluded().await;
        assert!(j.error().is_none(), "{job:?} failed: {:?}", j.error());
        engine.shutdown().await.unwrap();
        start.elapsed()
    });
    env.shutdown();
    elapsed
}

fn jobs(c: &mut Criterion, dir: &Scratch, qcow2: &str, size: u64) {
    let mut group = c.benchmark_group("job");
    group.throughput(Throughput::Bytes(size));
    for job in [Job::Stream, Job::Commit, Job::Mirror] {
        group.bench_function(format!("{job:?}").to_lowercase(), |b| {
            b.iter_custom(|n| (0..n).map(|_| run_job(dir, qcow2, size, job)).sum())
        });
    }
    group.finish();
}

fn main() {
    let quick = std::env::var_os("BLK_BENCH_QUICK").is_some();
    let size: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let dir = Scratch(std::env::temp_dir().join(format!("blk-img-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("scratch dir");
    let (raw, qcow2) = make_data(&dir, size);
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 1 } else { 10 }))
        .warm_up_time(Duration::from_millis(if quick { 100 } else { 1000 }));
    tools(&mut c, &dir, &raw, &qcow2, size);
    jobs(&mut c, &dir, &qcow2, size);
    c.final_summary();
}
