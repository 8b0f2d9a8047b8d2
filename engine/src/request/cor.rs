//! Copy-on-read population, the backing-file rewrite and emptying an image: the request-path
//! services the stream, commit and rebase jobs (and `blk commit`) build on.
//!
//! `populate` is QEMU's copy-on-read for one range, done as one serialising request: it waits
//! for every overlapping request, then asks the node which parts it does not allocate itself,
//! reads those (through its backing chain) and writes them into the node with WRITE_UNCHANGED.
//! Because the whole step holds the serialising range, a guest write to the same range either
//! finished before (and the part is allocated, so it is skipped) or waits until after (and
//! overwrites the copy): the copy can never hide newer guest data.

use std::rc::Rc;

use crate::driver::FormatOps;
use crate::error::{Errno, Error, Result};
use crate::graph::{Edge, Node};
use crate::io::{IoBuf, ReqFlags};
use crate::util::{align_down, align_up};

use super::common::{aligned_write, check_write_perm, finish_write};
use super::read::{aligned_read, check_range, max_chunk, mem_align};
use super::stats::{self, Op};

/// Copy into `node` whatever of `[offset, offset+len)` it does not allocate itself, from its
/// backing chain. Returns the bytes copied.
pub(super) async fn populate(node: &Rc<Node>, edge: &Edge, offset: u64, len: u64) -> Result<u64> {
    check_range(offset, len)?;
    check_write_perm(node, edge, ReqFlags::WRITE_UNCHANGED)?;
    let size = node.len();
    let end = (offset + len).min(size);
    if offset >= end {
        return Ok(0);
    }
    let _in_flight = node.enter();
    let align = node.limits().request_align as u64;
    let span_start = align_down(offset, align);
    let span_end = align_up(end, align).min(align_up(size, align));
    let tracked = node
        .io
        .tracked
        .track(span_start, span_end - span_start, true, align);
    tracked.wait_conflicts().await;
    let mut copied = 0;
    let mut pos = span_start;
    while pos < span_end.min(size) {
        let st = super::status::block_status(node, pos, span_end.min(size) - pos).await?;
        let n = st.len;
        if !st.mapping.is_allocated() {
            let mut done = 0;
            while done < n {
                let piece = (n - done).min(max_chunk(node)).min(1 << 20);
                let start = node.ctx().env().now_ns();
                let buf = IoBuf::with_align(piece as usize, mem_align(node));
                let (buf, r) = aligned_read(node, pos + done, buf, ReqFlags::NONE).await;
                stats::record(node, Op::Read, piece, r.is_ok(), start);
                r?;
                // blkdebug's cor_write: the copied data is about to be written into the node.
                super::debug::raise(node, crate::event::DebugEvent::CorWrite).await;
                let start = node.ctx().env().now_ns();
                let (_, r) = aligned_write(node, pos + done, buf, ReqFlags::WRITE_UNCHANGED).await;
                finish_write(node, pos + done, pos + done + piece);
                stats::record(node, Op::Write, piece, r.is_ok(), start);
                r?;
                done += piece;
            }
            copied += n;
        }
        pos += n;
    }
    Ok(copied)
}

/// Rewrite the backing file name (and format) in `node`'s image header, counted as a request
/// in flight so a drain waits for it. Read-only nodes refuse.
pub(super) async fn change_backing_file(
    node: &Rc<Node>,
    name: Option<&str>,
    format: Option<&str>,
) -> Result<()> {
    if node.is_read_only() {
        return Err(Error::io_msg(
            Errno::EROFS,
            format!(
                "Cannot change the backing file of read-only node '{}'",
                node.name()
            ),
        ));
    }
    let _in_flight = node.enter();
    // A format with no backing file to record refuses with the bare errno, as QEMU's does.
    let ops = node
        .driver()
        .format_ops()
        .ok_or_else(|| Error::io(Errno::ENOTSUP))?;
    ops.change_backing_file(name, format).await
}

/// Deallocate everything in `node` (it then reads from its backing file), counted in flight.
pub(super) async fn make_empty(node: &Rc<Node>) -> Result<()> {
    if node.is_read_only() {
        return Err(Error::io_msg(
            Errno::EROFS,
            format!("Cannot empty read-only node '{}'", node.name()),
        ));
    }
    let _in_flight = node.enter();
    format_ops(node, "emptying the image")?.make_empty().await
}

/// The node's format verbs, or ENOTSUP naming the driver and what it cannot do.
fn format_ops<'a>(node: &'a Node, what: &str) -> Result<&'a dyn FormatOps> {
    node.driver().format_ops().ok_or_else(|| {
        let name = node.driver().caps().name;
        Error::io_msg(
            Errno::ENOTSUP,
            format!("Driver '{name}' does not support {what}"),
        )
    })
}
