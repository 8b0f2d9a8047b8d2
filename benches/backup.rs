//! Backup throughput on real files, beside qemu-storage-daemon's for the same image.
//!
//! The source is a fully allocated qcow2 image (64 KiB clusters, data that does not compress to
//! nothing); each run backs it up into a freshly created qcow2 target with `blockdev-backup
//! sync=full`, on the io_uring reactor. Criterion measures blk's runs; a second pass alternates
//! blk and `qemu-storage-daemon` (QMP over a unix socket, timed from the `blockdev-backup`
//! command to its `BLOCK_JOB_COMPLETED` event, so neither side's start-up is counted), prints
//! both medians (wall time, and CPU time of all threads, which a loaded machine disturbs less)
//! and the blk/QEMU ratios, and checks each target with `qemu-img compare`.
//!
//! `cargo bench --bench backup` (BLK_BENCH_QUICK=1: a 128 MiB image, fewer runs).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use engine::Engine;
use engine::env::Env;
use engine::env::real::RealEnv;
use serde_json::{Value, json};

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("blk-backup-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw file of `size` bytes of xorshift data, converted to a fully allocated qcow2 image.
fn make_source(dir: &Scratch, size: u64) -> String {
    let raw = dir.path("src.raw");
    let mut data = vec![0u8; size as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&raw, &data).expect("write raw source");
    let src = dir.path("src.qcow2");
    run_tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &raw, &src],
    );
    let _ = std::fs::remove_file(&raw);
    src
}

fn fresh_target(dir: &Scratch, name: &str, size: u64) -> String {
    let tgt = dir.path(name);
    let _ = std::fs::remove_file(&tgt);
    run_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &tgt, &size.to_string()],
    );
    tgt
}

fn qcow2_node(node: &str, file: &str) -> Value {
    json!({"driver": "qcow2", "node-name": node,
           "file": {"driver": "file", "filename": file}})
}

