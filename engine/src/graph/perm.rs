//! Two-phase permission updates over the whole affected graph.
//!
//! A [`Plan`] describes a tentative change: edges that move to another child or go away, edges
//! that are added, explicit permissions requested by users outside the graph. `check` computes
//! the resulting permissions of every edge below the change, on the graph *as it would be*,
//! without touching anything; if any node would see conflicting users (one takes what another
//! does not share) or a write on a read-only node, it fails naming both users and the
//! permission. Only a plan that passed `check` is `commit`ted, so an aborted change leaves every
//! edge exactly as it was. Drivers see the change too: `check` hands every affected node its
//! new cumulative permissions (`BlockDriver::perm_prepare`, where the file driver takes its image
//! locks), `commit` confirms them, and a [`Checked`] dropped without commit aborts them.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::types::{Edge, Node};
use crate::driver::{ChildDesc, ParentPerms};
use crate::error::{Error, Result};
use crate::types::{EdgeId, NodeId, Perms};

/// A tentative graph change whose permissions are to be checked.
#[derive(Default)]
pub(crate) struct Plan {
    /// Edges whose child changes (`Some(new)`) or that are removed (`None`).
    retarget: BTreeMap<EdgeId, (Rc<Edge>, Option<Rc<Node>>)>,
    /// Edges being added (not yet linked into their child's parent list).
    added: Vec<Rc<Edge>>,
    /// Permissions requested by non-node parents for their edges.
    explicit: BTreeMap<EdgeId, (Perms, Perms)>,
    /// Nodes whose permissions must be recomputed even if no edge above them changes.
    roots: Vec<Rc<Node>>,
    /// Nodes that a reopen switches to read-only (`true`) or read-write (`false`).
    read_only: BTreeMap<NodeId, bool>,
}

/// The permissions every affected edge would get.
pub(crate) struct Checked {
    perms: BTreeMap<EdgeId, (Rc<Edge>, Perms, Perms)>,
    cumulative: BTreeMap<NodeId, (Rc<Node>, Perms, Perms)>,
    /// Nodes whose driver accepted its new permissions; aborted unless committed.
    prepared: Vec<Rc<Node>>,
}

impl Plan {
    pub(crate) fn new() -> Plan {
        Plan::default()
    }

    /// The edge will point at `child` (or go away with `None`).
    pub(crate) fn retarget(&mut self, edge: &Rc<Edge>, child: Option<Rc<Node>>) {
        self.roots.push(edge.child_node());
        if let Some(c) = &child {
            self.roots.push(c.clone());
        }
        self.retarget.insert(edge.id(), (edge.clone(), child));
    }

    /// A new edge will be linked.
    pub(crate) fn add(&mut self, edge: &Rc<Edge>) {
        self.roots.push(edge.child_node());
        self.added.push(edge.clone());
    }

    /// A non-node parent asks for these permissions on its edge.
    pub(crate) fn request(&mut self, edge: &Rc<Edge>, perm: Perms, shared: Perms) {
        self.roots.push(edge.child_node());
        self.explicit.insert(edge.id(), (perm, shared));
    }

    /// Recompute everything below `node` (its own children's permissions may change).
    pub(crate) fn refresh(&mut self, node: &Rc<Node>) {
        self.roots.push(node.clone());
    }

    /// The node will be read-only (`true`) or read-write (`false`); everything below it is
    /// recomputed.
    pub(crate) fn set_read_only(&mut self, node: &Rc<Node>, read_only: bool) {
        self.roots.push(node.clone());
        self.read_only.insert(node.id(), read_only);
    }

    /// Whether `node` would be read-only under the plan.
    fn read_only_of(&self, node: &Node) -> bool {
        self.read_only
            .get(&node.id())
            .copied()
            .unwrap_or_else(|| node.is_read_only())
    }

    /// The child `edge` would have under the plan (`None` if removed).
    fn child_of(&self, edge: &Rc<Edge>) -> Option<Rc<Node>> {
        match self.retarget.get(&edge.id()) {
            Some((_, target)) => target.clone(),
            None => Some(edge.child_node()),
        }
    }

    /// Parent edges of `node` under the plan, in a stable order (edge id).
    fn parents_of(&self, node: &Rc<Node>) -> Vec<Rc<Edge>> {
        let mut edges: BTreeMap<EdgeId, Rc<Edge>> = BTreeMap::new();
        for e in node.parents() {
            if self.child_of(&e).is_some_and(|c| Rc::ptr_eq(&c, node)) {
                edges.insert(e.id(), e);
            }
        }
        for (e, target) in self.retarget.values() {
            if target.as_ref().is_some_and(|c| Rc::ptr_eq(c, node)) {
                edges.insert(e.id(), e.clone());
            }
        }
        for e in &self.added {
            if Rc::ptr_eq(&e.child_node(), node) {
                edges.insert(e.id(), e.clone());
            }
        }
        edges.into_values().collect()
    }

    /// Child edges of `node` under the plan.
    fn children_of(&self, node: &Rc<Node>) -> Vec<Rc<Edge>> {
        let mut edges: Vec<Rc<Edge>> = node
            .children()
            .into_iter()
            .filter(|e| self.child_of(e).is_some())
            .collect();
        for e in &self.added {
            if e.parent().node().is_some_and(|p| Rc::ptr_eq(&p, node)) {
                edges.push(e.clone());
            }
        }
        edges
    }

