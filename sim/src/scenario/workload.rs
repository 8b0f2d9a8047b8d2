//! Seeded background guest workloads: `iodepth` workers issuing a weighted mix of reads,
//! writes, flushes and discards on a device, never two overlapping requests at once (as a guest
//! would not), keeping the reference model up to date and checking every read against it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::backend::BlockBackend;
use engine::env::Env;
use engine::io::{IoBuf, ReqFlags};
use engine::util::{Notify, parse_size};
use rand_chacha::ChaCha8Rng;

use super::model::{DeviceModel, SECTOR, WriteData, fill_gen};
use super::syntax::Arg;
use crate::rng::below;

/// A workload's parameters.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Device name.
    pub device: String,
    /// Weights of read, write, flush, discard.
    pub mix: [u64; 4],
    /// Request sizes, bytes (multiples of 512).
    pub bs: (u64, u64),
    /// Concurrent workers.
    pub iodepth: u32,
    /// Byte range requests fall in (`None`: the whole device).
    pub range: Option<(u64, u64)>,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Virtual time each worker waits after a request (`think=`; 0 = none).
    pub think_ns: u64,
}

impl WorkloadSpec {
    /// Parse `device= mix= bs= iodepth= range= count=`.
    pub fn parse(args: &[Arg]) -> Result<WorkloadSpec, String> {
        let mut spec = WorkloadSpec {
            device: String::new(),
            mix: [1, 1, 0, 0],
            bs: (4096, 4096),
            iodepth: 1,
            range: None,
            count: None,
            think_ns: 0,
        };
        for a in args {
            let v = a
                .value
                .clone()
                .ok_or_else(|| format!("'{}' needs a value", a.key))?;
            let size =
                |t: &str| parse_size(t).ok_or_else(|| format!("bad size '{t}' in {}", a.key));
            match a.key.as_str() {
                "device" => spec.device = v,
                "mix" => spec.mix = parse_mix(&v)?,
                "bs" => {
                    let (a, b) = v.split_once("..").unwrap_or((&v, &v));
                    spec.bs = (size(a)?, size(b)?);
                    let (min, max) = spec.bs;
                    if min == 0
                        || min > max
                        || !min.is_multiple_of(SECTOR)
                        || !max.is_multiple_of(SECTOR)
                    {
                        return Err(format!(
                            "bad block size range '{v}' (multiples of 512, min <= max)"
                        ));
                    }
                }
                "iodepth" => {
                    spec.iodepth = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("bad iodepth '{v}'"))?
                }
                "range" => {
                    let (a, b) = v
                        .split_once("..")
                        .ok_or_else(|| format!("bad range '{v}' (START..END)"))?;
                    spec.range = Some((size(a)?, size(b)?));
                }
                "count" => spec.count = Some(v.parse().map_err(|_| format!("bad count '{v}'"))?),
                "think" => {
                    spec.think_ns = crate::config::parse_duration(&v)
                        .ok_or_else(|| format!("bad think time '{v}'"))?
                }
                other => return Err(format!("unknown workload argument '{other}'")),
            }
        }
        if spec.device.is_empty() {
            return Err("a workload needs device=NAME".into());
        }
        if spec.mix.iter().sum::<u64>() == 0 {
            return Err("the mix has no operation with a weight".into());
        }
        Ok(spec)
    }
}

/// `mix=read:W,write:W,flush:W,discard:W`: the weights, by operation (unnamed ones are 0).
fn parse_mix(v: &str) -> Result<[u64; 4], String> {
    let mut mix = [0; 4];
    for part in v.split(',') {
        let (op, w) = part
            .split_once(':')
            .ok_or_else(|| format!("bad mix entry '{part}' (op:weight)"))?;
        let w: u64 = w.parse().map_err(|_| format!("bad weight '{w}'"))?;
        let idx = match op {
            "read" => 0,
            "write" => 1,
            "flush" => 2,
            "discard" => 3,
            _ => {
                return Err(format!(
                    "unknown operation '{op}' in mix (read, write, flush, discard)"
                ));
            }
        };
        mix[idx] = w;
    }
    Ok(mix)
}

