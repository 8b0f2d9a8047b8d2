//! Throughput and per-request cost of the request path in production mode:
//! BlockBackend → raw → null-co, and BlockBackend → raw → file (page cache), 4 KiB reads and
//! writes at queue depth 1 and 32, on the io_uring reactor.
//!
//! Criterion measures throughput; a second pass records every request's latency in an
//! hdrhistogram and the process's user/system CPU time per request; a third runs `qemu-img bench`
//! on the same file with the same parameters and prints blk/QEMU throughput ratios.
//!
//! `cargo bench --bench request_path` (set BLK_BENCH_QUICK=1 for a short run).

use std::cell::{Cell, RefCell};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::env::Env;
use engine::env::real::RealEnv;
use engine::io::{IoBuf, ReqFlags};
use engine::util::Notify;
use hdrhistogram::Histogram;
use serde_json::json;

const BS: usize = 4096;
const FILE_SIZE: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Null,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Read,
    Write,
}

struct Setup {
    env: Rc<RealEnv>,
    bb: Rc<BlockBackend>,
    _engine: Rc<Engine>,
}

fn bench_file() -> String {
    let path = std::env::temp_dir().join(format!("blk-bench-{}.img", std::process::id()));
    std::fs::write(&path, vec![0xa5u8; FILE_SIZE as usize]).expect("create bench file");
    path.display().to_string()
}

fn setup(target: Target, file: &str) -> Setup {
    let env = RealEnv::new();
    let dyn_env: Rc<dyn Env> = env.clone();
    let engine = Rc::new(Engine::new(dyn_env));
    let protocol = match target {
        Target::Null => json!({"driver": "null-co", "size": FILE_SIZE, "read-zeroes": true}),
        Target::File => json!({"driver": "file", "filename": file}),
    };
    let eng = engine.clone();
    env.block_on(async move {
        eng.blockdev_add(json!({"driver": "raw", "node-name": "disk", "file": protocol}))
            .await
            .unwrap();
    });
    let bb = engine
        .device_add("d", "disk", BackendOptions::tool(false))
        .unwrap();
    Setup {
        env,
        bb,
        _engine: engine,
    }
}

/// Run `n` requests with `qd` workers; returns elapsed time and (if asked) a latency histogram.
fn run(s: &Setup, op: Op, qd: u64, n: u64, record: bool) -> (Duration, Option<Histogram<u64>>) {
    let next = Rc::new(Cell::new(0u64));
    let finished = Rc::new(Cell::new(0u64));
    let done = Rc::new(Notify::new());
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
    ));
    let start = Instant::now();
    for _ in 0..qd {
        let (bb, next, finished, done, hist, env) = (
            s.bb.clone(),
            next.clone(),
            finished.clone(),
            done.clone(),
            hist.clone(),
            s.env.clone(),
        );
        s.env.spawn(
            "bench worker",
            Box::pin(async move {
                let mut buf = IoBuf::filled(BS, 0x5a);
                loop {
                    let i = next.get();
                    if i >= n {
                        break;
                    }
                    next.set(i + 1);
                    // qemu-img bench's pattern: offset 0, step = block size, wrapping at the end.
                    let offset = (i * BS as u64) % FILE_SIZE;
                    let t0 = if record { env.now_ns() } else { 0 };
                    let (b, r) = match op {
                        Op::Read => bb.read(offset, buf).await,
                        Op::Write => bb.write(offset, buf, ReqFlags::NONE).await,
                    };
                    r.expect("bench request");
                    buf = b;
                    if record {
                        hist.borrow_mut().saturating_record(env.now_ns() - t0);
                    }
                }
                finished.set(finished.get() + 1);
                done.notify_all();
            }),
        );
    }
    let (f, d) = (finished.clone(), done.clone());
    s.env.block_on(async move {
        while f.get() < qd {
            d.wait().await;
        }
    });
    let elapsed = start.elapsed();
    let h = Rc::try_unwrap(hist).ok().map(RefCell::into_inner);
    (elapsed, if record { h } else { None })
}

fn cpu_times() -> (Duration, Duration) {
    // SAFETY: `libc::rusage` is plain data, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn qemu_img_bench(file: &str, op: Op, qd: u64, n: u64) -> Option<Duration> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-t", "writeback", "-i", "io_uring"]);
    cmd.args([
        "-c",
        &n.to_string(),
        "-d",
        &qd.to_string(),
        "-s",
        "4096",
        "-S",
        "4096",
    ]);
    if op == Op::Write {
        cmd.arg("-w");
    }
    cmd.arg(file);
    let start = Instant::now();
    let out = cmd.output().ok()?;
    out.status.success().then(|| start.elapsed())
}

fn main() {
    let quick = std::env::var("BLK_BENCH_QUICK").is_ok();
    let file = bench_file();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }));
    let configs: Vec<(Target, Op, u64)> = [Target::Null, Target::File]
        .into_iter()
        .flat_map(|t| {
            [Op::Read, Op::Write]
                .into_iter()
                .flat_map(move |o| [1, 32].map(|q| (t, o, q)))
        })
        .collect();
    for &(target, op, qd) in &configs {
        let s = setup(target, &file);
        let mut group = c.benchmark_group(format!("{target:?}/{op:?}").to_lowercase());
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("4k_qd{qd}"), |b| {
            b.iter_custom(|iters| run(&s, op, qd, iters.max(qd), false).0)
        });
        group.finish();
        s.env.shutdown();
    }

    let n: u64 = if quick { 20_000 } else { 100_000 };
    println!("\nper-request figures over {n} requests of 4 KiB (io_uring backend):");
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "config", "kIOPS", "user ns", "sys ns", "p50 us", "p99 us", "p99.9 us", "vs qemu-img"
    );
    for &(target, op, qd) in &configs {
        let s = setup(target, &file);
        run(&s, op, qd, n / 10, false); // warm up
        let (u0, s0) = cpu_times();
        let (elapsed, hist) = run(&s, op, qd, n, true);
        let (u1, s1) = cpu_times();
        let hist = hist.expect("histogram");
        let iops = n as f64 / elapsed.as_secs_f64();
        let ratio = match target {
            Target::File => qemu_img_bench(&file, op, qd, n)
                .map(|q| format!("{:.2}x", iops / (n as f64 / q.as_secs_f64())))
                .unwrap_or_else(|| "n/a".into()),
            Target::Null => "-".into(),
        };
        println!(
            "{:<22} {:>10.1} {:>9} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            format!("{target:?}/{op:?}/qd{qd}").to_lowercase(),
            iops / 1000.0,
            ((u1 - u0).as_nanos() as u64) / n,
            ((s1 - s0).as_nanos() as u64) / n,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.value_at_quantile(0.999) as f64 / 1000.0,
            ratio,
        );
        s.env.shutdown();
    }
    let _ = std::fs::remove_file(&file);
}
