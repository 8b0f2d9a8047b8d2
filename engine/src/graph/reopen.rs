//! Switching open nodes between read-only and read-write (QEMU's `bdrv_reopen_set_read_only`),
//! as jobs do for a node they must write (stream's top, commit's base and overlay).
//!
//! A reopen covers a queue of nodes: the node asked for and the storage children below it
//! whose permissions follow it (a format's `file`, a filter's child); a backing child is only
//! read, so it stays as it is. Inside a drained section of the queue, two phases:
//! 1. the permission [`Plan`] is checked with the queue's new read-only state (a read-only node
//!    still written by some user, a child explicitly opened read-only under a node becoming
//!    writable, are refused here), then every driver stages the switch (`reopen_prepare`);
//! 2. only when all of that succeeded: node flags, drivers (`reopen_commit`) and permissions
//!    are committed together. Any failure aborts every staged driver and changes nothing.
//!
//! After a switch to read-write, the drivers' activation fix-ups run (a qcow2 image left dirty
//! is repaired before anything else is written) and the persistent bitmaps are marked in use
//! again; if that fails the nodes go back to read-only. A switch to read-only stores the
//! persistent bitmaps first (`persist`).
//!
//! Must not import `request`, `drivers`, `job`, `qmp` or `engine`.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::types::{ChildRole, DetectZeroes};
use crate::util::Options;

use super::perm::Plan;
use super::persist;
use super::types::Node;

/// The nodes a switch of `node` concerns, topmost first: `node` and, recursively, its
/// non-backing children that are not in the wanted state yet.
fn queue(node: &Rc<Node>, read_only: bool, out: &mut Vec<Rc<Node>>) {
    if node.is_read_only() == read_only || out.iter().any(|n| Rc::ptr_eq(n, node)) {
        return;
    }
    out.push(node.clone());
    for edge in node.children() {
        if !edge.role().contains(ChildRole::COW) {
            queue(&edge.child_node(), read_only, out);
        }
    }
}

/// Make `node` read-write (with the storage below it). Returns the nodes switched, to be given
/// back to [`reopen_read_only`] when the reason ends; empty when `node` was writable already.
/// On error nothing changed.
pub async fn reopen_read_write(node: &Rc<Node>) -> Result<Vec<Rc<Node>>> {
    let mut nodes = Vec::new();
    queue(node, false, &mut nodes);
    if nodes.is_empty() {
        return Ok(nodes);
    }
    reopen_multiple(&nodes, false).await?;
    // Children first: a format's fix-ups write through its (now writable) file.
    for n in nodes.iter().rev() {
        let activated = match n.driver().activate().await {
            Ok(()) => persist::after_read_write(n).await,
            Err(e) => Err(e),
        };
        if let Err(e) = activated {
            // Best effort: the nodes were read-only before, and nothing was written through
            // them since except the failed fix-up itself.
            let _ = reopen_multiple(&nodes, true).await;
            return Err(e);
        }
    }
    Ok(nodes)
}

/// Switch `node` (with the storage below it) to `read_only`, as qemu-io's `reopen -r`/`-w`
/// does; nothing to do when it is in that state already. On error nothing changed.
pub async fn reopen_set_read_only(node: &Rc<Node>, read_only: bool) -> Result<()> {
    if !read_only {
        return reopen_read_write(node).await.map(drop);
    }
    let mut nodes = Vec::new();
    queue(node, true, &mut nodes);
    if nodes.is_empty() {
        return Ok(());
    }
    reopen_multiple(&nodes, true).await
}

/// Make `nodes` (as returned by [`reopen_read_write`]) read-only again. On error nothing
/// changed (a user still writing one of them refuses it).
pub async fn reopen_read_only(nodes: &[Rc<Node>]) -> Result<()> {
    let nodes: Vec<Rc<Node>> = nodes
        .iter()
        .filter(|n| !n.is_read_only() && !n.closed.get())
        .cloned()
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    reopen_multiple(&nodes, true).await
}

/// Switch every node of `nodes` to `read_only`, all or none.
async fn reopen_multiple(nodes: &[Rc<Node>], read_only: bool) -> Result<()> {
    for n in nodes {
        if !n.driver().caps().reopen {
            return Err(Error::generic(format!(
                "Block format '{}' used by node '{}' does not support reopening files",
                n.driver_name(),
                n.name()
            )));
        }
    }
    let ctx = nodes[0].ctx().clone();
    let _drained = ctx.drain_nodes(nodes.to_vec()).await;
    let mut plan = Plan::new();
    for n in nodes {
        plan.set_read_only(n, read_only);
    }
    let checked = plan.check()?;
    // A switch to read-only stores the persistent bitmaps first (they turn read-only with
    // the node); if anything then fails, they are marked in use again.
    let mut stored = Vec::new();
    let staged = async {
        if read_only {
            for n in nodes {
                stored.push((n.clone(), persist::store(n).await?));
            }
        }
        prepare_all(nodes, read_only).await
    }
    .await;
    if let Err(e) = staged {
        for (n, list) in &stored {
            persist::remark_after_failed_switch(n, list).await;
        }
        return Err(e);
    }
    for n in nodes {
        n.set_read_only(read_only);
        n.driver().reopen_commit();
    }
    for (_, list) in &stored {
        persist::set_readonly(list, true);
    }
    checked.commit();
    Ok(())
}

/// Phase one for every node: stage the switch; on a failure every staged driver is aborted.
async fn prepare_all(nodes: &[Rc<Node>], read_only: bool) -> Result<()> {
    let mut prepared: Vec<&Rc<Node>> = Vec::new();
    for n in nodes {
        match n.driver().reopen_prepare(read_only).await {
            Ok(()) => prepared.push(n),
            Err(e) => {
                for p in prepared.iter().rev() {
                    p.driver().reopen_abort();
                }
                n.driver().reopen_abort();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The generic node options a reopen may change besides the access mode (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenericChanges {
    /// `discard`.
    pub discard_unmap: Option<bool>,
    /// `detect-zeroes`.
    pub detect_zeroes: Option<DetectZeroes>,
    /// `cache.no-flush`.
    pub no_flush: Option<bool>,
}

impl Node {
    /// Only a reopen's commit phase changes these (`reopen::reopen_options`).
    pub(crate) fn set_generic_options(&self, changes: GenericChanges) {
        let mut o = self.opts.get();
        o.discard_unmap = changes.discard_unmap.unwrap_or(o.discard_unmap);
        o.detect_zeroes = changes.detect_zeroes.unwrap_or(o.detect_zeroes);
        o.no_flush = changes.no_flush.unwrap_or(o.no_flush);
        self.opts.set(o);
    }
}

/// Set `node`'s driver options anew (`changes`; those not given go back to their defaults)
/// and change its generic options, as qemu-io's `reopen -o` does: in a drained section the driver checks
/// and stages the change, then both are committed. On error nothing changed.
pub async fn reopen_options(
    node: &Rc<Node>,
    changes: Options,
    generic: GenericChanges,
) -> Result<()> {
    let o = node.options();
    let unmap = generic.discard_unmap.unwrap_or(o.discard_unmap);
    if generic.detect_zeroes.unwrap_or(o.detect_zeroes) == DetectZeroes::Unmap && !unmap {
        return Err(Error::generic(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    let ctx = node.ctx().clone();
    let _drained = ctx.drain_nodes(vec![node.clone()]).await;
    if let Err(e) = node.driver().reopen_prepare_options(changes).await {
        node.driver().reopen_abort();
        return Err(e);
    }
    node.set_generic_options(generic);
    node.driver().reopen_commit();
    Ok(())
}
