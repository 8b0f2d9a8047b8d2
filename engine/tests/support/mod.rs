//! Shared test support: run an engine on the simulator, and `testmem`, an in-memory driver whose
//! limits are options and which logs every request that reaches it and can hold requests at a
//! gate (so tests can keep requests in flight while they drain, race or edit the graph).
#![allow(dead_code)]

pub mod chain;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use engine::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use engine::env::LocalBoxFuture;
use engine::graph::OpenCtx;
use engine::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use engine::util::{Notify, Options};
use engine::{Engine, Result};
use serde_json::{Value, json};
use sim::{Sim, SimConfig};

/// Run `body` on a fresh engine in a simulator seeded with `seed`.
pub fn run<T: 'static, F: Future<Output = T> + 'static>(
    seed: u64,
    body: impl FnOnce(Rc<Engine>) -> F,
) -> T {
    let sim = Sim::new(seed, SimConfig::default());
    let engine = Rc::new(Engine::new(sim.env().as_env()));
    engine.graph().register_driver("testmem", open_testmem);
    let fut = body(engine);
    match sim.block_on(fut) {
        Ok(v) => v,
        Err(e) => panic!("simulation failed (seed {seed}): {e}"),
    }
}

/// What reached a `testmem` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read(u64, u64),
    Write(u64, u64, ReqFlags),
    Zeroes(u64, u64, ReqFlags),
    Discard(u64, u64),
    Flush,
}

/// Shared state of one `testmem` node, found by node name.
#[derive(Default)]
pub struct MemState {
    pub data: RefCell<Vec<u8>>,
    pub log: RefCell<Vec<Op>>,
    pub gate_closed: Cell<bool>,
    pub gate: Notify,
    pub held: Cell<u32>,
    pub fail_writes: Cell<Option<engine::Errno>>,
    /// The next request to arrive waits until `release_held` (the others pass).
    pub hold_next: Cell<bool>,
    pub release: Notify,
}

impl MemState {
    pub fn open_gate(&self) {
        self.gate_closed.set(false);
        self.gate.notify_all();
    }

    /// Let the request held by `hold_next` go on.
    pub fn release_held(&self) {
        self.release.notify_all();
    }

    async fn pass_gate(&self) {
        if self.hold_next.replace(false) {
            self.held.set(self.held.get() + 1);
            self.release.wait().await;
            self.held.set(self.held.get() - 1);
        }
        while self.gate_closed.get() {
            self.held.set(self.held.get() + 1);
            self.gate.wait().await;
            self.held.set(self.held.get() - 1);
        }
    }

    pub fn take_log(&self) -> Vec<Op> {
        std::mem::take(&mut self.log.borrow_mut())
    }
}

thread_local! {
    static STATES: RefCell<BTreeMap<String, Rc<MemState>>> = const { RefCell::new(BTreeMap::new()) };
}

/// The state of the `testmem` node named `name`.
pub fn mem(name: &str) -> Rc<MemState> {
    STATES.with(|s| s.borrow().get(name).cloned().expect("no such testmem node"))
}

struct TestMem {
    state: Rc<MemState>,
    caps: DriverCaps,
    limits: Limits,
}

pub fn open_testmem(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let size = opts.take_u64("size")?.unwrap_or(1 << 20);
        let align = opts.take_u64("align")?.unwrap_or(1) as u32;
        let max_transfer = opts.take_u64("max-transfer")?.unwrap_or(0) as u32;
        let fua = opts.take_bool("fua")?.unwrap_or(true);
        let zeroes = opts.take_bool("zeroes")?.unwrap_or(true);
        opts.finish()?;
        let state = Rc::new(MemState::default());
        *state.data.borrow_mut() = vec![0; size as usize];
        STATES.with(|s| {
            s.borrow_mut()
                .insert(ctx.node_name().to_string(), state.clone())
        });
        let caps = DriverCaps {
            name: "testmem",
            kind: DriverKind::Protocol,
            supports_backing: false,
            write_flags: if fua { ReqFlags::FUA } else { ReqFlags::NONE },
            zero_flags: if zeroes {
                ReqFlags::MAY_UNMAP
            } else {
                ReqFlags::NONE
            },
            reopen: false,
        };
        let limits = Limits {
            request_align: align,
            max_transfer,
            ..Limits::default()
        };
        Ok(Box::new(TestMem {
            state,
            caps,
            limits,
        }) as Box<dyn BlockDriver>)
    })
}

