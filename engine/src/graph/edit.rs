//! Graph edits: attach and detach children, replace a node by another (all its parents move),
//! append an overlay, insert and remove filters, change a node's backing child (dropping
//! images from a chain), freeze edges.
//!
//! Every edit is two-phase: a [`Plan`] is checked against the whole affected graph, and only
//! then are edges relinked and permissions committed together, so a refused edit leaves the
//! graph exactly as it was. Edits that move existing parents run inside a drained section of the
//! nodes involved, so no request sees a half-edited graph.

use std::rc::{Rc, Weak};

use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::types::{ChildRole, EdgeId, Perms};

use super::drain::{apply_quiesce, transfer_quiesce};
use super::edge::Child;
use super::perm::Plan;
use super::types::{Edge, Node, ParentOps, ParentRef};

/// Which parents of the replaced node stay where they are.
#[derive(Clone, Debug, Default)]
pub struct ReplaceOptions {
    /// Edges that keep pointing at the old node.
    pub keep: Vec<EdgeId>,
}

/// True when `target` is `node` or lies below it.
fn reaches(node: &Rc<Node>, target: &Rc<Node>) -> bool {
    Rc::ptr_eq(node, target)
        || node
            .children()
            .iter()
            .any(|e| reaches(&e.child_node(), target))
}

fn link_new(edge: &Rc<Edge>) {
    let child = edge.child_node();
    child.parents.borrow_mut().push(Rc::downgrade(edge));
    child.refcnt.set(child.refcnt.get() + 1);
    if let Some(parent) = edge.parent().node() {
        parent.children.borrow_mut().push(edge.clone());
    }
    edge.attached.set(true);
    apply_quiesce(edge.parent(), &child, true);
}

fn unlink(edge: &Rc<Edge>) -> Rc<Node> {
    let child = edge.child_node();
    child
        .parents
        .borrow_mut()
        .retain(|w| !std::ptr::eq(w.as_ptr(), Rc::as_ptr(edge)));
    if let Some(parent) = edge.parent().node() {
        parent
            .children
            .borrow_mut()
            .retain(|e| !Rc::ptr_eq(e, edge));
    }
    edge.attached.set(false);
    apply_quiesce(edge.parent(), &child, false);
    child
}

fn retarget(edge: &Rc<Edge>, to: &Rc<Node>) -> Rc<Node> {
    let old = edge.child.replace(to.clone());
    old.parents
        .borrow_mut()
        .retain(|w| !std::ptr::eq(w.as_ptr(), Rc::as_ptr(edge)));
    to.parents.borrow_mut().push(Rc::downgrade(edge));
    to.refcnt.set(to.refcnt.get() + 1);
    transfer_quiesce(edge.parent(), &old, to);
    if let Some(parent) = edge.parent().node() {
        parent.refresh_limits();
    }
    old
}

fn new_edge(child: &Rc<Node>, name: &str, role: ChildRole, parent: ParentRef) -> Rc<Edge> {
    Edge::new(
        EdgeId(child.ctx().next_id()),
        name,
        role,
        parent,
        child.clone(),
    )
}

/// Attach `child` below the node `parent` as `name`. Permissions are checked on the resulting
/// graph; on error nothing changed.
pub fn attach_child(
    parent: &Rc<Node>,
    child: &Rc<Node>,
    name: &str,
    role: ChildRole,
) -> Result<Child> {
    let edge = attach_unchecked(parent, child, name, role)?;
    let mut plan = Plan::new();
    plan.refresh(parent);
    match plan.check() {
        Ok(checked) => {
            checked.commit();
            parent.refresh_limits();
            Ok(Child(edge))
        }
        Err(e) => {
            unlink(&edge);
            child.refcnt.set(child.refcnt.get() - 1);
            Err(e)
        }
    }
}

/// Link a child while its parent is being opened; the caller checks permissions for the whole
/// node once its driver exists.
pub(crate) fn attach_unchecked(
    parent: &Rc<Node>,
    child: &Rc<Node>,
    name: &str,
    role: ChildRole,
) -> Result<Rc<Edge>> {
    if reaches(child, parent) {
        return Err(Error::generic(format!(
            "Making '{}' a '{name}' child of '{}' would create a cycle",
            child.name(),
            parent.name()
        )));
    }
    if parent.child(name).is_some() {
        return Err(Error::generic(format!(
            "Node '{}' already has a '{name}' child",
            parent.name()
        )));
    }
    let edge = new_edge(child, name, role, ParentRef::Node(Rc::downgrade(parent)));
    link_new(&edge);
    Ok(edge)
}

/// Check and commit the permissions of every edge below `node` (after its driver opened).
pub(crate) fn refresh_perms(node: &Rc<Node>) -> Result<()> {
    let mut plan = Plan::new();
    plan.refresh(node);
    plan.check()?.commit();
    Ok(())
}

