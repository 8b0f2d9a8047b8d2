//! What a data operation does when it completes: the fault plan applied, then the effect on the
//! file's write cache. Shared by the normal completion path and by orphaned operations (whose
//! caller dropped the future: like a real disk, the operation still happens). A crash scheduled at
//! the operation (`schedule.rs`) strikes here, before or after its effect.

use std::cell::RefCell;

use engine::io::IoBuf;
use engine::{Errno, Error, Result};

use super::FsInner;
use super::file::{CacheOp, VFile};
use super::pages::PAGE;
use super::schedule::Strike;
use crate::fault::{FaultPlan, OpKind};
use crate::trace::tag;

/// A submitted operation with side effects, waiting for its completion time.
pub(crate) enum Effect {
    /// `buf[skip..]` at `offset`.
    Write {
        buf: IoBuf,
        skip: usize,
        offset: u64,
        fua: bool,
    },
    Flush {
        mark: u64,
    },
    SetLen(u64),
    Discard {
        offset: u64,
        len: u64,
    },
    Zeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Prealloc {
        offset: u64,
        len: u64,
    },
}

impl Effect {
    /// Kind, offset and length, for faults and the trace.
    pub(crate) fn describe(&self) -> (OpKind, u64, u64) {
        match *self {
            Effect::Write {
                ref buf,
                skip,
                offset,
                ..
            } => (OpKind::Write, offset, (buf.len() - skip) as u64),
            Effect::Flush { .. } => (OpKind::Flush, 0, 0),
            Effect::SetLen(len) => (OpKind::SetLen, len, 0),
            Effect::Discard { offset, len } => (OpKind::Discard, offset, len),
            Effect::Zeroes { offset, len, .. } => (OpKind::WriteZeroes, offset, len),
            Effect::Prealloc { offset, len } => (OpKind::Preallocate, offset, len),
        }
    }
}

fn eio(what: &str) -> Error {
    Error::io_msg(Errno::EIO, format!("{what}: Input/output error (injected)"))
}

/// The error for an operation on a handle opened before a crash.
pub(crate) fn stale() -> Error {
    Error::io_msg(
        Errno::EIO,
        "Input/output error (stale handle: the simulated host crashed)",
    )
}

/// Record a finished operation in the trace.
pub(crate) fn trace_done<T>(
    fs: &FsInner,
    op: u64,
    file: u64,
    offset: u64,
    len: u64,
    res: &Result<T>,
) {
    let errno = res
        .as_ref()
        .err()
        .map_or(0, |e| e.errno().map_or(u64::MAX, |n| n.code() as u64));
    fs.trace
        .record(tag::DISK, &[op, file, offset, len, errno, fs.clock.now()]);
}

/// Fail with ENOSPC if the plan carries a quota and `need` more bytes would exceed it.
fn check_quota(fs: &FsInner, plan: &FaultPlan, op: OpKind, total: u64, need: u64) -> Result<()> {
    match plan.quota {
        Some((id, quota)) if need > 0 && total.saturating_add(need) > quota => {
            fs.faults.borrow_mut().fire(id, &fs.trace, op);
            Err(Error::io(Errno::ENOSPC))
        }
        _ => Ok(()),
    }
}

/// Complete `effect` on `file`. Returns the write buffer (if any) and the outcome: the bytes a
/// write moved (0 for other operations).
pub(crate) fn complete(
    fs: &FsInner,
    file: &RefCell<VFile>,
    epoch: u64,
    plan: &FaultPlan,
    effect: Effect,
) -> (Option<IoBuf>, Result<u64>) {
    let (op, offset, len) = effect.describe();
    let file_id = file.borrow().id;
    let strike = if fs.epoch.get() == epoch {
        fs.count_op(op)
    } else {
        None
    };
    if strike == Some(Strike::Before) {
        // The power fails as the operation reaches the disk: it never takes effect.
        fs.strike();
    }
    let (buf, res) = if fs.epoch.get() != epoch {
        let buf = if let Effect::Write { buf, .. } = effect {
            Some(buf)
        } else {
            None
        };
        (buf, Err(stale()))
    } else if plan.eio {
        let buf = if let Effect::Write { buf, .. } = effect {
            Some(buf)
        } else {
            None
        };
        (buf, Err(eio(&format!("{op:?}"))))
    } else if let Some(errno) = plan.transient {
        let buf = if let Effect::Write { buf, .. } = effect {
            Some(buf)
        } else {
            None
        };
        (
            buf,
            Err(Error::io_msg(errno, format!("{op:?}: failed (injected)"))),
        )
    } else {
        apply(fs, file, plan, effect)
    };
    trace_done(fs, op.code(), file_id, offset, len, &res);
    if strike == Some(Strike::After) {
        fs.strike();
    }
    (buf, res)
}

