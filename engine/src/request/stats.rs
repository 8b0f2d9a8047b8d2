//! Accounting helpers: one call per finished request.

use std::rc::Rc;

use crate::graph::{Node, NodeStats, OpStats};

/// Which counter a request goes to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Read,
    Write,
    Zero,
    Discard,
    Flush,
}

fn counter(stats: &mut NodeStats, op: Op) -> &mut OpStats {
    match op {
        Op::Read => &mut stats.read,
        Op::Write => &mut stats.write,
        Op::Zero => &mut stats.zero,
        Op::Discard => &mut stats.discard,
        Op::Flush => &mut stats.flush,
    }
}

/// Record a finished request that started at `start_ns`.
pub(crate) fn record(node: &Rc<Node>, op: Op, bytes: u64, ok: bool, start_ns: u64) {
    let elapsed = node.ctx().env().now_ns().saturating_sub(start_ns);
    let mut stats = node.io.stats.borrow_mut();
    let c = counter(&mut stats, op);
    if !ok {
        c.failed += 1;
        return;
    }
    c.ops += 1;
    c.bytes += bytes;
    c.total_ns += elapsed;
    match op {
        Op::Read => stats.read_latency.saturating_record(elapsed.max(1)),
        Op::Write | Op::Zero => stats.write_latency.saturating_record(elapsed.max(1)),
        Op::Discard | Op::Flush => {}
    }
}

/// Remember the highest offset written.
pub(crate) fn wrote_up_to(node: &Node, end: u64) {
    let mut stats = node.io.stats.borrow_mut();
    stats.wr_highest_offset = stats.wr_highest_offset.max(end);
}
