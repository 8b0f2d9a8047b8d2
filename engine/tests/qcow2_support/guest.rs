//! Guest-level plumbing shared by the qcow2 property tests and crash tests: image layouts (cluster
//! size, refcount width, compat, lazy refcounts, backing file), building them on the simulator,
//! guest operations with seeded byte patterns, running a batch of them concurrently (one task
//! each, so the seeded scheduler interleaves them), a byte model with QEMU's crash semantics, and
//! the hand-off to `qemu-img check` / `qemu-img compare`.

use std::cell::RefCell;
use std::rc::Rc;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::drivers::qcow2::{Compat, CreateOptions, create};
use engine::env::Env;
use engine::io::{IoBuf, ReqFlags};
use engine::util::Notify;
use serde_json::json;
use sim::{Sim, View};

use super::{Scratch, create_on};

/// The overlay (the image under test) on the virtual disk.
pub const TOP: &str = "top.qcow2";
/// Its backing file, if any (named relative to the overlay, as QEMU stores it).
pub const BASE: &str = "base.img";

/// What the backing file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// No backing file: unallocated clusters read as zeroes.
    None,
    /// A raw file full of a pattern (with a zero hole).
    Raw,
    /// A qcow2 image with some extents written and the rest unallocated.
    Qcow2,
}

/// The image under test.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Virtual size.
    pub size: u64,
    /// Cluster size of the overlay.
    pub cs: u64,
    /// Refcount width of the overlay.
    pub refcount_bits: u32,
    /// compat=0.10 (version 2) instead of 1.1.
    pub v2: bool,
    /// lazy_refcounts=on (version 3 only).
    pub lazy: bool,
    /// The backing file.
    pub backing: Backing,
    /// Open with the smallest metadata caches (two L2 tables, two refcount blocks), so tables
    /// are evicted and written back all the time.
    pub small_cache: bool,
    /// extended_l2=on (32 subclusters per cluster; clusters of 16 KiB or more).
    pub extended_l2: bool,
}

impl Layout {
    /// The qcow2 node's options (without `file`).
    fn node_options(&self) -> serde_json::Value {
        let mut o = json!({"driver": "qcow2", "node-name": "q", "discard": "unmap"});
        if self.small_cache {
            o["l2-cache-size"] = json!(2 * self.cs);
            o["refcount-cache-size"] = json!(2 * self.cs);
        }
        o
    }
}

/// A guest request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// Write `len` bytes of the pattern `tag` at `off`.
    Write { off: u64, len: u64, tag: u64 },
    /// Write zeroes, with or without MAY_UNMAP.
    Zero { off: u64, len: u64, unmap: bool },
    /// Discard (the node has discard=unmap).
    Discard { off: u64, len: u64 },
    /// Read and compare.
    Read { off: u64, len: u64 },
    /// Flush.
    Flush,
    /// Empty the image (what `qemu-img commit` does to the committed image): it then reads
    /// as its backing file, or as zeroes.
    MakeEmpty,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes pattern `tag` has at guest offsets `[off, off+len)`: a function of the absolute
/// offset, so a misplaced sector shows.
pub fn fill(tag: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|o| (mix(tag.wrapping_mul(0x1_0000_0001) ^ (o >> 3)) >> ((o & 7) * 8)) as u8)
        .collect()
}

/// The guest contents of the backing file of `layout` (zeroes without one).
pub fn backing_bytes(layout: &Layout) -> Vec<u8> {
    let size = layout.size;
    match layout.backing {
        Backing::None => vec![0; size as usize],
        Backing::Raw => {
            let mut b = fill(0xba5e, 0, size);
            // A hole reading as zeroes, so zero detection over a backing file is exercised too.
            b[(size / 2) as usize..(size / 2 + size / 8) as usize].fill(0);
            b
        }
        Backing::Qcow2 => {
            let mut b = vec![0; size as usize];
            for (off, len) in base_extents(size) {
                b[off as usize..(off + len) as usize].copy_from_slice(&fill(0xba5e, off, len));
            }
            b
        }
    }
}

