//! Reads: alignment padding, zero-fill past the end, `max_transfer` splitting.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::io::{BufResult, IoBuf, ReqFlags};
use crate::util::{align_down, align_up, is_aligned};

use super::stats::{self, Op};

/// Largest offset+length a request may reach (QEMU's BDRV_MAX_LENGTH is of this order).
pub(crate) const MAX_REQUEST_END: u64 = i64::MAX as u64 / 2;

/// Refuse ranges that overflow.
pub(crate) fn check_range(offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_REQUEST_END => Ok(()),
        _ => Err(Error::invalid(format!(
            "Request out of range: offset {offset}, length {len}"
        ))),
    }
}

/// The transfer limit of `node` as a usable chunk size (a multiple of its alignment).
pub(crate) fn max_chunk(node: &Node) -> u64 {
    let limits = node.limits();
    let align = limits.request_align as u64;
    match limits.max_transfer {
        0 => u64::MAX,
        m => align_down(m as u64, align).max(align),
    }
}

pub(super) async fn read(
    node: &Rc<Node>,
    offset: u64,
    mut buf: IoBuf,
    flags: ReqFlags,
) -> BufResult {
    let len = buf.len() as u64;
    if let Err(e) = check_range(offset, len) {
        return (buf, Err(e));
    }
    let _in_flight = node.enter();
    let start = node.ctx().env().now_ns();
    let align = node.limits().request_align as u64;
    let result = if is_aligned(offset, align) && is_aligned(len, align) {
        let tracked = node.io.tracked.track(offset, len, false, 1);
        if !flags.contains(ReqFlags::NO_SERIALISING) {
            tracked.wait_conflicts().await;
        }
        let (b, r) = aligned_read(node, offset, buf, flags).await;
        buf = b;
        r
    } else {
        // Read the aligned span into a bounce buffer and copy out the asked part.
        let span_start = align_down(offset, align);
        let span_end = align_up(offset + len, align);
        let tracked = node
            .io
            .tracked
            .track(span_start, span_end - span_start, false, 1);
        if !flags.contains(ReqFlags::NO_SERIALISING) {
            tracked.wait_conflicts().await;
        }
        let bounce = IoBuf::with_align((span_end - span_start) as usize, mem_align(node));
        let (bounce, r) = aligned_read(node, span_start, bounce, flags).await;
        if r.is_ok() {
            let skip = (offset - span_start) as usize;
            buf.as_mut_slice()
                .copy_from_slice(&bounce.as_slice()[skip..skip + len as usize]);
        }
        r
    };
    stats::record(node, Op::Read, len, result.is_ok(), start);
    (buf, result)
}

pub(crate) fn mem_align(node: &Node) -> usize {
    (node.limits().min_mem_align as usize).max(crate::io::DEFAULT_BUF_ALIGN)
}

/// Read an aligned range that the caller has tracked: zero past the end, split at
/// `max_transfer`, bounce if the buffer is not aligned as the driver needs.
pub(crate) async fn aligned_read(
    node: &Rc<Node>,
    offset: u64,
    mut buf: IoBuf,
    flags: ReqFlags,
) -> BufResult {
    let len = buf.len() as u64;
    let align = node.limits().request_align as u64;
    let size = node.len();
    if offset >= size {
        buf.as_mut_slice().fill(0);
        return (buf, Ok(()));
    }
    // Past the end reads as zeroes; the driver sees only the aligned part up to the end.
    let readable = align_up(len.min(size - offset), align).min(len);
    let chunk = max_chunk(node);
    let needs_bounce = buf.align() < node.limits().min_mem_align as usize;
    let driver_flags = flags & (ReqFlags::FUA | ReqFlags::COPY_ON_READ);
    super::debug::raise(node, crate::event::DebugEvent::Preadv).await;
    if readable == len && len <= chunk && !needs_bounce {
        return node.driver().read(offset, buf, driver_flags).await;
    }
    let mut done = 0u64;
    while done < readable {
        let n = chunk.min(readable - done);
        let piece = IoBuf::with_align(n as usize, mem_align(node));
        let (piece, r) = node.driver().read(offset + done, piece, driver_flags).await;
        if let Err(e) = r {
            return (buf, Err(e));
        }
        buf.as_mut_slice()[done as usize..(done + n) as usize].copy_from_slice(piece.as_slice());
        done += n;
    }
    buf.as_mut_slice()[readable as usize..].fill(0);
    (buf, Ok(()))
}
