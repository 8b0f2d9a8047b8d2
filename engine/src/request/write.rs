//! Writes: permission check, detect-zeroes, read-modify-write for unaligned requests
//! (serialising), before-write hooks, `max_transfer` splitting, FUA emulation, write generation,
//! the write threshold. Also truncate.

use std::rc::Rc;

use serde_json::json;

use crate::driver::Prealloc;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Edge, Node};
use crate::io::{BufResult, IoBuf, ReqFlags};
use crate::types::{DetectZeroes, Perms};
use crate::util::{align_down, align_up, is_aligned};

use super::debug::raise;
use super::read::{aligned_read, check_range, max_chunk, mem_align};
use super::stats::{self, Op};
use super::{flush, zero};

/// A write needs WRITE on its edge, or WRITE_UNCHANGED for a write that changes nothing visible.
pub(crate) fn check_write_perm(node: &Node, edge: &Edge, flags: ReqFlags) -> Result<()> {
    let perm = edge.perm();
    let ok = perm.contains(Perms::WRITE)
        || (flags.contains(ReqFlags::WRITE_UNCHANGED) && perm.contains(Perms::WRITE_UNCHANGED));
    if ok {
        Ok(())
    } else {
        Err(Error::io_msg(
            Errno::EPERM,
            format!(
                "Write to node '{}' through {} without the 'write' permission",
                node.name(),
                edge.describe_use()
            ),
        ))
    }
}

/// A write ending past the node's end grows it, which needs RESIZE on the edge (a format
/// driver allocating in its file has it; a job or device writing past the end is a bug in the
/// caller, refused here instead of reaching the driver).
pub(crate) fn check_grow_perm(node: &Node, edge: &Edge, end: u64) -> Result<()> {
    if end <= node.len() || edge.perm().contains(Perms::RESIZE) {
        return Ok(());
    }
    Err(Error::io_msg(
        Errno::EIO,
        format!(
            "Write past the end of node '{}' ({} > {} bytes) through {} without the 'resize' \
             permission",
            node.name(),
            end,
            node.len(),
            edge.describe_use()
        ),
    ))
}

/// Bookkeeping after any request that may have changed data in `[offset, end)`.
pub(crate) fn finish_write(node: &Rc<Node>, offset: u64, end: u64) {
    node.write_gen.set(node.write_gen.get() + 1);
    stats::wrote_up_to(node, end);
    let threshold = node.write_threshold.get();
    if threshold != 0 && end > threshold {
        node.write_threshold.set(0);
        node.ctx().emit(
            "BLOCK_WRITE_THRESHOLD",
            json!({"node-name": node.name(), "amount-exceeded": end - threshold.max(offset),
                   "write-threshold": threshold}),
        );
    }
}

pub(super) async fn write(
    node: &Rc<Node>,
    edge: &Edge,
    offset: u64,
    buf: IoBuf,
    flags: ReqFlags,
) -> BufResult {
    let len = buf.len() as u64;
    if let Err(e) = check_range(offset, len)
        .and_then(|()| check_write_perm(node, edge, flags))
        .and_then(|()| check_grow_perm(node, edge, offset + len))
    {
        return (buf, Err(e));
    }
    if flags.contains(ReqFlags::WRITE_COMPRESSED)
        && !node
            .driver()
            .caps()
            .write_flags
            .contains(ReqFlags::WRITE_COMPRESSED)
    {
        let msg = format!(
            "Node '{}' ({}) does not support compressed writes",
            node.name(),
            node.driver_name()
        );
        return (buf, Err(Error::io_msg(Errno::ENOTSUP, msg)));
    }
    let detect = node.options().detect_zeroes;
    if detect != DetectZeroes::Off && !flags.contains(ReqFlags::WRITE_COMPRESSED) && buf.is_zero() {
        let mut zflags = flags & (ReqFlags::FUA | ReqFlags::WRITE_UNCHANGED);
        if detect == DetectZeroes::Unmap {
            zflags |= ReqFlags::MAY_UNMAP;
        }
        let r = zero::write_zeroes(node, edge, offset, len, zflags).await;
        return (buf, r);
    }
    let _in_flight = node.enter();
    let start = node.ctx().env().now_ns();
    let align = node.limits().request_align as u64;
    let serialising = flags.contains(ReqFlags::SERIALISING);
    let (buf, result) = if is_aligned(offset, align) && is_aligned(len, align) {
        let tracked = node.tracked.track(offset, len, serialising, align);
        tracked.wait_conflicts().await;
        aligned_write(node, offset, buf, flags).await
    } else {
        let tracked = node.tracked.track(offset, len, true, align);
        if !crate::util::planted::on(crate::util::planted::Bug::RmwUnserialised) {
            tracked.wait_conflicts().await;
        }
        rmw_write(node, offset, buf, flags).await
    };
    finish_write(node, offset, offset + len);
    stats::record(node, Op::Write, len, result.is_ok(), start);
    (buf, result)
}

