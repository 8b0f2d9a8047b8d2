//! Fault injection for the virtual disk: plain-data [`FaultSpec`]s and the table that decides,
//! per operation, which faults fire.
//!
//! A spec names a [`FaultKind`] and targets it by file path, operation kind, byte range and a
//! [`Trigger`] (once, N times, sticky, or with a probability drawn from the fault stream of the
//! seed), optionally after skipping the first matches. Faults are evaluated when an operation is
//! submitted, in injection order; several may fire on one operation (say `Slow` and `Eio`). The
//! outcome is a `FaultPlan` that the disk applies when the operation completes.
//!
//! The classes themselves, their names and what the swarm does with them are one table,
//! [`FAULT_KINDS`] (`classes.rs`).

mod classes;

pub use classes::{FAULT_KINDS, Family, FaultClass, FaultKind, class_named};

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;

use crate::config::SECTOR;
use crate::rng::{below, chance, in_range};
use crate::trace::{Trace, tag};

/// The operations a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// `read_at`.
    Read,
    /// `write_at`.
    Write,
    /// `flush`.
    Flush,
    /// `discard`.
    Discard,
    /// `write_zeroes`.
    WriteZeroes,
    /// `set_len`.
    SetLen,
    /// `preallocate`.
    Preallocate,
    /// A power loss (for faults that act when the host crashes).
    Crash,
}

/// Names of the operations in the scenario language (`ops=read,write`).
const OP_NAMES: &[(OpKind, &str)] = &[
    (OpKind::Read, "read"),
    (OpKind::Write, "write"),
    (OpKind::Flush, "flush"),
    (OpKind::Discard, "discard"),
    (OpKind::WriteZeroes, "zeroes"),
    (OpKind::SetLen, "setlen"),
    (OpKind::Preallocate, "prealloc"),
    (OpKind::Crash, "crash"),
];

impl OpKind {
    /// Stable code folded into the trace.
    pub fn code(self) -> u64 {
        match self {
            OpKind::Read => 1,
            OpKind::Write => 2,
            OpKind::Flush => 3,
            OpKind::Discard => 4,
            OpKind::WriteZeroes => 5,
            OpKind::SetLen => 6,
            OpKind::Preallocate => 7,
            OpKind::Crash => 9,
        }
    }

    /// The name in the scenario language.
    pub fn name(self) -> &'static str {
        OP_NAMES
            .iter()
            .find(|(o, _)| *o == self)
            .map_or("?", |(_, n)| n)
    }

    /// The operation named `name` in the scenario language.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OP_NAMES.iter().find(|(_, n)| *n == name).map(|(o, _)| *o)
    }
}

/// When a matching fault fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// The first match only.
    Once,
    /// The first `n` matches.
    Times(u64),
    /// Every match, until the fault is removed.
    Sticky,
    /// Each match independently with this probability (fault stream of the seed).
    Probability(f64),
}

/// A fault to inject: what, where, when. Plain data, so a scenario parser can build it.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Only this file (virtual path); `None` for every file.
    pub path: Option<String>,
    /// Only these operations; empty for the kind's default ones ([`FaultKind::default_ops`]).
    pub ops: Vec<OpKind>,
    /// Only operations overlapping `[offset, offset + len)`; `None` for anywhere. Flushes have
    /// no range and always overlap.
    pub range: Option<(u64, u64)>,
    /// When it fires.
    pub trigger: Trigger,
    /// Let this many matching operations through first.
    pub skip: u64,
}

impl FaultSpec {
    /// A sticky fault of `kind` on every file and the kind's default operations.
    pub fn new(kind: FaultKind) -> FaultSpec {
        FaultSpec {
            kind,
            path: None,
            ops: Vec::new(),
            range: None,
            trigger: Trigger::Sticky,
            skip: 0,
        }
    }

    /// Target one file.
    pub fn path(mut self, path: impl Into<String>) -> FaultSpec {
        self.path = Some(path.into());
        self
    }

    /// Target these operations.
    pub fn ops(mut self, ops: &[OpKind]) -> FaultSpec {
        self.ops = ops.to_vec();
        self
    }