/// Wall time and CPU time (user + system, all threads) of one backup.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// This process's CPU time so far (its io_uring workers included).
fn own_cpu() -> Duration {
    // SAFETY: `libc::rusage` is plain data, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A child process's CPU time so far, from /proc (utime + stime, in clock ticks).
fn child_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3 (state, not a
    // number, so it is filtered out): utime is the 11th number.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// One blk backup of `src` into `tgt`: from `blockdev-backup` until the images are closed, so
/// the backup is on disk (a backup job need not flush its target when it completes).
fn blk_backup(src: &str, tgt: &str) -> Cost {
    let env = RealEnv::new();
    let dyn_env: Rc<dyn Env> = env.clone();
    let engine = Rc::new(Engine::new(dyn_env));
    let (src, tgt) = (src.to_string(), tgt.to_string());
    let elapsed = env.block_on(async move {
        engine.blockdev_add(qcow2_node("src", &src)).await.unwrap();
        engine.blockdev_add(qcow2_node("tgt", &tgt)).await.unwrap();
        let (start, cpu0) = (Instant::now(), own_cpu());
        let mut cmd = json!({"execute": "blockdev-backup", "arguments": {
            "job-id": "b0", "device": "src", "target": "tgt", "sync": "full"}});
        if let Ok(w) = std::env::var("BLK_BACKUP_WORKERS") {
            cmd["arguments"]["x-perf"] = json!({"max-workers": w.parse::<u64>().unwrap()});
        }
        let reply = engine::qmp::execute(&engine, &cmd).await;
        assert!(reply.get("return").is_some(), "blockdev-backup: {reply}");
        let job = engine.find_job("b0").unwrap();
        job.wait_concluded().await;
        assert!(job.error().is_none(), "backup failed: {:?}", job.error());
        // Closing flushes the target: the run ends when the backup is durable.
        engine.shutdown().await.unwrap();
        Cost {
            wall: start.elapsed(),
            cpu: own_cpu() - cpu0,
        }
    });
    env.shutdown();
    elapsed
}

/// A QMP session with a qemu-storage-daemon.
struct Qsd {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qsd {
    fn start(dir: &Scratch, src: &str, tgt: &str) -> Option<Qsd> {
        let sock = dir.path("qsd.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("qemu-storage-daemon")
            .args(["--blockdev", &qcow2_node("src", src).to_string()])
            .args(["--blockdev", &qcow2_node("tgt", tgt).to_string()])
            .args([
                "--chardev",
                &format!("socket,id=m0,path={sock},server=on,wait=off"),
                "--monitor",
                "chardev=m0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut qsd = Qsd {
            child,
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        qsd.next_message(); // the greeting
        qsd.command(json!({"execute": "qmp_capabilities"}));
        Some(qsd)
    }

    fn next_message(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP message {line:?}: {e}"))
    }

    /// Send a command and return its reply, skipping events.
    fn command(&mut self, cmd: Value) -> Value {
        writeln!(self.writer, "{cmd}").expect("QMP write");
        loop {
            let m = self.next_message();
            if m.get("event").is_none() {
                assert!(m.get("return").is_some(), "{cmd} -> {m}");
                return m;
            }
        }
    }

    fn wait_event(&mut self, name: &str) -> Value {
        loop {
            let m = self.next_message();
            if m["event"] == name {
                return m;
            }
        }
    }

    /// `quit`, which closes (and so flushes) every image; returns the daemon's CPU time in all.
    fn quit(self) -> Duration {
        let _ = writeln!(&self.writer, "{}", json!({"execute": "quit"}));
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: `libc::rusage` is plain data, for which all-zero bytes are a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child fills the status and usage we pass.
        unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// One qemu-storage-daemon backup of `src` into `tgt`, timed as [`blk_backup`] is: until
/// `quit` has closed the images and the daemon has exited.
fn qsd_backup(dir: &Scratch, src: &str, tgt: &str) -> Option<Cost> {
    let mut qsd = Qsd::start(dir, src, tgt)?;
    let pid = qsd.child.id();
    let (start, cpu0) = (Instant::now(), child_cpu(pid));
    qsd.command(json!({"execute": "blockdev-backup", "arguments": {
        "job-id": "b0", "device": "src", "target": "tgt", "sync": "full"}}));
    let ev = qsd.wait_event("BLOCK_JOB_COMPLETED");
    assert!(
        ev["data"].get("error").is_none(),
        "QEMU backup failed: {ev}"
    );
    let cpu = qsd.quit();
    Some(Cost {
        wall: start.elapsed(),
        cpu: cpu - cpu0,
    })
}

fn assert_same(a: &str, b: &str) {
    run_tool("qemu-img", &["compare", "-q", a, b]);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::var("BLK_BENCH_QUICK").is_ok();
    let size: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let dir = Scratch::new();
    let src = make_source(&dir, size);
    if std::env::var("BLK_BENCH_PROFILE").is_ok() {
        // Only blk's runs, for a profiler.
        for _ in 0..6 {
            let t = blk_backup(&src, &fresh_target(&dir, "prof.qcow2", size));
            println!("blk backup: {:?} wall, {:?} CPU", t.wall, t.cpu);
        }
        return;
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 2 } else { 20 }))
        .warm_up_time(Duration::from_millis(500));
    let mut group = c.benchmark_group("backup");
    group.throughput(Throughput::Bytes(size));
    group.bench_function(format!("full_{}MiB", size >> 20), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| blk_backup(&src, &fresh_target(&dir, "crit.qcow2", size)).wall)
                .sum()
        })
    });
    group.finish();

    let runs = if quick { 3 } else { 5 };
    let (mut blk, mut qemu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = fresh_target(&dir, "blk.qcow2", size);
        blk.push(blk_backup(&src, &t));
        assert_same(&src, &t);
        let t = fresh_target(&dir, "qsd.qcow2", size);
        match qsd_backup(&dir, &src, &t) {
            Some(d) => qemu.push(d),
            None => break,
        }
        assert_same(&src, &t);
    }
    let mib = (size >> 20) as f64;
    println!("\nbackup sync=full of a {mib} MiB qcow2 image into a new qcow2, median of {runs}:");
    let show = |who: &str, c: &[Cost]| {
        let wall = median(c.iter().map(|c| c.wall).collect());
        let cpu = median(c.iter().map(|c| c.cpu).collect());
        println!(
            "  {who:<20} {:>8.1} ms wall {:>7.0} MiB/s {:>8.1} ms CPU",
            wall.as_secs_f64() * 1e3,
            mib / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3
        );
        (wall, cpu)
    };
    let (bw, bc) = show("blk", &blk);
    if qemu.is_empty() {
        println!("  qemu-storage-daemon  n/a (not installed)");
        return;
    }
    let (qw, qc) = show("qemu-storage-daemon", &qemu);
    println!(
        "  blk/QEMU             {:.2}x wall time, {:.2}x CPU time",
        bw.as_secs_f64() / qw.as_secs_f64(),
        bc.as_secs_f64() / qc.as_secs_f64()
    );
}
