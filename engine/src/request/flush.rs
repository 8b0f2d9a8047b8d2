//! Flush: serialised per node, free when nothing was written since the last one (write
//! generations), stopped at `cache.no-flush` nodes, then recursing into every child this node
//! writes to.

use std::rc::Rc;

use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::event::DebugEvent;
use crate::graph::Node;
use crate::types::Perms;

use super::debug::raise;
use super::stats::{self, Op};

pub(super) async fn flush(node: &Rc<Node>) -> Result<()> {
    flush_node(node).await
}

/// Resets the node's "flush in progress" mark even if the flushing future is dropped.
struct ActiveFlush<'a>(&'a Node);

impl Drop for ActiveFlush<'_> {
    fn drop(&mut self) {
        self.0.io.flush_active.set(false);
        self.0.io.flush_queue.notify_all();
    }
}

/// Flush `node` and, below it, every child it may have written to.
pub(crate) fn flush_node(node: &Rc<Node>) -> LocalBoxFuture<'static, Result<()>> {
    let node = node.clone();
    Box::pin(async move {
        let _in_flight = node.enter();
        let start = node.ctx().env().now_ns();
        while node.io.flush_active.get() {
            node.io.flush_queue.wait().await;
        }
        node.io.flush_active.set(true);
        let active = ActiveFlush(&node);
        // Writes completing from here on are not covered by this flush.
        let generation = node.io.write_gen.get();
        let mut result = Ok(());
        if !node.options().no_flush && node.io.flushed_gen.get() != generation {
            raise(&node, DebugEvent::FlushToOs).await;
            raise(&node, DebugEvent::FlushToDisk).await;
            result = node.driver().flush().await;
        }
        if result.is_ok() {
            for edge in node.children() {
                if edge
                    .perm()
                    .intersects(Perms::WRITE | Perms::WRITE_UNCHANGED)
                {
                    result = flush_node(&edge.child_node()).await;
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            node.io.flushed_gen.set(generation);
        }
        drop(active);
        stats::record(&node, Op::Flush, 0, result.is_ok(), start);
        result
    })
}