    /// Target operations overlapping `[offset, offset + len)`.
    pub fn range(mut self, offset: u64, len: u64) -> FaultSpec {
        self.range = Some((offset, len));
        self
    }

    /// Set the trigger.
    pub fn trigger(mut self, trigger: Trigger) -> FaultSpec {
        self.trigger = trigger;
        self
    }

    /// Fire on the first match only.
    pub fn once(self) -> FaultSpec {
        self.trigger(Trigger::Once)
    }

    /// Skip the first `n` matches.
    pub fn skip(mut self, n: u64) -> FaultSpec {
        self.skip = n;
        self
    }

    /// Check the spec is coherent.
    pub fn validate(&self) -> Result<(), String> {
        for op in &self.ops {
            if !self.kind.applicable().contains(op) {
                return Err(format!("fault {:?} cannot act on {op:?}", self.kind));
            }
        }
        match self.trigger {
            Trigger::Probability(p) if !(0.0..=1.0).contains(&p) => {
                return Err(format!("probability {p} is not within 0..=1"));
            }
            _ => {}
        }
        if let Some((_, 0)) = self.range {
            return Err("empty fault range".to_string());
        }
        Ok(())
    }

    fn targets(&self, op: OpKind) -> bool {
        if self.ops.is_empty() {
            self.kind.default_ops().contains(&op)
        } else {
            self.ops.contains(&op)
        }
    }

    /// The intersection of `[off, off + len)` with the target range, if they overlap.
    fn overlap(&self, op: OpKind, off: u64, len: u64) -> Option<(u64, u64)> {
        if matches!(op, OpKind::Flush | OpKind::Crash) {
            return Some((0, 0));
        }
        let (end, len) = (off.saturating_add(len.max(1)), len.max(1));
        match self.range {
            None => Some((off, off + len)),
            Some((ro, rl)) => {
                let (s, e) = (off.max(ro), end.min(ro.saturating_add(rl)));
                (s < e).then_some((s, e))
            }
        }
    }
}

/// Identifies an injected fault.
pub type FaultId = u64;

/// An injected fault and its counters.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultState {
    /// The spec as injected.
    pub spec: FaultSpec,
    /// Matching operations seen.
    pub matched: u64,
    /// Times it fired.
    pub fired: u64,
}

impl FaultState {
    fn exhausted(&self) -> bool {
        match self.spec.trigger {
            Trigger::Once => self.fired >= 1,
            Trigger::Times(n) => self.fired >= n,
            Trigger::Sticky | Trigger::Probability(_) => false,
        }
    }
}

/// What the faults decided for one operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FaultPlan {
    pub(crate) eio: bool,
    pub(crate) extra_ns: u64,
    pub(crate) lost: bool,
    pub(crate) misdirect_to: Option<u64>,
    pub(crate) bitrot_bit: Option<u64>,
    pub(crate) latent_sector: Option<u64>,
    pub(crate) drop_dirty: bool,
    pub(crate) discard_noop: bool,
    /// A quota to check at completion: (fault, quota bytes).
    pub(crate) quota: Option<(FaultId, u64)>,
    /// A partial transfer moves only this many bytes (short read/write, ENOSPC mid-write).
    pub(crate) short: Option<u64>,
    /// The partial transfer fails with this error and does nothing (EAGAIN, EINTR, the ENOSPC
    /// that ends a mid-write fill-up).
    pub(crate) transient: Option<engine::Errno>,
    /// The operation completes no earlier than this (a hang of its file).
    pub(crate) not_before: u64,
    /// A failed flush marks its writes clean without writing them.
    pub(crate) lose_flushed: bool,
    /// The read first evicts what a lost flush left unwritten.
    pub(crate) evict: bool,
    /// A power loss cuts the file back to its durable length.
    pub(crate) truncate: bool,
}

/// Where an operation lands, for fault matching.
pub(crate) struct OpTarget<'a> {
    pub(crate) path: &'a str,
    pub(crate) op: OpKind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) file_len: u64,
    /// One partial transfer of `read_part`/`write_part` (the only target of partial-only kinds).
    pub(crate) partial: bool,
    /// Alignment a partial transfer keeps (`O_DIRECT` block, else 1).
    pub(crate) align: u64,
    /// Submission time.
    pub(crate) now: u64,
    /// The disk's largest latency (a reordered operation is held past it).
    pub(crate) max_latency: u64,
}