    /// Affected nodes, parents before children.
    fn topological_order(&self) -> Vec<Rc<Node>> {
        fn visit(
            plan: &Plan,
            node: &Rc<Node>,
            seen: &mut BTreeSet<NodeId>,
            post: &mut Vec<Rc<Node>>,
        ) {
            if !seen.insert(node.id()) {
                return;
            }
            for edge in plan.children_of(node) {
                if let Some(child) = plan.child_of(&edge) {
                    visit(plan, &child, seen, post);
                }
            }
            post.push(node.clone());
        }
        let mut seen = BTreeSet::new();
        let mut post = Vec::new();
        for root in &self.roots {
            visit(self, root, &mut seen, &mut post);
        }
        post.reverse();
        post
    }

    /// Phase one: compute and validate. Touches nothing.
    pub(crate) fn check(&self) -> Result<Checked> {
        let mut perms: BTreeMap<EdgeId, (Rc<Edge>, Perms, Perms)> = BTreeMap::new();
        for (id, (p, s)) in &self.explicit {
            let edge = self
                .edge_by_id(*id)
                .expect("explicit perms for an unknown edge");
            perms.insert(*id, (edge, *p, *s));
        }
        let mut cumulative = BTreeMap::new();
        for node in self.topological_order() {
            let parents = self.parents_of(&node);
            let lookup = |e: &Rc<Edge>| match perms.get(&e.id()) {
                Some((_, p, s)) => (*p, *s),
                None => (e.perm(), e.shared()),
            };
            check_node(&node, self.read_only_of(&node), &parents, &lookup)?;
            let mut cum_perm = Perms::NONE;
            let mut cum_shared = Perms::ALL;
            for e in &parents {
                let (p, s) = lookup(e);
                cum_perm |= p;
                cum_shared = cum_shared & s;
            }
            cumulative.insert(node.id(), (node.clone(), cum_perm, cum_shared));
            let input = ParentPerms {
                perm: cum_perm,
                shared: cum_shared,
                read_only: self.read_only_of(&node),
            };
            for edge in self.children_of(&node) {
                let desc = ChildDesc {
                    name: edge.name(),
                    role: edge.role(),
                };
                let (p, mut s) = node.driver().child_perms(desc, input);
                if self
                    .child_of(&edge)
                    .is_some_and(|c| c.options().force_share)
                {
                    // As QEMU does: a force-share child is shared in full by its parents.
                    s = Perms::ALL;
                }
                perms.insert(edge.id(), (edge.clone(), p, s));
            }
        }
        let prepared = prepare_drivers(&cumulative)?;
        Ok(Checked {
            perms,
            cumulative,
            prepared,
        })
    }

    fn edge_by_id(&self, id: EdgeId) -> Option<Rc<Edge>> {
        if let Some((e, _)) = self.retarget.get(&id) {
            return Some(e.clone());
        }
        if let Some(e) = self.added.iter().find(|e| e.id() == id) {
            return Some(e.clone());
        }
        self.roots
            .iter()
            .flat_map(|n| n.parents())
            .find(|e| e.id() == id)
    }
}

/// Validate the users of one node: pairwise sharing, and no writers on a read-only node.
fn check_node(
    node: &Rc<Node>,
    read_only: bool,
    parents: &[Rc<Edge>],
    perms_of: &dyn Fn(&Rc<Edge>) -> (Perms, Perms),
) -> Result<()> {
    for a in parents {
        let (a_perm, _) = perms_of(a);
        if read_only && a_perm.intersects(Perms::WRITE | Perms::RESIZE) {
            let wanted = a_perm & (Perms::WRITE | Perms::RESIZE);
            return Err(Error::generic(format!(
                "Block node '{}' is read-only: {} needs '{}'",
                node.name(),
                a.describe_use(),
                wanted.names()
            )));
        }
        if node.options().force_share {
            continue;
        }
        for b in parents {
            if Rc::ptr_eq(a, b) {
                continue;
            }
            let (_, b_shared) = perms_of(b);
            let denied = a_perm & !b_shared;
            if !denied.is_empty() {
                return Err(Error::generic(format!(
                    "Conflicts with use by {}, which does not allow '{}' on node '{}' \
                     (needed by {})",
                    b.describe_use(),
                    denied.names(),
                    node.name(),
                    a.describe_use()
                )));
            }
        }
    }
    Ok(())
}

/// Hand every node its new cumulative permissions (drivers take host resources such as image
/// locks here); on a refusal the nodes already prepared are aborted and the error returned.
fn prepare_drivers(
    cumulative: &BTreeMap<NodeId, (Rc<Node>, Perms, Perms)>,
) -> Result<Vec<Rc<Node>>> {
    let mut prepared: Vec<Rc<Node>> = Vec::new();
    for (node, perm, shared) in cumulative.values() {
        let Some(driver) = node.driver.get() else {
            continue;
        };
        if let Err(e) = driver.perm_prepare(*perm, *shared) {
            for n in prepared.iter().rev() {
                n.driver().perm_abort();
            }
            return Err(e);
        }
        prepared.push(node.clone());
    }
    Ok(prepared)
}

impl Drop for Checked {
    fn drop(&mut self) {
        // Not committed: the change was refused after the check.
        for n in self.prepared.drain(..).rev() {
            n.driver().perm_abort();
        }
    }
}

impl Checked {
    /// Phase two: apply the computed permissions. Cannot fail.
    pub(crate) fn commit(mut self) {
        for n in std::mem::take(&mut self.prepared) {
            n.driver().perm_commit();
        }
        for (edge, p, s) in std::mem::take(&mut self.perms).into_values() {
            edge.perm.set(p);
            edge.shared.set(s);
        }
        for (node, p, s) in std::mem::take(&mut self.cumulative).into_values() {
            node.cumulative.set((p, s));
        }
    }
}