impl BlockDriver for TestMem {
    fn caps(&self) -> &DriverCaps {
        &self.caps
    }
    fn limits(&self) -> Limits {
        self.limits
    }
    fn len(&self) -> u64 {
        self.state.data.borrow().len() as u64
    }
    fn read(&self, offset: u64, mut buf: IoBuf, _f: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            self.state
                .log
                .borrow_mut()
                .push(Op::Read(offset, buf.len() as u64));
            self.check(offset, buf.len() as u64);
            self.state.pass_gate().await;
            let data = self.state.data.borrow();
            let n = buf.len();
            buf.as_mut_slice()
                .copy_from_slice(&data[offset as usize..offset as usize + n]);
            drop(data);
            (buf, Ok(()))
        })
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            self.state
                .log
                .borrow_mut()
                .push(Op::Write(offset, buf.len() as u64, flags));
            self.check(offset, buf.len() as u64);
            self.state.pass_gate().await;
            if let Some(errno) = self.state.fail_writes.get() {
                return (buf, Err(engine::Error::io(errno)));
            }
            let n = buf.len();
            self.state.data.borrow_mut()[offset as usize..offset as usize + n]
                .copy_from_slice(buf.as_slice());
            (buf, Ok(()))
        })
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.caps.zero_flags.contains(ReqFlags::MAY_UNMAP) {
                return Err(engine::Error::io(engine::Errno::ENOTSUP));
            }
            self.state
                .log
                .borrow_mut()
                .push(Op::Zeroes(offset, len, flags));
            self.state.pass_gate().await;
            self.state.data.borrow_mut()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        })
    }
    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.state.log.borrow_mut().push(Op::Discard(offset, len));
            self.state.data.borrow_mut()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        })
    }
    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.state.log.borrow_mut().push(Op::Flush);
            Ok(())
        })
    }
    fn block_status(&self, _offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            Ok(BlockStatus {
                len,
                mapping: Mapping::Data { host: None },
            })
        })
    }
    fn truncate(&self, len: u64, _e: bool, _p: Prealloc) -> LocalBoxFuture<'_, Result<()>> {
        self.state.data.borrow_mut().resize(len as usize, 0);
        Box::pin(async { Ok(()) })
    }
    fn filename(&self) -> String {
        "testmem".into()
    }
}

impl TestMem {
    /// The generic layer must honour this driver's limits: a violation is an engine bug.
    fn check(&self, offset: u64, len: u64) {
        let a = self.limits.request_align as u64;
        assert!(
            offset.is_multiple_of(a) && len.is_multiple_of(a),
            "unaligned request {offset}+{len} (align {a})"
        );
        if self.limits.max_transfer != 0 {
            assert!(
                len <= self.limits.max_transfer as u64,
                "request of {len} over max_transfer"
            );
        }
    }
}

/// blockdev-add a `testmem` node with extra options.
pub async fn add_mem(engine: &Engine, name: &str, extra: Value) -> Rc<engine::graph::Node> {
    let mut opts = json!({"driver": "testmem", "node-name": name});
    if let (Value::Object(o), Value::Object(e)) = (&mut opts, extra) {
        o.extend(e);
    }
    engine
        .blockdev_add(opts)
        .await
        .expect("blockdev-add testmem")
}

/// `base` with the members of `extra` set (a null member removes it).
pub fn merge_args(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// Run `cmd`; it must fail with `class` and exactly `desc`, the graph and jobs unchanged.
pub async fn refused(engine: &Engine, cmd: Value, class: &str, desc: &str) {
    let graph = engine.block_graph();
    let ids = |e: &Engine| -> Vec<Value> {
        e.query_jobs()
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].clone())
            .collect()
    };
    let jobs = ids(engine);
    let nodes = engine.query_named_block_nodes(false);
    let r = engine::qmp::execute(engine, &cmd).await;
    assert_eq!(r["error"]["class"], json!(class), "{cmd} -> {r}");
    assert_eq!(r["error"]["desc"], json!(desc), "{cmd} -> {r}");
    assert_eq!(engine.block_graph(), graph, "{cmd} changed the graph");
    assert_eq!(
        engine.query_named_block_nodes(false),
        nodes,
        "{cmd} changed the nodes"
    );
    assert_eq!(ids(engine), jobs, "{cmd} left a job behind");
    let events: Vec<_> = engine
        .take_events()
        .into_iter()
        // A job that failed after creation goes created -> null, as in QEMU; nothing else.
        .filter(|e| {
            e.name.starts_with("BLOCK_JOB")
                || (e.name == "JOB_STATUS_CHANGE"
                    && !matches!(e.data["status"].as_str(), Some("created" | "null")))
        })
        .collect();
    assert!(events.is_empty(), "{cmd} sent job events: {events:?}");
}

/// Guest writes through the device: `count` blocks of 4..64 KiB at seeded offsets, pattern
/// by index; the same writes are applied to `model`.
pub async fn guest_writes(engine: &Engine, model: &mut [u8], seed: u64, count: u64) {
    let bb = engine.backend("drive0").unwrap();
    let len = model.len() as u64;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 4096 * (1 + x % 16);
        let off = (x >> 8) % (len - n) / 512 * 512;
        let pat = (i % 250) as u8 + 1;
        bb.write(off, IoBuf::filled(n as usize, pat), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        model[off as usize..(off + n) as usize].fill(pat);
    }
}

/// Run a QMP command.
pub async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

/// Run a QMP command that must succeed; its return value.
pub async fn qmp_ok(engine: &Engine, cmd: Value) -> Value {
    let r = qmp(engine, cmd.clone()).await;
    assert!(r.get("error").is_none(), "{cmd} failed: {r}");
    r["return"].clone()
}

/// The named files of the simulated host with their bytes (`None`: no such file), to check
/// that a refused command wrote nothing.
pub async fn host_files(engine: &Engine, names: &[&str]) -> Vec<(String, Option<Vec<u8>>)> {
    let fs = engine.env().fs();
    let mut out = Vec::new();
    for n in names {
        let mut bytes = None;
        if fs.exists(n) {
            let f = fs.open(n, engine::env::OpenOptions::default()).unwrap();
            let (buf, r) = f.read_at(IoBuf::new(f.len().unwrap() as usize), 0).await;
            r.unwrap();
            bytes = Some(buf.as_slice().to_vec());
        }
        out.push((n.to_string(), bytes));
    }
    out
}