/// The injected faults, in injection order, and the fault stream.
pub(crate) struct FaultTable {
    faults: BTreeMap<FaultId, FaultState>,
    next_id: FaultId,
    rng: ChaCha8Rng,
    /// Hung files: path -> time the hang ends.
    hangs: BTreeMap<String, u64>,
    /// Files whose next partial write fails with ENOSPC (a mid-write fill-up continues there).
    full: BTreeMap<String, FaultId>,
}

impl FaultTable {
    pub(crate) fn new(rng: ChaCha8Rng) -> FaultTable {
        FaultTable {
            faults: BTreeMap::new(),
            next_id: 1,
            rng,
            hangs: BTreeMap::new(),
            full: BTreeMap::new(),
        }
    }

    pub(crate) fn inject(&mut self, spec: FaultSpec) -> Result<FaultId, String> {
        spec.validate()?;
        let id = self.next_id;
        self.next_id += 1;
        self.faults.insert(
            id,
            FaultState {
                spec,
                matched: 0,
                fired: 0,
            },
        );
        Ok(id)
    }

    pub(crate) fn remove(&mut self, id: FaultId) -> Option<FaultState> {
        self.full.retain(|_, f| *f != id);
        self.faults.remove(&id)
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
        self.hangs.clear();
        self.full.clear();
    }

    pub(crate) fn census(&self) -> Vec<(FaultId, FaultState)> {
        self.faults.iter().map(|(&id, s)| (id, s.clone())).collect()
    }

    /// Count a deferred firing (ENOSPC decided at completion).
    pub(crate) fn fire(&mut self, id: FaultId, trace: &Trace, op: OpKind) {
        if let Some(state) = self.faults.get_mut(&id) {
            state.fired += 1;
            trace.record(tag::FAULT, &[id, op.code()]);
        }
    }

    /// Decide the faults of one operation.
    pub(crate) fn plan(&mut self, t: &OpTarget<'_>, trace: &Trace) -> FaultPlan {
        let mut plan = FaultPlan {
            not_before: self.hangs.get(t.path).copied().unwrap_or(0),
            ..FaultPlan::default()
        };
        if t.partial
            && t.op == OpKind::Write
            && let Some(id) = self.full.remove(t.path)
        {
            // The write that continues a mid-write fill-up finds the disk full.
            plan.transient = Some(engine::Errno::ENOSPC);
            self.fire(id, trace, t.op);
        }
        for (&id, state) in self.faults.iter_mut() {
            let spec = &state.spec;
            if spec.path.as_deref().is_some_and(|p| p != t.path)
                || !spec.targets(t.op)
                || (spec.kind.class().partial_only && !t.partial)
            {
                continue;
            }
            let Some(hit) = spec.overlap(t.op, t.offset, t.len) else {
                continue;
            };
            if state.exhausted() {
                continue;
            }
            state.matched += 1;
            if state.matched <= spec.skip {
                continue;
            }
            match spec.trigger {
                Trigger::Probability(p) if !chance(&mut self.rng, p) => continue,
                _ => {}
            }
            let effect = Effect {
                rng: &mut self.rng,
                hangs: &mut self.hangs,
                full: &mut self.full,
                id,
            };
            if effect.apply(&spec.kind, spec.range, t, hit, &mut plan) {
                state.fired += 1;
                trace.record(tag::FAULT, &[id, t.op.code()]);
            }
        }
        plan
    }
}

/// What firing one fault does to the plan (and to the table's per-file state).
struct Effect<'a> {
    rng: &'a mut ChaCha8Rng,
    hangs: &'a mut BTreeMap<String, u64>,
    full: &'a mut BTreeMap<String, FaultId>,
    id: FaultId,
}

