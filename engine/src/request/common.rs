//! What every request that changes data shares, whichever verb it came from (write,
//! write-zeroes, copy-on-read): the permission and growth checks, the before-write hooks, the
//! write of an aligned range to the driver (splitting, bounce buffers, FUA emulation) and the
//! bookkeeping after it (write generation, accounting high-water mark, write threshold).
//!
//! `write` and `zero` both build on this module; neither imports the other's internals.

use std::rc::Rc;

use serde_json::json;

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Edge, Node};
use crate::io::{BufResult, IoBuf, ReqFlags};
use crate::types::Perms;

use super::debug::raise;
use super::flush;
use super::read::{max_chunk, mem_align};
use super::stats;

/// A write needs WRITE on its edge, or WRITE_UNCHANGED for a write that changes nothing visible.
pub(super) fn check_write_perm(node: &Node, edge: &Edge, flags: ReqFlags) -> Result<()> {
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
pub(super) fn check_grow_perm(node: &Node, edge: &Edge, end: u64) -> Result<()> {
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

/// Bookkeeping after any request that may have changed data in `[offset, end)`, before it
/// completes (whether it succeeded or not, as QEMU: a failed write may have changed data).
pub(super) fn finish_write(node: &Rc<Node>, offset: u64, end: u64) {
    node.io.write_gen.set(node.io.write_gen.get() + 1);
    mark_bitmaps(node, offset, end - offset);
    stats::wrote_up_to(node, end);
    let threshold = node.io.write_threshold.get();
    if threshold != 0 && end > threshold {
        node.io.write_threshold.set(0);
        node.ctx().emit(
            "BLOCK_WRITE_THRESHOLD",
            json!({"node-name": node.name(), "amount-exceeded": end - threshold.max(offset),
                   "write-threshold": threshold}),
        );
    }
}

/// Mark `[offset, offset + len)` in the node's recording dirty bitmaps; they first follow the
/// node's length (a write that grew it, a truncate).
pub(super) fn mark_bitmaps(node: &Node, offset: u64, len: u64) {
    if !node.bitmaps().is_empty() {
        node.bitmaps().mark(offset, len, node.len());
    }
}

/// Write an aligned range the caller has tracked (and waited for).
pub(super) async fn aligned_write(
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
        result = flush_for_fua(node).await;
    }
    raise(node, DebugEvent::PwritevDone).await;
    (buf, result)
}

/// FUA emulated for a driver that does not honour it: once the data is written, flush the node.
/// The write is counted first, or the flush would find nothing new and skip the driver.
pub(super) async fn flush_for_fua(node: &Rc<Node>) -> Result<()> {
    node.io.write_gen.set(node.io.write_gen.get() + 1);
    flush::flush_node(node).await
}

/// Run the before-write hooks (copy-before-write, notifiers) after overlap waits.
pub(super) async fn run_before_write(node: &Rc<Node>, offset: u64, len: u64) -> Result<()> {
    if node.io.before_write.borrow().is_empty() {
        return Ok(());
    }
    let hooks = node.io.before_write.borrow().clone();
    for hook in hooks {
        hook.before_write(offset, len).await?;
    }
    Ok(())
}
