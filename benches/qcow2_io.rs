//! qcow2 reads and writes on real files in production mode: BlockBackend → qcow2 → file, on
//! the io_uring reactor, for every combination of
//! - the request: read, overwrite (clusters allocated already) or allocating write (each write
//!   lands in a cluster of its own that is not allocated yet, so a 4 KiB write pays for the
//!   cluster's allocation and its copy-on-write padding: issue #17's worst case);
//! - its size: 4 KiB or 64 KiB (one whole 64 KiB cluster);
//! - the queue depth: 1 or 32;
//! - the host cache: page cache (`cache.direct=off`) or O_DIRECT (`cache.direct=on`).
//!
//! Reads and overwrites walk a preallocated image sequentially (qemu-img bench's pattern: step
//! = request size, wrapping at the end). Allocating writes go to a fresh empty image, replaced
//! (untimed) every `ALLOC_CHUNK` requests to bound the disk space a run takes.
//!
//! `cargo bench --bench qcow2_io` (BLK_BENCH_QUICK=1 for a short run). Files go to $TMPDIR,
//! which must allow O_DIRECT (not a tmpfs).

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::env::Env;
use engine::env::real::RealEnv;
use engine::io::{IoBuf, ReqFlags};
use engine::util::Notify;
use serde_json::json;

const CLUSTER: u64 = 64 << 10;
/// Allocating writes per fresh image (256 MiB of clusters).
const ALLOC_CHUNK: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Read,
    Overwrite,
    Allocate,
}

/// A qcow2 image opened on its own engine.
struct Open {
    env: Rc<RealEnv>,
    engine: Rc<Engine>,
    bb: Rc<BlockBackend>,
}

impl Open {
    fn new(path: &str, direct: bool) -> Open {
        let env = RealEnv::new();
        let dyn_env: Rc<dyn Env> = env.clone();
        let engine = Rc::new(Engine::new(dyn_env));
        let eng = engine.clone();
        let path = path.to_string();
        env.block_on(async move {
            eng.blockdev_add(json!({"driver": "qcow2", "node-name": "disk",
                "cache": {"direct": direct},
                "file": {"driver": "file", "filename": path}}))
                .await
                .expect("open the bench image");
        });
        let bb = engine
            .device_add("d", "disk", BackendOptions::tool(false))
            .expect("a BlockBackend");
        Open { env, engine, bb }
    }

    fn close(self) {
        let engine = self.engine.clone();
        self.env
            .block_on(async move { engine.shutdown().await })
            .expect("close the bench image");
        self.env.shutdown();
    }
}

/// An empty qcow2 image of `size` bytes (64 KiB clusters), made by blk itself.
fn create(path: &str, size: u64) {
    let _ = std::fs::remove_file(path);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blk"))
        .args(["create", "-q", "-f", "qcow2", path, &size.to_string()])
        .output()
        .expect("run blk create");
    assert!(out.status.success(), "blk create: {out:?}");
}

/// `n` requests of `bs` bytes at `offset(i)`, `qd` at a time; the time they took.
fn drive(
    o: &Open,
    op: Op,
    bs: usize,
    qd: u64,
    n: u64,
    offset: impl Fn(u64) -> u64 + 'static,
) -> Duration {
    let next = Rc::new(Cell::new(0u64));
    let finished = Rc::new(Cell::new(0u64));
    let done = Rc::new(Notify::new());
    let offset = Rc::new(offset);
    let start = Instant::now();
    for _ in 0..qd {
        let (bb, next, finished, done, offset) = (
            o.bb.clone(),
            next.clone(),
            finished.clone(),
            done.clone(),
            offset.clone(),
        );
        o.env.spawn(
            "bench worker",
            Box::pin(async move {
                let mut buf = IoBuf::filled(bs, 0x5a);
                loop {
                    let i = next.get();
                    if i >= n {
                        break;
                    }
                    next.set(i + 1);
                    let (b, r) = match op {
                        Op::Read => bb.read(offset(i), buf).await,
                        _ => bb.write(offset(i), buf, ReqFlags::NONE).await,
                    };
                    r.expect("bench request");
                    buf = b;
                }
                finished.set(finished.get() + 1);
                done.notify_all();
            }),
        );
    }
    let (f, d) = (finished.clone(), done.clone());
    o.env.block_on(async move {
        while f.get() < qd {
            d.wait().await;
        }
    });
    start.elapsed()
}

struct Files {
    dir: PathBuf,
    /// A fully allocated image for reads and overwrites.
    full: String,
    full_size: u64,
}

impl Files {
    fn new(full_size: u64) -> Files {
        let dir = std::env::temp_dir().join(format!("blk-qcow2-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let full = dir.join("full.qcow2").display().to_string();
        create(&full, full_size);
        let o = Open::new(&full, false);
        drive(&o, Op::Allocate, 1 << 20, 4, full_size >> 20, |i| i << 20);
        o.close();
        Files {
            dir,
            full,
            full_size,
        }
    }

    fn scratch(&self) -> String {
        self.dir.join("alloc.qcow2").display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` requests of one configuration; the time the requests took (opening, closing and
/// making images not counted).
fn measure(files: &Files, op: Op, bs: usize, qd: u64, direct: bool, n: u64) -> Duration {
    if op != Op::Allocate {
        let o = Open::new(&files.full, direct);
        let size = files.full_size;
        let t = drive(&o, op, bs, qd, n, move |i| (i * bs as u64) % size);
        o.close();
        return t;
    }
    let mut total = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(ALLOC_CHUNK);
        let path = files.scratch();
        create(&path, ALLOC_CHUNK * CLUSTER);
        let o = Open::new(&path, direct);
        // One request per cluster: each allocates it. As in qemu-img bench, the clock stops
        // when the last request completes (closing flushes; a loaded disk's fsync would
        // swamp the figure).
        total += drive(&o, op, bs, qd, chunk, |i| i * CLUSTER);
        o.close();
        left -= chunk;
    }
    total
}

fn main() {
    let quick = std::env::var_os("BLK_BENCH_QUICK").is_some();
    let files = Files::new(if quick { 64 << 20 } else { 256 << 20 });
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .warm_up_time(Duration::from_millis(if quick { 100 } else { 500 }));
    for op in [Op::Read, Op::Overwrite, Op::Allocate] {
        for direct in [false, true] {
            let cache = if direct { "odirect" } else { "pagecache" };
            let mut group = c.benchmark_group(format!("qcow2/{op:?}/{cache}").to_lowercase());
            for bs in [4096usize, 65536] {
                for qd in [1u64, 32] {
                    group.throughput(Throughput::Bytes(bs as u64));
                    group.bench_function(format!("{}k_qd{qd}", bs >> 10), |b| {
                        b.iter_custom(|iters| measure(&files, op, bs, qd, direct, iters))
                    });
                }
            }
            group.finish();
        }
    }
    c.final_summary();
}