/// Attach a user outside the graph (BlockBackend, job) to `child`, taking `perm` and sharing
/// `shared`. On a conflict nothing changes and the error names both users.
pub fn attach_external(
    parent: Weak<dyn ParentOps>,
    child: &Rc<Node>,
    name: &str,
    perm: Perms,
    shared: Perms,
) -> Result<Child> {
    let edge = new_edge(child, name, ChildRole::PRIMARY, ParentRef::External(parent));
    let mut plan = Plan::new();
    plan.add(&edge);
    plan.request(&edge, perm, shared);
    plan.check()?.commit();
    link_new(&edge);
    Ok(Child(edge))
}

/// Change the permissions an external user holds on its edge (two-phase).
pub fn set_external_perms(child: &Child, perm: Perms, shared: Perms) -> Result<()> {
    let mut plan = Plan::new();
    plan.request(child.edge(), perm, shared);
    plan.check()?.commit();
    Ok(())
}

/// Freeze an edge: edits that would change it are refused until it is thawed.
pub fn freeze(edge: &Edge) {
    edge.frozen.set(true);
}

/// Thaw a frozen edge.
pub fn unfreeze(edge: &Edge) {
    edge.frozen.set(false);
}

fn refuse_frozen(edge: &Edge, what: &str) -> Result<()> {
    if edge.is_frozen() {
        return Err(Error::generic(format!(
            "Cannot {what} the '{}' link from {} to '{}': it is frozen",
            edge.name(),
            edge.parent().describe(),
            edge.child_node().name()
        )));
    }
    Ok(())
}

/// Detach an edge from the graph, releasing its child (closed when nothing else uses it).
pub async fn detach(edge: &Rc<Edge>) -> Result<()> {
    refuse_frozen(edge, "remove")?;
    if !edge.is_attached() {
        return Ok(());
    }
    let mut plan = Plan::new();
    plan.retarget(edge, None);
    plan.check()?.commit();
    let child = unlink(edge);
    if let Some(parent) = edge.parent().node() {
        parent.refresh_limits();
    }
    unref(&child).await;
    Ok(())
}

/// Drop one reference; at zero the node is closed, its children released and its name freed.
pub fn unref(node: &Rc<Node>) -> LocalBoxFuture<'static, ()> {
    let node = node.clone();
    Box::pin(async move {
        let n = node
            .refcnt
            .get()
            .checked_sub(1)
            .expect("node reference count underflow");
        node.refcnt.set(n);
        if n == 0 && !node.closed.get() {
            close(&node).await;
        }
    })
}

async fn close(node: &Rc<Node>) {
    node.closed.set(true);
    // The persistent bitmaps go back to the image (not in use) while it is still open.
    super::persist::store_at_close(node).await;
    // A close error (a failed final flush) cannot be reported to anyone who could act on it;
    // the data was already reported as written or not by the requests themselves.
    let _ = node.driver().close().await;
    for edge in node.children() {
        let mut plan = Plan::new();
        plan.retarget(&edge, None);
        if let Ok(checked) = plan.check() {
            checked.commit();
        }
        let child = unlink(&edge);
        unref(&child).await;
    }
    node.ctx().unregister_node(node.name());
}

/// Edges of `from` that a replacement by `to` moves.
fn edges_to_move(from: &Rc<Node>, to: &Rc<Node>, opts: &ReplaceOptions) -> Vec<Rc<Edge>> {
    from.parents()
        .into_iter()
        .filter(|e| !opts.keep.contains(&e.id()))
        // A parent at or below `to` keeps its edge: moving it would create a cycle (this is
        // `to`'s own backing or filtered edge when appending an overlay or inserting a filter).
        .filter(|e| !e.parent().node().is_some_and(|p| reaches(to, &p)))
        .collect()
}

fn commit_moves(moves: &[Rc<Edge>], to: &Rc<Node>) -> Vec<Rc<Node>> {
    moves.iter().map(|e| retarget(e, to)).collect()
}

/// Replace `from` by `to`: every parent of `from` (except those in `opts.keep` and those at or
/// below `to`) now uses `to`. Runs drained; two-phase.
pub async fn replace_node(from: &Rc<Node>, to: &Rc<Node>, opts: ReplaceOptions) -> Result<()> {
    let _drained = from.ctx().drain_nodes(vec![from.clone(), to.clone()]).await;
    let moves = edges_to_move(from, to, &opts);
    for e in &moves {
        refuse_frozen(e, "change")?;
    }
    let mut plan = Plan::new();
    for e in &moves {
        plan.retarget(e, Some(to.clone()));
    }
    plan.check()?.commit();
    for old in commit_moves(&moves, to) {
        unref(&old).await;
    }
    Ok(())
}

