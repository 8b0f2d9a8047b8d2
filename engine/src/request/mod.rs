//! THE generic request path. Every read, write, write-zeroes, discard, flush, block-status and
//! truncate of every node goes through here, once, whatever the driver:
//!
//! * bounds and permission checks (a writer must hold WRITE on its edge);
//! * in-flight counting for drain (also when a request's future is dropped);
//! * tracked requests: overlapping serialising requests wait for each other;
//! * request alignment with read-modify-write (serialising) for unaligned writes;
//! * splitting at `max_transfer`, zero-filling reads past the end;
//! * detect-zeroes, before-write hooks, the write threshold and its event;
//! * write generations so that a flush with nothing new written is free; FUA emulated by a
//!   flush where the driver lacks it; `cache.no-flush`;
//! * debug events at blkdebug's points (`pwritev`, `pwritev_rmw_head`, `flush_to_disk`, ...);
//! * per-node accounting (ops, bytes, failures, latency histograms).
//!
//! Drivers implement only their own layer (`driver.rs`) and reach their children through the
//! [`Child`] methods defined here. Must not import `drivers`, `job`, `qmp` or `engine`.

mod common;
mod cor;
mod debug;
pub mod filter;
mod flush;
mod read;
mod stats;
mod status;
mod write;
mod zero;

use crate::driver::Prealloc;
use crate::error::{Op, Result};
use crate::event::DebugEvent;
use crate::graph::Child;
use crate::io::{BlockStatus, BufResult, IoBuf, ReqFlags};

pub use crate::graph::IoState;
pub use status::ChainStatus;

/// Rewrite the backing file name and format recorded in `node`'s image header (jobs, after
/// they changed the chain; `None` removes the backing reference). The graph is not changed.
pub async fn change_backing_file(
    node: &std::rc::Rc<crate::graph::Node>,
    name: Option<&str>,
    format: Option<&str>,
) -> Result<()> {
    cor::change_backing_file(node, name, format).await
}

/// Make every completed write to `node` durable (an external snapshot flushes the node it
/// puts an overlay on).
pub async fn flush_node(node: &std::rc::Rc<crate::graph::Node>) -> Result<()> {
    flush::flush(node).await
}

/// Deallocate everything in `node`'s image so it reads from its backing file (`qemu-img
/// commit` without `-d`).
pub async fn make_empty(node: &std::rc::Rc<crate::graph::Node>) -> Result<()> {
    cor::make_empty(node).await
}

/// Raise a debug event at `node` (blkdebug rules, simulator breakpoints and traces act on it):
/// for points outside a request, such as a job's iteration or cutover.
pub async fn raise_debug_event(node: &std::rc::Rc<crate::graph::Node>, event: DebugEvent) {
    debug::raise(node, event).await
}

impl Child {
    /// Read `buf.len()` bytes at `offset`. Bytes past the node's end read as zeroes.
    pub async fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> BufResult {
        let node = self.node();
        let (buf, r) = read::read(&node, offset, buf, flags).await;
        let len = buf.len() as u64;
        (buf, locate(r, &node, Op::Read, offset, len))
    }

    /// Write `buf` at `offset`. Needs WRITE (or WRITE_UNCHANGED with that flag) on this edge.
    pub async fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> BufResult {
        let node = self.node();
        let len = buf.len() as u64;
        let (buf, r) = write::write(&node, self.edge(), offset, buf, flags).await;
        (buf, locate(r, &node, Op::Write, offset, len))
    }

    /// Make `[offset, offset+len)` read as zeroes (MAY_UNMAP allows deallocation when the node
    /// has `discard=unmap`).
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
        let node = self.node();
        let r = zero::write_zeroes(&node, self.edge(), offset, len, flags).await;
        locate(r, &node, Op::WriteZeroes, offset, len)
    }

    /// Discard a range (a no-op unless the node has `discard=unmap`).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let node = self.node();
        let r = zero::discard(&node, self.edge(), offset, len).await;
        locate(r, &node, Op::Discard, offset, len)
    }

    /// Make every completed write below this edge durable.
    pub async fn flush(&self) -> Result<()> {
        let node = self.node();
        let r = flush::flush(&node).await;
        locate(r, &node, Op::Flush, 0, 0)
    }

    /// How the child provides the range at `offset` (at most `len` bytes).
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        status::block_status(&self.node(), offset, len).await
    }

    /// Status through the backing chain: which layer provides the range, down to (not
    /// including) `base` if given.
    pub async fn chain_status(
        &self,
        offset: u64,
        len: u64,
        base: Option<&crate::graph::Node>,
    ) -> Result<ChainStatus> {
        status::chain_status(&self.node(), offset, len, base).await
    }

    /// [`Child::chain_status`] for callers that look for zeroes (map, convert, compare): data
    /// preallocated over holes of the image's file reads as `Mapping::DataZero`.
    pub async fn chain_status_want_zero(
        &self,
        offset: u64,
        len: u64,
        base: Option<&crate::graph::Node>,
    ) -> Result<ChainStatus> {
        status::chain_status_want_zero(&self.node(), offset, len, base).await
    }

    /// Copy-on-read: copy into the child whatever of the range it does not allocate itself,
    /// from its backing chain, as one serialising request (needs WRITE_UNCHANGED). Returns the
    /// bytes copied.
    pub async fn populate(&self, offset: u64, len: u64) -> Result<u64> {
        cor::populate(&self.node(), self.edge(), offset, len).await
    }

    /// Resize the child. Needs RESIZE on this edge.
    pub async fn truncate(&self, len: u64, exact: bool, prealloc: Prealloc) -> Result<()> {
        let node = self.node();
        let r = write::truncate(&node, self.edge(), len, exact, prealloc).await;
        locate(r, &node, Op::Truncate, len, 0)
    }

    /// The child's length in bytes.
    pub fn len(&self) -> u64 {
        self.node().len()
    }

    /// True when the child has length 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raise a debug event on the child node (blkdebug rules and breakpoints act on it).
    pub async fn debug_event(&self, event: DebugEvent) {
        debug::raise(&self.node(), event).await
    }
}

/// Record on a failed request's error which node, operation and range failed (the node
/// nearest the failure keeps its record as the error travels up the graph).
fn locate<T>(r: Result<T>, node: &crate::graph::Node, op: Op, offset: u64, len: u64) -> Result<T> {
    r.map_err(|e| e.locate(node.name(), op, offset, len))
}