/// The extents written into a qcow2 base: every other 48 KiB, unaligned.
fn base_extents(size: u64) -> Vec<(u64, u64)> {
    (0..size / 98_304)
        .map(|i| (i * 98_304 + 1_000, 48 * 1024))
        .filter(|(o, l)| o + l <= size)
        .collect()
}

/// Put the empty image files and a raw backing file on the virtual disk (qcow2 bases are
/// written by [`build`]).
pub fn prepare(sim: &Sim, layout: &Layout) {
    sim.fs().create_file(TOP, &[]).unwrap();
    match layout.backing {
        Backing::None => {}
        Backing::Raw => sim.fs().create_file(BASE, &backing_bytes(layout)).unwrap(),
        Backing::Qcow2 => sim.fs().create_file(BASE, &[]).unwrap(),
    }
}

/// Build the images of `layout` (after [`prepare`]) and open the overlay as node "q" with
/// `discard=unmap`, attached to a device. A qcow2 base is written by a first engine that is shut
/// down cleanly; the overlay is created by `engine`.
pub async fn build(env: &Rc<dyn Env>, engine: &Engine, layout: &Layout) -> Rc<BlockBackend> {
    if layout.backing == Backing::Qcow2 {
        let e1 = Rc::new(Engine::new(env.clone()));
        e1.blockdev_add(json!({"driver": "file", "node-name": "bf", "filename": BASE}))
            .await
            .unwrap();
        let bb = e1
            .device_add("bc", "bf", BackendOptions::tool(false))
            .unwrap();
        let opts = CreateOptions {
            size: layout.size,
            cluster_size: 65536,
            ..CreateOptions::default()
        };
        create(&bb.root().unwrap(), &opts).await.unwrap();
        e1.device_del("bc").await.unwrap();
        e1.blockdev_add(json!({"driver": "qcow2", "node-name": "bq", "file": "bf"}))
            .await
            .unwrap();
        let bw = e1
            .device_add("bw", "bq", BackendOptions::tool(false))
            .unwrap();
        for (off, len) in base_extents(layout.size) {
            let data = IoBuf::from_slice(&fill(0xba5e, off, len));
            bw.write(off, data, ReqFlags::NONE).await.1.unwrap();
        }
        e1.shutdown().await.unwrap();
    }
    let (backing_file, backing_fmt) = match layout.backing {
        Backing::None => (None, None),
        Backing::Raw => (Some(BASE.to_string()), Some("raw".to_string())),
        Backing::Qcow2 => (Some(BASE.to_string()), Some("qcow2".to_string())),
    };
    let opts = CreateOptions {
        size: layout.size,
        cluster_size: layout.cs,
        compat: if layout.v2 { Compat::V2 } else { Compat::V3 },
        refcount_bits: layout.refcount_bits,
        lazy_refcounts: layout.lazy,
        extended_l2: layout.extended_l2,
        backing_file,
        backing_fmt,
        ..CreateOptions::default()
    };
    create_on(engine, TOP, &opts).await;
    let mut node = layout.node_options();
    node["file"] = json!("f");
    engine.blockdev_add(node).await.unwrap();
    engine
        .device_add("d", "q", BackendOptions::tool(false))
        .unwrap()
}

/// Reopen the overlay after a crash (a new engine): node "q", device "d".
pub async fn reopen(engine: &Engine, layout: &Layout) -> engine::Result<Rc<BlockBackend>> {
    let mut node = layout.node_options();
    node["file"] = json!({"driver": "file", "filename": TOP});
    engine.blockdev_add(node).await?;
    engine.device_add("d", "q", BackendOptions::tool(false))
}

/// The outcome of one guest request: the bytes read, or the error.
pub type OpResult = Result<Option<Vec<u8>>, String>;