fn apply(
    fs: &FsInner,
    file: &RefCell<VFile>,
    plan: &FaultPlan,
    effect: Effect,
) -> (Option<IoBuf>, Result<u64>) {
    // Sum the allocation before borrowing this file mutably (the sum borrows every file).
    let total = if plan.quota.is_some() {
        fs.allocated_bytes()
    } else {
        0
    };
    let mut f = file.borrow_mut();
    let f = &mut *f;
    match effect {
        Effect::Write {
            buf,
            skip,
            offset,
            fua,
        } => apply_write(fs, f, plan, total, (buf, skip, offset, fua)),
        Effect::Flush { mark } => (None, apply_flush(f, plan, mark)),
        Effect::SetLen(len) => {
            f.push(CacheOp::SetLen(len), false);
            (None, Ok(0))
        }
        Effect::Discard { offset, len } => {
            apply_discard(f, plan, offset, len);
            (None, Ok(0))
        }
        Effect::Zeroes { offset, len, unmap } => {
            let need = if unmap {
                0
            } else {
                f.current.holes_in(offset, len) * PAGE
            };
            let res = check_quota(fs, plan, OpKind::WriteZeroes, total, need);
            if res.is_ok() && len > 0 && !plan.lost {
                f.push(
                    CacheOp::Zero {
                        offset,
                        len,
                        unmap,
                        grows: true,
                    },
                    false,
                );
            }
            (None, res.map(|()| 0))
        }
        Effect::Prealloc { offset, len } => {
            let need = f.current.holes_in(offset, len) * PAGE;
            let res = check_quota(fs, plan, OpKind::Preallocate, total, need);
            if res.is_ok() && len > 0 {
                f.push(CacheOp::Prealloc { offset, len }, false);
            }
            (None, res.map(|()| 0))
        }
    }
}

/// A write into the volatile cache: `(buf, skip, offset, fua)`, as the plan lets it land
/// (short, misdirected, lost, or refused for quota).
fn apply_write(
    fs: &FsInner,
    f: &mut VFile,
    plan: &FaultPlan,
    total: u64,
    (buf, skip, offset, fua): (IoBuf, usize, u64, bool),
) -> (Option<IoBuf>, Result<u64>) {
    // A short transfer lands only its prefix and reports it.
    let len = plan.short.unwrap_or((buf.len() - skip) as u64);
    if len == 0 {
        return (Some(buf), Ok(0));
    }
    let target = plan.misdirect_to.unwrap_or(offset);
    let need = f.current.holes_in(target, len) * PAGE;
    if let Err(e) = check_quota(fs, plan, OpKind::Write, total, need) {
        return (Some(buf), Err(e));
    }
    if plan.lost {
        return (Some(buf), Ok(len));
    }
    let data = buf.as_slice()[skip..skip + len as usize].to_vec();
    f.push(
        CacheOp::Write {
            offset: target,
            data,
        },
        fua,
    );
    if target != offset && offset + len > f.len {
        // The size update of the intended write still happens.
        f.push(CacheOp::SetLen(offset + len), fua);
    }
    (Some(buf), Ok(len))
}

/// A flush up to `mark`, or the flush faults that drop or forget the dirty data.
fn apply_flush(f: &mut VFile, plan: &FaultPlan, mark: u64) -> Result<u64> {
    if plan.drop_dirty {
        f.drop_dirty(mark);
        return Err(eio("flush (dirty data dropped)"));
    }
    if plan.lose_flushed {
        f.lose_flushed(mark);
        return Err(eio("flush (data marked clean, never written)"));
    }
    f.flush(mark);
    Ok(0)
}

/// A discard: the covered part within the file reads as zeroes, unless the plan ignores it.
fn apply_discard(f: &mut VFile, plan: &FaultPlan, offset: u64, len: u64) {
    let end = offset.saturating_add(len).min(f.len);
    if offset < end && !plan.discard_noop && !plan.lost {
        f.push(
            CacheOp::Zero {
                offset,
                len: end - offset,
                unmap: true,
                grows: false,
            },
            false,
        );
    }
}