/// Counters of a workload.
#[derive(Clone, Debug, Default)]
pub struct WorkloadStats {
    /// Completed reads, writes, flushes, discards.
    pub ops: [u64; 4],
    /// Their bytes (flushes move none).
    pub bytes: [u64; 4],
    /// Failed requests.
    pub errors: u64,
}

/// A running workload.
pub struct Workload {
    /// What it was started with.
    pub spec: WorkloadSpec,
    /// Virtual time of its start.
    pub started_ns: u64,
    endless: bool,
    stop: Rc<Cell<bool>>,
    active: Rc<Cell<u32>>,
    done: Rc<Notify>,
    /// Counters.
    pub stats: Rc<RefCell<WorkloadStats>>,
    /// The first read that disagreed with the model.
    pub failure: Rc<RefCell<Option<String>>>,
}

/// Shared state of one device's workloads: write ids and ranges in flight.
#[derive(Default)]
pub struct DeviceActivity {
    /// Next workload write id.
    pub next_gen: Cell<u64>,
    /// Ranges with a request in flight.
    pub busy: RefCell<Vec<(u64, u64)>>,
}

struct Worker {
    bb: Rc<BlockBackend>,
    model: Rc<RefCell<DeviceModel>>,
    activity: Rc<DeviceActivity>,
    rng: Rc<RefCell<ChaCha8Rng>>,
    spec: WorkloadSpec,
    env: Rc<dyn Env>,
    issued: Rc<Cell<u64>>,
}

impl Workload {
    /// Start `spec.iodepth` workers.
    pub fn start(
        env: &Rc<dyn Env>,
        name: &str,
        bb: Rc<BlockBackend>,
        model: Rc<RefCell<DeviceModel>>,
        activity: Rc<DeviceActivity>,
        spec: WorkloadSpec,
        rng: ChaCha8Rng,
    ) -> Workload {
        let w = Workload {
            spec: spec.clone(),
            started_ns: env.now_ns(),
            endless: spec.count.is_none(),
            stop: Rc::default(),
            active: Rc::new(Cell::new(spec.iodepth)),
            done: Rc::default(),
            stats: Rc::default(),
            failure: Rc::default(),
        };
        let rng = Rc::new(RefCell::new(rng));
        let issued = Rc::new(Cell::new(0));
        for i in 0..spec.iodepth {
            let worker = Worker {
                bb: bb.clone(),
                model: model.clone(),
                activity: activity.clone(),
                rng: rng.clone(),
                spec: spec.clone(),
                env: env.clone(),
                issued: issued.clone(),
            };
            let (stop, active, done, stats, failure) = (
                w.stop.clone(),
                w.active.clone(),
                w.done.clone(),
                w.stats.clone(),
                w.failure.clone(),
            );
            env.spawn(
                &format!("workload {name} worker {i}"),
                Box::pin(async move {
                    worker.run(&stop, &stats, &failure).await;
                    active.set(active.get() - 1);
                    done.notify_all();
                }),
            );
        }
        w
    }

    /// Ask the workers to stop and wait until every request has finished.
    pub async fn stop(&self) {
        self.stop.set(true);
        self.wait().await;
    }

    /// True when the workload runs until stopped.
    pub fn is_endless(&self) -> bool {
        self.endless
    }

    /// Wait until the workers are done (a `count=` workload ends by itself).
    pub async fn wait(&self) {
        while self.active.get() > 0 {
            self.done.wait().await;
        }
    }
}

impl Worker {
    fn pick_op(&self) -> usize {
        let total: u64 = self.spec.mix.iter().sum();
        let mut x = below(&mut self.rng.borrow_mut(), total);
        for (i, w) in self.spec.mix.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        unreachable!("weights cover the draw")
    }

