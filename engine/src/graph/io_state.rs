//! The request path's per-node state, as one sub-state of [`Node`](super::Node): in-flight
//! count, tracked requests, write and flush generations, the write threshold, before-write hooks
//! and statistics.
//!
//! Only `request/` reads and writes these fields (named `request::IoState` there); the graph
//! stores the state and reads the in-flight count for drain. The type lives here, not in
//! `request/`, because the graph may not import the layer above it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::env::LocalBoxFuture;
use crate::error::Result;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::util::{Notify, TrackedRanges};

/// Something that must run before a write reaches the node, after it has waited for
/// overlapping serialising requests (copy-before-write, write notifiers). It may fail the write.
pub trait BeforeWrite {
    /// Called with the range about to be written.
    fn before_write(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>>;
}

/// The request path's state of one node.
#[derive(Default)]
pub struct IoState {
    /// Requests in flight (counted by `Node::enter`'s guard; drain waits for 0).
    pub(crate) in_flight: Cell<u32>,
    /// Bumped when a write completes; a flush that finds `flushed_gen == write_gen` is free.
    pub(crate) write_gen: Cell<u64>,
    /// `write_gen` as of the last successful flush.
    pub(crate) flushed_gen: Cell<u64>,
    /// A flush is running; others queue on `flush_queue`.
    pub(crate) flush_active: Cell<bool>,
    /// Flushes waiting for the running one.
    pub(crate) flush_queue: Notify,
    /// Tracked (and serialising) requests.
    pub(crate) tracked: TrackedRanges,
    /// Write threshold in bytes (0 = off): a write ending past it raises an event once.
    pub(crate) write_threshold: Cell<u64>,
    /// Hooks run before a write reaches the driver.
    pub(crate) before_write: RefCell<Vec<Rc<dyn BeforeWrite>>>,
    /// Accounting.
    pub(crate) stats: RefCell<NodeStats>,
}

/// Per-operation counters of one node.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    /// Completed operations.
    pub ops: u64,
    /// Bytes transferred (or covered, for zeroes/discard).
    pub bytes: u64,
    /// Failed operations.
    pub failed: u64,
    /// Sum of latencies in ns.
    pub total_ns: u64,
}

/// Accounting of one node: counters per operation and latency histograms.
pub struct NodeStats {
    /// Reads.
    pub read: OpStats,
    /// Writes.
    pub write: OpStats,
    /// Write-zeroes.
    pub zero: OpStats,
    /// Discards.
    pub discard: OpStats,
    /// Flushes (including de-duplicated ones).
    pub flush: OpStats,
    /// Highest byte offset written (QEMU's `wr_highest_offset`).
    pub wr_highest_offset: u64,
    /// Read latency in ns.
    pub read_latency: Histogram<u64>,
    /// Write latency in ns.
    pub write_latency: Histogram<u64>,
}

impl Default for NodeStats {
    fn default() -> NodeStats {
        let hist =
            || Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("histogram bounds");
        NodeStats {
            read: OpStats::default(),
            write: OpStats::default(),
            zero: OpStats::default(),
            discard: OpStats::default(),
            flush: OpStats::default(),
            wr_highest_offset: 0,
            read_latency: hist(),
            write_latency: hist(),
        }
    }
}

impl NodeStats {
    /// QMP `query-blockstats`-like JSON.
    pub fn to_json(&self) -> Value {
        let pct = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        json!({
            "rd_operations": self.read.ops, "rd_bytes": self.read.bytes,
            "failed_rd_operations": self.read.failed, "rd_total_time_ns": self.read.total_ns,
            "wr_operations": self.write.ops, "wr_bytes": self.write.bytes,
            "failed_wr_operations": self.write.failed, "wr_total_time_ns": self.write.total_ns,
            "zone_append_operations": 0,
            "zero_operations": self.zero.ops, "zero_bytes": self.zero.bytes,
            "unmap_operations": self.discard.ops, "unmap_bytes": self.discard.bytes,
            "failed_unmap_operations": self.discard.failed,
            "flush_operations": self.flush.ops, "failed_flush_operations": self.flush.failed,
            "flush_total_time_ns": self.flush.total_ns,
            "wr_highest_offset": self.wr_highest_offset,
            "rd_latency_p50_ns": pct(&self.read_latency, 0.5),
            "rd_latency_p99_ns": pct(&self.read_latency, 0.99),
            "wr_latency_p50_ns": pct(&self.write_latency, 0.5),
            "wr_latency_p99_ns": pct(&self.write_latency, 0.99),
        })
    }
}