/// Read-modify-write: pad the request to the node's alignment with the bytes already there.
/// The caller holds a serialising tracked request over the padded span.
async fn rmw_write(node: &Rc<Node>, offset: u64, buf: IoBuf, flags: ReqFlags) -> BufResult {
    let len = buf.len() as u64;
    let align = node.limits().request_align as u64;
    let span_start = align_down(offset, align);
    let span_end = align_up(offset + len, align);
    let mut bounce = IoBuf::with_align((span_end - span_start) as usize, mem_align(node));
    let head_unaligned = !is_aligned(offset, align);
    let tail_unaligned = !is_aligned(offset + len, align);
    if head_unaligned {
        raise(node, DebugEvent::PwritevRmwHead).await;
        let (head, r) = aligned_read(
            node,
            span_start,
            IoBuf::with_align(align as usize, mem_align(node)),
            ReqFlags::NONE,
        )
        .await;
        if let Err(e) = r {
            return (buf, Err(e));
        }
        bounce.as_mut_slice()[..align as usize].copy_from_slice(head.as_slice());
        raise(node, DebugEvent::PwritevRmwAfterHead).await;
    }
    let tail_start = span_end - align;
    if tail_unaligned && !(head_unaligned && tail_start == span_start) {
        raise(node, DebugEvent::PwritevRmwTail).await;
        let (tail, r) = aligned_read(
            node,
            tail_start,
            IoBuf::with_align(align as usize, mem_align(node)),
            ReqFlags::NONE,
        )
        .await;
        if let Err(e) = r {
            return (buf, Err(e));
        }
        let at = (tail_start - span_start) as usize;
        bounce.as_mut_slice()[at..at + align as usize].copy_from_slice(tail.as_slice());
        raise(node, DebugEvent::PwritevRmwAfterTail).await;
    }
    let at = (offset - span_start) as usize;
    bounce.as_mut_slice()[at..at + len as usize].copy_from_slice(buf.as_slice());
    let (_, r) = aligned_write(node, span_start, bounce, flags).await;
    (buf, r)
}

/// Write an aligned range the caller has tracked (and waited for).
pub(crate) async fn aligned_write(
    node: &Rc<Node>,
    offset: u64,
    buf: IoBuf,
    flags: ReqFlags,
) -> BufResult {
    let len = buf.len() as u64;
    if let Err(e) = run_before_write(node, offset, len).await {
        return (buf, Err(e));
    }
    raise(node, DebugEvent::Pwritev).await;
    let supported = node.driver().caps().write_flags;
    let driver_flags = flags & supported;
    let emulate_fua = flags.contains(ReqFlags::FUA) && !supported.contains(ReqFlags::FUA);
    let chunk = max_chunk(node);
    let needs_bounce = buf.align() < node.limits().min_mem_align as usize;
    let (buf, mut result) = if len <= chunk && !needs_bounce {
        node.driver().write(offset, buf, driver_flags).await
    } else {
        let mut done = 0u64;
        let mut result = Ok(());
        while done < len && result.is_ok() {
            let n = chunk.min(len - done);
            let piece = IoBuf::with_align(n as usize, mem_align(node));
            let mut piece = piece;
            piece
                .as_mut_slice()
                .copy_from_slice(&buf.as_slice()[done as usize..(done + n) as usize]);
            let (_, r) = node
                .driver()
                .write(offset + done, piece, driver_flags)
                .await;
            result = r;
            done += n;
        }
        (buf, result)
    };
    if result.is_ok() && emulate_fua {
        // The data is written: count it before flushing, or the flush would find nothing new.
        node.write_gen.set(node.write_gen.get() + 1);
        result = flush::flush_node(node).await;
    }
    raise(node, DebugEvent::PwritevDone).await;
    (buf, result)
}

/// Run the before-write hooks (copy-before-write, notifiers) after overlap waits.
pub(crate) async fn run_before_write(node: &Rc<Node>, offset: u64, len: u64) -> Result<()> {
    if node.before_write.borrow().is_empty() {
        return Ok(());
    }
    let hooks = node.before_write.borrow().clone();
    for hook in hooks {
        hook.before_write(offset, len).await?;
    }
    Ok(())
}

pub(super) async fn truncate(
    node: &Rc<Node>,
    edge: &Edge,
    len: u64,
    exact: bool,
    prealloc: Prealloc,
) -> Result<()> {
    check_range(len, 0)?;
    if !edge.perm().contains(Perms::RESIZE) {
        return Err(Error::io_msg(
            Errno::EPERM,
            format!(
                "Resize of node '{}' through {} without the 'resize' permission",
                node.name(),
                edge.describe_use()
            ),
        ));
    }
    let _in_flight = node.enter();
    let old = node.len();
    if len < old && prealloc != Prealloc::Off {
        return Err(Error::generic(
            "Preallocation can only be used when growing an image",
        ));
    }
    // Nothing may read or write the tail that changes while the size changes.
    let from = old.min(len);
    let tracked = node.tracked.track(from, read_span(from), true, 1);
    tracked.wait_conflicts().await;
    let r = node.driver().truncate(len, exact, prealloc).await;
    finish_write(node, from, from);
    r
}

fn read_span(from: u64) -> u64 {
    super::read::MAX_REQUEST_END - from
}
