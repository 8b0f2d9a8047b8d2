//! Write-zeroes and discard: alignment, splitting at the driver's limits, the fallback to
//! writing zero buffers, MAY_UNMAP only where `discard=unmap` allows it.

use std::rc::Rc;

use crate::error::{Errno, Result};
use crate::event::DebugEvent;
use crate::graph::{Edge, Node};
use crate::io::{IoBuf, ReqFlags};
use crate::util::{align_down, align_up, is_aligned};

use super::common::{
    aligned_write, check_grow_perm, check_write_perm, finish_write, flush_for_fua, mark_bitmaps,
    run_before_write,
};
use super::debug::raise;
use super::read::{aligned_read, check_range, max_chunk, mem_align};
use super::stats::{self, Op};

/// Largest zero buffer written at once by the fallback.
const ZERO_BUF_MAX: u64 = 1 << 20;

pub(super) async fn write_zeroes(
    node: &Rc<Node>,
    edge: &Edge,
    offset: u64,
    len: u64,
    mut flags: ReqFlags,
) -> Result<()> {
    check_range(offset, len)?;
    check_write_perm(node, edge, flags)?;
    check_grow_perm(node, edge, offset + len)?;
    if !node.options().discard_unmap {
        flags = flags.without(ReqFlags::MAY_UNMAP);
    }
    let _in_flight = node.enter();
    let start = node.ctx().env().now_ns();
    let align = node.limits().request_align as u64;
    let aligned = is_aligned(offset, align) && is_aligned(len, align);
    let serialising = !aligned || flags.contains(ReqFlags::SERIALISING);
    let tracked = node.io.tracked.track(offset, len, serialising, align);
    tracked.wait_conflicts().await;
    let result = zero_tracked(node, offset, len, flags).await;
    drop(tracked);
    if crate::util::planted::on(crate::util::planted::Bug::BitmapMissesZeroes) {
        finish_write(node, offset, offset);
    } else {
        finish_write(node, offset, offset + len);
    }
    stats::record(node, Op::Zero, len, result.is_ok(), start);
    result
}

/// Zero a range the caller has tracked: unaligned edges by read-modify-write, the aligned middle
/// by the driver.
async fn zero_tracked(node: &Rc<Node>, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let align = node.limits().request_align as u64;
    let end = offset + len;
    let head_block = align_down(offset, align);
    let tail_block = align_down(end - 1, align);
    let whole_blocks = is_aligned(offset, align) && is_aligned(end, align);
    if head_block == tail_block && !whole_blocks {
        return zero_partial_block(node, head_block, offset, end, flags).await;
    }
    let mut mid_start = offset;
    let mut mid_end = end;
    if !is_aligned(offset, align) {
        zero_partial_block(node, head_block, offset, head_block + align, flags).await?;
        mid_start = head_block + align;
    }
    if !is_aligned(end, align) {
        zero_partial_block(node, tail_block, tail_block, end, flags).await?;
        mid_end = tail_block;
    }
    if mid_start < mid_end {
        run_before_write(node, mid_start, mid_end - mid_start).await?;
        raise(node, DebugEvent::PwritevZero).await;
        zero_aligned(node, mid_start, mid_end - mid_start, flags).await?;
    }
    Ok(())
}

/// Zero `[from, to)` inside the aligned block starting at `block` by rewriting the block.
async fn zero_partial_block(
    node: &Rc<Node>,
    block: u64,
    from: u64,
    to: u64,
    flags: ReqFlags,
) -> Result<()> {
    let align = node.limits().request_align as u64;
    let (mut data, r) = aligned_read(
        node,
        block,
        IoBuf::with_align(align as usize, mem_align(node)),
        ReqFlags::NONE,
    )
    .await;
    r?;
    data.as_mut_slice()[(from - block) as usize..(to - block) as usize].fill(0);
    let (_, r) = aligned_write(node, block, data, flags & ReqFlags::FUA).await;
    r
}

