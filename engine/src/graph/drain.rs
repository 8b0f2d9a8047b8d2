//! Drained sections: quiesce counters, parent notification, polling until idle.
//!
//! `drained_begin(node)` raises the node's quiesce counter and, through every parent edge, its
//! parents' (nodes recursively; BlockBackends and jobs are told to stop issuing requests), then
//! waits until neither the node nor anything above it has a request in flight. Sections nest.
//! A subtree drain also covers every node below. Inside a drained section no new request reaches
//! the drained nodes: that is what makes graph edits atomic with respect to I/O.
//!
//! The callbacks only flip counters; they never change the graph.

use std::rc::Rc;

use super::types::{GraphCtx, Node, ParentRef};
use crate::event::DebugEvent;

fn parent_begin(parent: &ParentRef) {
    match parent {
        ParentRef::Node(n) => {
            if let Some(n) = n.upgrade() {
                quiesce_up(&n);
            }
        }
        ParentRef::External(p) => {
            if let Some(p) = p.upgrade() {
                p.drained_begin();
            }
        }
    }
}

fn parent_end(parent: &ParentRef) {
    match parent {
        ParentRef::Node(n) => {
            if let Some(n) = n.upgrade() {
                unquiesce_up(&n);
            }
        }
        ParentRef::External(p) => {
            if let Some(p) = p.upgrade() {
                p.drained_end();
            }
        }
    }
}

/// Raise the quiesce counter of `node` and of everything above it.
fn quiesce_up(node: &Rc<Node>) {
    let depth = node.quiesce.get() + 1;
    node.quiesce.set(depth);
    if depth == 1 {
        node.driver().drain_begin();
    }
    for edge in node.parents() {
        parent_begin(edge.parent());
    }
}

/// Lower the quiesce counter of `node` and of everything above it.
fn unquiesce_up(node: &Rc<Node>) {
    let depth = node
        .quiesce
        .get()
        .checked_sub(1)
        .expect("drained_end without drained_begin");
    node.quiesce.set(depth);
    if depth == 0 {
        node.driver().drain_end();
    }
    for edge in node.parents() {
        parent_end(edge.parent());
    }
}

/// When an edge moves from `old` to `new`, its parent must be quiesced as often as `new` is and
/// no longer for `old`'s sake.
pub(crate) fn transfer_quiesce(parent: &ParentRef, old: &Node, new: &Node) {
    for _ in 0..new.quiesce.get() {
        parent_begin(parent);
    }
    for _ in 0..old.quiesce.get() {
        parent_end(parent);
    }
}

/// A quiesced edge being detached releases its parent; one being attached quiesces it.
pub(crate) fn apply_quiesce(parent: &ParentRef, child: &Node, attach: bool) {
    for _ in 0..child.quiesce.get() {
        if attach {
            parent_begin(parent)
        } else {
            parent_end(parent)
        }
    }
}

/// True while `node` or anything above it has requests in flight or about to be issued.
fn busy_up(node: &Rc<Node>) -> bool {
    if node.in_flight() > 0 {
        return true;
    }
    node.parents().iter().any(|edge| match edge.parent() {
        ParentRef::Node(n) => n.upgrade().is_some_and(|n| busy_up(&n)),
        ParentRef::External(p) => p.upgrade().is_some_and(|p| p.drained_poll()),
    })
}

fn subtree(node: &Rc<Node>, out: &mut Vec<Rc<Node>>) {
    out.push(node.clone());
    for edge in node.children() {
        subtree(&edge.child_node(), out);
    }
}

async fn poll_until(ctx: &GraphCtx, busy: impl Fn() -> bool) {
    while busy() {
        ctx.progress.wait().await;
    }
}

/// A drained section over a fixed set of nodes; ends when dropped (or by [`DrainedSection::end`]).
///
/// Holding the set (instead of recomputing "the subtree" at the end) keeps begin and end
/// balanced even when a graph edit inside the section moved edges around.
#[must_use = "the drained section ends when this is dropped"]
pub struct DrainedSection {
    nodes: Vec<Rc<Node>>,
    /// `drain_begin` was raised (the wait completed), so `drain_end` is raised at the end.
    announced: bool,
}

impl DrainedSection {
    async fn begin(ctx: &GraphCtx, nodes: Vec<Rc<Node>>) -> DrainedSection {
        for n in &nodes {
            quiesce_up(n);
        }
        // The section exists before the wait, so a caller that gives up waiting (a timeout)
        // drops it and the counters are lowered again.
        let mut section = DrainedSection {
            nodes,
            announced: false,
        };
        poll_until(ctx, || section.nodes.iter().any(busy_up)).await;
        for n in &section.nodes {
            ctx.raise_graph_event(n, DebugEvent::DrainBegin);
        }
        section.announced = true;
        section
    }

    /// The nodes this section drains.
    pub fn nodes(&self) -> &[Rc<Node>] {
        &self.nodes
    }

    /// End the section.
    pub fn end(self) {}
}

impl Drop for DrainedSection {
    fn drop(&mut self) {
        for n in self.nodes.iter().rev() {
            if self.announced {
                n.ctx().raise_graph_event(n, DebugEvent::DrainEnd);
            }
            unquiesce_up(n);
        }
    }
}

impl Node {
    /// Begin a drained section on this node and wait until it and its parents are idle.
    pub async fn drained_begin(self: &Rc<Self>) -> DrainedSection {
        DrainedSection::begin(self.ctx(), vec![self.clone()]).await
    }

    /// Drain this node and every node below it.
    pub async fn subtree_drained_begin(self: &Rc<Self>) -> DrainedSection {
        let mut nodes = Vec::new();
        subtree(self, &mut nodes);
        DrainedSection::begin(self.ctx(), nodes).await
    }
}

impl GraphCtx {
    /// Drain every node of the graph.
    pub async fn drain_all(&self) -> DrainedSection {
        DrainedSection::begin(self, self.nodes()).await
    }

    /// Drain a chosen set of nodes together (a graph edit touching several subtrees).
    pub async fn drain_nodes(&self, nodes: Vec<Rc<Node>>) -> DrainedSection {
        DrainedSection::begin(self, nodes).await
    }

    /// Wake drain pollers: an external parent (BlockBackend, job) may have become idle.
    pub fn notify_progress(&self) {
        self.progress.notify_all();
    }
}