/// Issue one request.
pub async fn issue(bb: &BlockBackend, op: &GuestOp) -> OpResult {
    let r = match *op {
        GuestOp::Write { off, len, tag } => {
            let buf = IoBuf::from_slice(&fill(tag, off, len));
            bb.write(off, buf, ReqFlags::NONE).await.1
        }
        GuestOp::Zero { off, len, unmap } => {
            let flags = if unmap {
                ReqFlags::MAY_UNMAP
            } else {
                ReqFlags::NONE
            };
            bb.write_zeroes(off, len, flags).await
        }
        GuestOp::Discard { off, len } => bb.discard(off, len).await,
        GuestOp::Read { off, len } => {
            let (buf, r) = bb.read(off, IoBuf::new(len as usize)).await;
            return r
                .map(|()| Some(buf.as_slice().to_vec()))
                .map_err(|e| e.to_string());
        }
        GuestOp::Flush => bb.flush().await,
        GuestOp::MakeEmpty => match bb.root_node() {
            Some(node) => engine::request::make_empty(&node).await,
            None => return Err("no medium".into()),
        },
    };
    r.map(|()| None).map_err(|e| e.to_string())
}

/// Issue `ops` at once, each from its own task (the seeded scheduler interleaves them and the
/// disk completes them out of order); wait for all and return their outcomes in order.
pub async fn run_batch(env: &Rc<dyn Env>, bb: &Rc<BlockBackend>, ops: &[GuestOp]) -> Vec<OpResult> {
    let results: Rc<RefCell<Vec<Option<OpResult>>>> = Rc::new(RefCell::new(vec![None; ops.len()]));
    let done = Rc::new(Notify::new());
    for (i, op) in ops.iter().enumerate() {
        let (bb, op, results, done) = (bb.clone(), op.clone(), results.clone(), done.clone());
        env.spawn(
            "guest-op",
            Box::pin(async move {
                let r = issue(&bb, &op).await;
                results.borrow_mut()[i] = Some(r);
                done.notify_all();
            }),
        );
    }
    while results.borrow().iter().any(Option::is_none) {
        done.wait().await;
    }
    results.take().into_iter().map(Option::unwrap).collect()
}

/// What the guest may see, byte by byte.
///
/// `cur` is what reads must return now (the writes of a batch never overlap, so every
/// completed request has one defined effect). For crashes, QEMU's contract: a byte holds the
/// value it had when the last completed flush was issued (`stable`), or the value of any request
/// issued after that flush (`since`, recorded at issue, so requests in flight at the crash
/// count); nothing else.
pub struct Model {
    /// The image layout (discard semantics depend on it).
    pub layout: Layout,
    /// The backing file's guest contents.
    pub backing: Vec<u8>,
    /// What reads return now.
    pub cur: Vec<u8>,
    /// What survived the last completed flush.
    pub stable: Vec<u8>,
    /// Effects of the requests issued since then: (offset, new bytes).
    pub since: Vec<(u64, Vec<u8>)>,
}

impl Model {
    /// A fresh image: reads show the backing file (or zeroes).
    pub fn new(layout: &Layout) -> Model {
        let backing = backing_bytes(layout);
        Model {
            layout: *layout,
            cur: backing.clone(),
            stable: backing.clone(),
            backing,
            since: Vec::new(),
        }
    }

    /// The bytes `op` changes: (offset, new contents); `None` for reads and flushes. A discard
    /// acts on the whole clusters inside its range only (the generic layer passes them down,
    /// the driver drops the partial ones, except the partial last cluster of the image when the
    /// discard reaches the end); they then read as zeroes, except on a version 2 image with a
    /// backing file, which has no zero flag: the discard keeps the data there (as QEMU does),
    /// so that the backing file never shows through.
    pub fn effect(&self, op: &GuestOp) -> Option<(u64, Vec<u8>)> {
        match *op {
            GuestOp::Write { off, len, tag } => Some((off, fill(tag, off, len))),
            GuestOp::Zero { off, len, .. } => Some((off, vec![0; len as usize])),
            GuestOp::Discard { off, len } => {
                if self.layout.v2 && self.layout.backing != Backing::None {
                    return None;
                }
                let (cs, size) = (self.layout.cs, self.layout.size);
                let end = if off + len >= size {
                    size
                } else {
                    (off + len) / cs * cs
                };
                let first = off.div_ceil(cs) * cs;
                if first >= end {
                    return None;
                }
                Some((first, vec![0; (end - first) as usize]))
            }
            GuestOp::MakeEmpty => Some((0, self.backing.clone())),
            GuestOp::Read { .. } | GuestOp::Flush => None,
        }
    }