/// Put `overlay` on top of `base`: `base` becomes the overlay's backing child and every parent
/// of `base` moves to the overlay (an external snapshot). One two-phase change.
pub async fn append(overlay: &Rc<Node>, base: &Rc<Node>) -> Result<()> {
    if !overlay.driver().caps().supports_backing {
        return Err(Error::generic(format!(
            "Driver '{}' of node '{}' does not support backing files",
            overlay.driver_name(),
            overlay.name()
        )));
    }
    if overlay.backing().is_some() {
        return Err(Error::generic(format!(
            "Node '{}' already has a backing child",
            overlay.name()
        )));
    }
    if reaches(base, overlay) {
        return Err(Error::generic(format!(
            "Appending '{}' above '{}' would create a cycle",
            overlay.name(),
            base.name()
        )));
    }
    let _drained = base
        .ctx()
        .drain_nodes(vec![base.clone(), overlay.clone()])
        .await;
    let moves = edges_to_move(base, overlay, &ReplaceOptions::default());
    for e in &moves {
        refuse_frozen(e, "change")?;
    }
    let backing = new_edge(
        base,
        "backing",
        ChildRole::COW,
        ParentRef::Node(Rc::downgrade(overlay)),
    );
    let mut plan = Plan::new();
    plan.add(&backing);
    for e in &moves {
        plan.retarget(e, Some(overlay.clone()));
    }
    plan.refresh(overlay);
    plan.check()?.commit();
    link_new(&backing);
    overlay.refresh_limits();
    for old in commit_moves(&moves, overlay) {
        unref(&old).await;
    }
    Ok(())
}

/// Insert `filter` above `below`: the filter must already have `below` as its filtered child;
/// every other parent of `below` moves to the filter.
pub async fn insert_filter(filter: &Rc<Node>, below: &Rc<Node>) -> Result<()> {
    let filtered = filter
        .primary_child()
        .filter(|e| Rc::ptr_eq(&e.child_node(), below));
    if filtered.is_none() {
        return Err(Error::generic(format!(
            "Node '{}' does not filter '{}'",
            filter.name(),
            below.name()
        )));
    }
    replace_node(below, filter, ReplaceOptions::default()).await
}

/// Remove a filter from the chain: its parents move to its filtered child. The filter keeps its
/// own edge to the child until whoever owns the filter releases it (a job dropping its filter, or
/// `blockdev-del`), exactly as any other parentless node.
pub async fn remove_filter(filter: &Rc<Node>) -> Result<()> {
    let Some(edge) = filter.primary_child() else {
        return Err(Error::generic(format!(
            "Node '{}' has no filtered child",
            filter.name()
        )));
    };
    let below = edge.child_node();
    replace_node(filter, &below, ReplaceOptions::default()).await
}

/// Make `to` the backing child of `node` (`None`: no backing child), as stream and commit do
/// when they drop images from a chain. Runs drained over the nodes involved; two-phase; refused
/// when the backing edge is frozen or the change would create a cycle. Images that drop out of
/// the chain are released (closed when nothing else holds them). Only the graph changes: the
/// image header is the caller's (`BlockDriver::change_backing_file`).
pub async fn set_backing(node: &Rc<Node>, to: Option<&Rc<Node>>) -> Result<()> {
    let edge = node.backing();
    if let Some(e) = &edge {
        refuse_frozen(e, "change")?;
    }
    if let Some(to) = to
        && reaches(to, node)
    {
        return Err(Error::generic(format!(
            "Making '{}' the backing file of '{}' would create a cycle",
            to.name(),
            node.name()
        )));
    }
    let mut drained = vec![node.clone()];
    if let Some(e) = &edge {
        drained.push(e.child_node());
    }
    if let Some(to) = to {
        drained.push(to.clone());
    }
    let _drained = node.ctx().drain_nodes(drained).await;
    match (edge, to) {
        (None, None) => Ok(()),
        (None, Some(to)) => {
            if !node.driver().caps().supports_backing {
                return Err(Error::generic(format!(
                    "Driver '{}' of node '{}' does not support backing files",
                    node.driver_name(),
                    node.name()
                )));
            }
            attach_child(node, to, "backing", ChildRole::COW).map(|_| ())
        }
        (Some(e), None) => detach(&e).await,
        (Some(e), Some(to)) => {
            if Rc::ptr_eq(&e.child_node(), to) {
                return Ok(());
            }
            let mut plan = Plan::new();
            plan.retarget(&e, Some(to.clone()));
            plan.check()?.commit();
            let old = retarget(&e, to);
            unref(&old).await;
            Ok(())
        }
    }
}

/// Close a node nothing references (a job-private filter whose insertion failed): its children
/// are released.
pub async fn drop_unused(node: &Rc<Node>) {
    assert_eq!(
        node.refcnt(),
        0,
        "dropping node '{}' still in use",
        node.name()
    );
    if !node.closed.get() {
        close(node).await;
    }
}
