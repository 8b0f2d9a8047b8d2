//! Writes: detect-zeroes (handing zero buffers to `zero`), compressed-write refusal and
//! read-modify-write for unaligned requests (serialising). The checks, the aligned write to the
//! driver (before-write hooks, `max_transfer` splitting, FUA emulation) and the bookkeeping after
//! it are shared with `zero` and `cor` in `common`. Also truncate.

use std::rc::Rc;

use crate::driver::Prealloc;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Edge, Node};
use crate::io::{BufResult, IoBuf, ReqFlags};
use crate::types::{DetectZeroes, Perms};
use crate::util::{align_down, align_up, is_aligned};

use super::common::{aligned_write, check_grow_perm, check_write_perm, finish_write};
use super::debug::raise;
use super::read::{aligned_read, check_range, mem_align};
use super::stats::{self, Op};
use super::zero;

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
        let tracked = node.io.tracked.track(offset, len, serialising, align);
        tracked.wait_conflicts().await;
        aligned_write(node, offset, buf, flags).await
    } else {
        let tracked = node.io.tracked.track(offset, len, true, align);
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
    let tracked = node.io.tracked.track(from, read_span(from), true, 1);
    tracked.wait_conflicts().await;
    let r = node.driver().truncate(len, exact, prealloc).await;
    finish_write(node, from, from);
    r
}

fn read_span(from: u64) -> u64 {
    super::read::MAX_REQUEST_END - from
}