/// Zero an aligned range: the driver's write-zeroes in pieces it accepts, zero buffers where it
/// cannot (unless NO_FALLBACK).
async fn zero_aligned(node: &Rc<Node>, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
    let limits = node.limits();
    let align = limits.request_align as u64;
    let zalign = (limits.write_zeroes_align as u64).max(align);
    let max = match limits.max_write_zeroes {
        0 => align_down(i32::MAX as u64, zalign),
        m => align_down(m as u64, zalign).max(zalign),
    };
    let driver_flags = flags & node.driver().caps().zero_flags;
    let emulate_fua = flags.contains(ReqFlags::FUA) && !driver_flags.contains(ReqFlags::FUA);
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        // Pieces not aligned to the zero alignment go as buffers; the rest to the driver.
        let next_aligned = align_up(pos, zalign).min(end);
        let (n, use_driver) = if pos != next_aligned && !is_aligned(pos, zalign) {
            (next_aligned - pos, false)
        } else {
            let n = align_down(end - pos, zalign).min(max);
            if n == 0 {
                (end - pos, false)
            } else {
                (n, true)
            }
        };
        let mut done = false;
        if use_driver {
            match node.driver().write_zeroes(pos, n, driver_flags).await {
                Ok(()) => done = true,
                Err(e)
                    if e.errno() == Some(Errno::ENOTSUP)
                        && !flags.contains(ReqFlags::NO_FALLBACK) => {}
                Err(e) => return Err(e),
            }
        } else if flags.contains(ReqFlags::NO_FALLBACK) {
            return Err(crate::error::Error::io(Errno::ENOTSUP));
        }
        if !done {
            write_zero_buffers(node, pos, n).await?;
        }
        pos += n;
    }
    if emulate_fua {
        flush_for_fua(node).await?;
    }
    Ok(())
}

async fn write_zero_buffers(node: &Rc<Node>, offset: u64, len: u64) -> Result<()> {
    let piece_max = max_chunk(node)
        .min(ZERO_BUF_MAX)
        .max(node.limits().request_align as u64);
    let mut pos = offset;
    while pos < offset + len {
        let n = piece_max.min(offset + len - pos);
        let buf = IoBuf::with_align(n as usize, mem_align(node));
        let (_, r) = node.driver().write(pos, buf, ReqFlags::NONE).await;
        r?;
        pos += n;
    }
    Ok(())
}

pub(super) async fn discard(node: &Rc<Node>, edge: &Edge, offset: u64, len: u64) -> Result<()> {
    check_range(offset, len)?;
    check_write_perm(node, edge, ReqFlags::NONE)?;
    if !node.options().discard_unmap {
        return Ok(());
    }
    let _in_flight = node.enter();
    let start = node.ctx().env().now_ns();
    let limits = node.limits();
    let dalign = (limits.discard_align as u64).max(limits.request_align as u64);
    // Discard is advisory: only whole aligned blocks inside the range are passed down.
    let from = align_up(offset, dalign);
    let to = align_down(offset + len, dalign);
    let mut result = Ok(());
    if from < to {
        let tracked = node.io.tracked.track(from, to - from, false, 1);
        tracked.wait_conflicts().await;
        result = run_before_write(node, from, to - from).await;
        let max = match limits.max_discard {
            0 => align_down(i32::MAX as u64, dalign),
            m => align_down(m as u64, dalign).max(dalign),
        };
        let mut pos = from;
        while pos < to && result.is_ok() {
            let n = max.min(to - pos);
            result = match node.driver().discard(pos, n).await {
                Err(e) if e.errno() == Some(Errno::ENOTSUP) => Ok(()),
                r => r,
            };
            pos += n;
        }
        drop(tracked);
        finish_write(node, from, to);
    }
    // The whole range may read differently now (QEMU marks it even where nothing aligned
    // reached the driver).
    mark_bitmaps(node, offset, len);
    stats::record(node, Op::Discard, len, result.is_ok(), start);
    result
}
