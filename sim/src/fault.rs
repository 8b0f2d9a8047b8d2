//! Fault injection for the virtual disk: plain-data [`FaultSpec`]s and the table that decides,
//! per operation, which faults fire.
//!
//! A spec names a [`FaultKind`] and targets it by file path, operation kind, byte range and a
//! [`Trigger`] (once, N times, sticky, or with a probability drawn from the fault stream of the
//! seed), optionally after skipping the first matches. Faults are evaluated when an operation is
//! submitted, in injection order; several may fire on one operation (say `Slow` and `Eio`). The
//! outcome is a `FaultPlan` that the disk applies when the operation completes.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;

use crate::config::Latency;
use crate::rng::{below, chance};
use crate::trace::{Trace, tag};
use crate::vdisk::SECTOR;

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
}

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
        }
    }
}

/// What goes wrong.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// The operation fails with EIO and has no effect.
    Eio,
    /// The operation fails with ENOSPC if, once it completed, the total allocated bytes of the
    /// whole file system would exceed `quota_bytes`. Counts (once/N) are spent only when it fails.
    NoSpace {
        /// Allocation limit in bytes, over every file.
        quota_bytes: u64,
    },
    /// A sector inside the read (and the target range) goes bad: this read and every later read
    /// of it fail with EIO until the whole sector is rewritten.
    LatentSector,
    /// The write reports success but its data never lands anywhere.
    LostWrite,
    /// The write reports success but lands at another, seeded, sector-aligned offset of the file;
    /// the intended range keeps its old data.
    MisdirectedWrite,
    /// One seeded bit of the returned data is flipped (the stored data is intact).
    BitRot,
    /// The flush fails with EIO and the dirty data it covered is dropped from the cache: reads
    /// fall back to the durable bytes (Linux's "writeback error" behaviour).
    FlushDropsDirty,
    /// The discard reports success but does nothing: the old data stays readable.
    DiscardNoZero,
    /// Extra virtual latency, added to the drawn one (gray failure, slow disk).
    Slow {
        /// The extra latency distribution (drawn from the fault stream).
        extra: Latency,
    },
}

impl FaultKind {
    /// Operations this kind can act on.
    pub fn applicable(&self) -> &'static [OpKind] {
        use OpKind::*;
        match self {
            FaultKind::Eio | FaultKind::Slow { .. } => &[
                Read,
                Write,
                Flush,
                Discard,
                WriteZeroes,
                SetLen,
                Preallocate,
            ],
            FaultKind::NoSpace { .. } => &[Write, WriteZeroes, Preallocate],
            FaultKind::LatentSector | FaultKind::BitRot => &[Read],
            FaultKind::LostWrite => &[Write, WriteZeroes, Discard],
            FaultKind::MisdirectedWrite => &[Write],
            FaultKind::FlushDropsDirty => &[Flush],
            FaultKind::DiscardNoZero => &[Discard],
        }
    }

    /// Operations targeted when a spec lists none.
    pub fn default_ops(&self) -> &'static [OpKind] {
        use OpKind::*;
        match self {
            FaultKind::Eio => &[Read, Write, Flush, Discard, WriteZeroes],
            FaultKind::LostWrite => &[Write],
            other => other.applicable(),
        }
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
        if op == OpKind::Flush {
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
}

/// Where an operation lands, for fault matching.
pub(crate) struct OpTarget<'a> {
    pub(crate) path: &'a str,
    pub(crate) op: OpKind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) file_len: u64,
}

/// The injected faults, in injection order, and the fault stream.
pub(crate) struct FaultTable {
    faults: BTreeMap<FaultId, FaultState>,
    next_id: FaultId,
    rng: ChaCha8Rng,
}

impl FaultTable {
    pub(crate) fn new(rng: ChaCha8Rng) -> FaultTable {
        FaultTable {
            faults: BTreeMap::new(),
            next_id: 1,
            rng,
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
        self.faults.remove(&id)
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
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
        let mut plan = FaultPlan::default();
        for (&id, state) in self.faults.iter_mut() {
            let spec = &state.spec;
            if spec.path.as_deref().is_some_and(|p| p != t.path) || !spec.targets(t.op) {
                continue;
            }
            let Some((s, e)) = spec.overlap(t.op, t.offset, t.len) else {
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
            let rng = &mut self.rng;
            let fired = match &spec.kind {
                FaultKind::Eio => {
                    plan.eio = true;
                    true
                }
                FaultKind::NoSpace { quota_bytes } => {
                    // Decided (and counted) at completion, against the allocation then.
                    if plan.quota.is_none() {
                        plan.quota = Some((id, *quota_bytes));
                    }
                    false
                }
                FaultKind::Slow { extra } => {
                    plan.extra_ns = plan.extra_ns.saturating_add(extra.sample(rng));
                    true
                }
                FaultKind::LostWrite => {
                    plan.lost = true;
                    true
                }
                FaultKind::MisdirectedWrite => {
                    plan.misdirect_to = Some(misdirect(rng, t.offset, t.len, t.file_len));
                    true
                }
                FaultKind::BitRot => {
                    plan.bitrot_bit = Some((s - t.offset) * 8 + below(rng, (e - s) * 8));
                    true
                }
                FaultKind::LatentSector => {
                    let (first, last) = (s / SECTOR, (e - 1) / SECTOR);
                    plan.latent_sector = Some(first + below(rng, last - first + 1));
                    true
                }
                FaultKind::FlushDropsDirty => {
                    plan.drop_dirty = true;
                    true
                }
                FaultKind::DiscardNoZero => {
                    plan.discard_noop = true;
                    true
                }
            };
            if fired {
                state.fired += 1;
                trace.record(tag::FAULT, &[id, t.op.code()]);
            }
        }
        plan
    }
}

/// A sector-aligned offset for a misdirected write of `len` bytes, inside the file (or its
/// intended extent), different from `offset` when there is room.
fn misdirect(rng: &mut ChaCha8Rng, offset: u64, len: u64, file_len: u64) -> u64 {
    let extent = file_len.max(offset + len);
    let slots = extent.saturating_sub(len) / SECTOR + 1;
    if slots <= 1 {
        return 0;
    }
    loop {
        let cand = below(rng, slots) * SECTOR;
        if cand != offset {
            return cand;
        }
    }
}