impl Effect<'_> {
    /// Apply `kind` to `plan`; false when it did not fire (yet).
    fn apply(
        self,
        kind: &FaultKind,
        range: Option<(u64, u64)>,
        t: &OpTarget<'_>,
        (s, e): (u64, u64),
        plan: &mut FaultPlan,
    ) -> bool {
        let rng = self.rng;
        match kind {
            FaultKind::Eio => plan.eio = true,
            FaultKind::NoSpace { quota_bytes } => {
                // Decided (and counted) at completion, against the allocation then.
                if plan.quota.is_none() {
                    plan.quota = Some((self.id, *quota_bytes));
                }
                return false;
            }
            FaultKind::Slow { extra } => {
                plan.extra_ns = plan.extra_ns.saturating_add(extra.sample(rng));
            }
            FaultKind::Hang { delay } => {
                let until = t.now.saturating_add(delay.sample(rng));
                let end = self.hangs.entry(t.path.to_string()).or_default();
                *end = (*end).max(until);
                plan.not_before = plan.not_before.max(until);
            }
            FaultKind::Reorder => {
                plan.extra_ns = plan.extra_ns.saturating_add(2 * t.max_latency + 1);
            }
            FaultKind::LostWrite => plan.lost = true,
            FaultKind::MisdirectedWrite => {
                plan.misdirect_to = Some(misdirect(rng, t.offset, t.len, t.file_len, range));
            }
            FaultKind::BitRot => {
                plan.bitrot_bit = Some((s - t.offset) * 8 + below(rng, (e - s) * 8));
            }
            FaultKind::LatentSector => {
                let (first, last) = (s / SECTOR, (e - 1) / SECTOR);
                plan.latent_sector = Some(first + below(rng, last - first + 1));
            }
            FaultKind::FlushDropsDirty => plan.drop_dirty = true,
            FaultKind::FlushLost => plan.lose_flushed = true,
            FaultKind::StaleRead => plan.evict = true,
            FaultKind::DiscardNoZero => plan.discard_noop = true,
            FaultKind::TruncateOnCrash => plan.truncate = true,
            FaultKind::Eagain => plan.transient = Some(engine::Errno::EAGAIN),
            FaultKind::Eintr => plan.transient = Some(engine::Errno::Other(4)),
            FaultKind::ShortRead => {
                // A prefix of whole alignment units, at least one, never all of it.
                let units = t.len / t.align.max(1);
                if units < 2 || plan.short.is_some() {
                    return false;
                }
                plan.short = Some(in_range(rng, 1, units - 1) * t.align.max(1));
            }
            FaultKind::ShortWrite | FaultKind::NoSpaceMidWrite => {
                // What lands stops on a sector (or O_DIRECT block) boundary of the file,
                // strictly inside the write: the page cache writes whole sectors back, so two
                // parts of one sector never reach the disk separately (a power loss resolves
                // sectors, not bytes).
                let unit = t.align.max(SECTOR);
                let first = t.offset / unit + 1;
                let last = (t.offset + t.len).div_ceil(unit) - 1;
                if first > last || plan.short.is_some() {
                    return false;
                }
                plan.short = Some(in_range(rng, first, last) * unit - t.offset);
                if *kind == FaultKind::NoSpaceMidWrite {
                    // A file system fills up: the write that continues this one finds it full.
                    self.full.insert(t.path.to_string(), self.id);
                }
            }
        }
        true
    }
}

/// A sector-aligned offset for a misdirected write of `len` bytes, inside `range` when given
/// and the write fits there twice, else inside the file (or its intended extent), different
/// from `offset` when there is room.
fn misdirect(
    rng: &mut ChaCha8Rng,
    offset: u64,
    len: u64,
    file_len: u64,
    range: Option<(u64, u64)>,
) -> u64 {
    let (base, extent) = match range {
        Some((ro, rl)) if rl >= 2 * len => (ro.next_multiple_of(SECTOR), ro + rl),
        _ => (0, file_len.max(offset + len)),
    };
    let slots = extent.saturating_sub(base + len) / SECTOR + 1;
    if slots <= 1 {
        return base;
    }
    loop {
        let cand = base + below(rng, slots) * SECTOR;
        if cand != offset {
            return cand;
        }
    }
}