    /// Record a request as issued (it may land at a crash from now on).
    pub fn issued(&mut self, op: &GuestOp) {
        if let Some(e) = self.effect(op) {
            self.since.push(e);
        }
    }

    /// Apply a completed request to `cur`.
    pub fn completed(&mut self, op: &GuestOp) {
        if let Some((off, data)) = self.effect(op) {
            self.cur[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }

    /// A flush completed that was issued with nothing else in flight: everything is durable.
    pub fn flushed(&mut self) {
        self.stable.clone_from(&self.cur);
        self.since.clear();
    }

    /// A flush issued together with other requests completed: it covered what had completed
    /// when it was issued (`stable`); `since` are the effects of the requests issued with it
    /// (or later), which may or may not have been covered.
    pub fn flushed_at(&mut self, stable: Vec<u8>, since: Vec<(u64, Vec<u8>)>) {
        self.stable = stable;
        self.since = since;
    }

    /// Check what a reopened image reads after a crash against the crash contract.
    pub fn check_after_crash(&self, actual: &[u8]) -> Result<(), String> {
        if actual.len() != self.stable.len() {
            return Err(format!(
                "image reads {} bytes, expected {}",
                actual.len(),
                self.stable.len()
            ));
        }
        let mut bad = 0;
        let mut first = None;
        for (i, (&a, &s)) in actual.iter().zip(&self.stable).enumerate() {
            if a == s {
                continue;
            }
            let i = i as u64;
            let allowed = self.since.iter().any(|(off, data)| {
                i >= *off && i < off + data.len() as u64 && data[(i - off) as usize] == a
            });
            if !allowed {
                bad += 1;
                first.get_or_insert((i, a, s));
            }
        }
        match first {
            None => Ok(()),
            Some((i, a, s)) => Err(format!(
                "{bad} bytes hold values neither flushed nor written since (first at guest \
                 offset {i}: {a:#04x}, flushed value {s:#04x}; {} requests since the last flush)",
                self.since.len()
            )),
        }
    }
}

/// Export the overlay (as `name`) and the backing file next to it (as `BASE`, replacing an
/// earlier one), so that qemu-img resolves the backing name stored in the overlay.
pub fn export_top(sim: &Sim, layout: &Layout, dir: &Scratch, name: &str) {
    if layout.backing != Backing::None {
        sim.fs()
            .export_to(BASE, View::Current, &dir.path(BASE))
            .unwrap();
    }
    sim.fs()
        .export_to(TOP, View::Durable, &dir.path(name))
        .unwrap();
}

/// `qemu-img compare` of the exported overlay `name` against `expected` as a raw file.
pub fn qemu_compare_status(dir: &Scratch, name: &str, expected: &[u8]) -> Result<(), String> {
    let raw = format!("{name}.model.raw");
    std::fs::write(dir.path(&raw), expected).unwrap();
    let (code, text) = dir.run_status(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", name, &raw],
    );
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "qemu-img compare against the model exited {code}: {text}"
        ))
    }
}

/// [`qemu_compare_status`] that must find the two identical.
pub fn qemu_compare(dir: &Scratch, name: &str, expected: &[u8], what: &str) {
    if let Err(e) = qemu_compare_status(dir, name, expected) {
        panic!("{what}: {e}");
    }
}