    fn pick_range(&self) -> Option<(u64, u64)> {
        let size = self.bb.len().ok()?;
        let (lo, hi) = self.spec.range.unwrap_or((0, size));
        let hi = hi.min(size);
        let mut rng = self.rng.borrow_mut();
        let (bmin, bmax) = (self.spec.bs.0 / SECTOR, self.spec.bs.1 / SECTOR);
        let len = (bmin + below(&mut rng, bmax - bmin + 1)) * SECTOR;
        if hi < lo + len {
            return None;
        }
        let slots = (hi - lo - len) / SECTOR + 1;
        let offset = lo + below(&mut rng, slots) * SECTOR;
        let busy = self.activity.busy.borrow();
        let free = busy
            .iter()
            .all(|(o, l)| offset + len <= *o || o + l <= offset);
        free.then_some((offset, len))
    }

    async fn run(
        &self,
        stop: &Cell<bool>,
        stats: &RefCell<WorkloadStats>,
        failure: &RefCell<Option<String>>,
    ) {
        while !stop.get() && failure.borrow().is_none() {
            if self.spec.count.is_some_and(|c| self.issued.get() >= c) {
                break;
            }
            self.issued.set(self.issued.get() + 1);
            let op = self.pick_op();
            if op == 2 {
                let start = self.model.borrow().flush_start();
                let r = self.bb.flush().await;
                self.count(stats, op, 0, r.is_ok());
                if r.is_ok() {
                    self.model.borrow_mut().flush_done(start);
                } else {
                    self.model.borrow_mut().flush_failed();
                }
                continue;
            }
            let Some((offset, len)) = self.pick_range() else {
                // Everything nearby is busy: let the other workers progress.
                self.env.sleep_until(self.env.now_ns() + 1_000).await;
                continue;
            };
            self.activity.busy.borrow_mut().push((offset, len));
            let ok = match op {
                0 => self.read(offset, len, failure).await,
                1 => self.write(offset, len).await,
                _ => {
                    let r = self.bb.discard(offset, len).await;
                    self.model.borrow_mut().discarded(offset, len);
                    r.is_ok()
                }
            };
            self.activity
                .busy
                .borrow_mut()
                .retain(|r| *r != (offset, len));
            self.count(stats, op, len, ok);
            if self.spec.think_ns > 0 {
                // A guest that does something else between requests: bounds the write rate.
                self.env
                    .sleep_until(self.env.now_ns() + self.spec.think_ns)
                    .await;
            }
        }
    }

    fn count(&self, stats: &RefCell<WorkloadStats>, op: usize, len: u64, ok: bool) {
        let mut s = stats.borrow_mut();
        if ok {
            s.ops[op] += 1;
            s.bytes[op] += len;
        } else {
            s.errors += 1;
        }
    }

    async fn write(&self, offset: u64, len: u64) -> bool {
        let id = self.activity.next_gen.get() + 1;
        self.activity.next_gen.set(id);
        let mut buf = IoBuf::new(len as usize);
        fill_gen(id, offset, buf.as_mut_slice());
        let ticket = self
            .model
            .borrow_mut()
            .begin_write(offset, len, &WriteData::Gen(id));
        let (_, r) = self.bb.write(offset, buf, ReqFlags::NONE).await;
        self.model.borrow_mut().complete_write(ticket, r.is_ok());
        r.is_ok()
    }

    async fn read(&self, offset: u64, len: u64, failure: &RefCell<Option<String>>) -> bool {
        let (buf, r) = self.bb.read(offset, IoBuf::new(len as usize)).await;
        if r.is_err() {
            return false;
        }
        let model = self.model.borrow();
        if let Some((sector, expected)) = model.mismatch(offset / SECTOR, buf.as_slice()) {
            let want: Vec<String> = expected.iter().map(|v| v.to_string()).collect();
            *failure.borrow_mut() = Some(format!(
                "read of device '{}' at sector {sector} (offset {}) returned data that is none of [{}]",
                self.bb.name(),
                sector * SECTOR,
                want.join(", ")
            ));
        }
        true
    }
}
