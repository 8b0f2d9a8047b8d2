//! Edges as parents see them: how a parent and a use are named in errors, and [`Child`], the
//! handle a driver or BlockBackend holds on its edge. The `Edge` type (a parent's use of a child
//! node, with a name, a role, the permissions it takes and shares, and a frozen flag) and its
//! readers are in `types`; parents are nodes or users outside the graph (BlockBackends, jobs).

use std::fmt;
use std::rc::Rc;

use super::types::{Edge, Node, ParentRef};

impl ParentRef {
    /// The parent node, if the parent is a live node.
    pub fn node(&self) -> Option<Rc<Node>> {
        match self {
            ParentRef::Node(n) => n.upgrade(),
            ParentRef::External(_) => None,
        }
    }

    /// How errors name the parent.
    pub fn describe(&self) -> String {
        match self {
            ParentRef::Node(n) => match n.upgrade() {
                Some(n) => format!("node '{}'", n.name()),
                None => "a closed node".to_string(),
            },
            ParentRef::External(p) => match p.upgrade() {
                Some(p) => p.describe(),
                None => "a departed user".to_string(),
            },
        }
    }
}

impl Edge {
    /// How errors name this use: "node 'top' as 'backing'".
    pub fn describe_use(&self) -> String {
        format!("{} as '{}'", self.parent.describe(), self.name)
    }
}

impl fmt::Debug for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Edge({} -> {} '{}', perm [{}], shared [{}])",
            self.parent.describe(),
            self.child.borrow().name(),
            self.name,
            self.perm.get().names(),
            self.shared.get().names()
        )
    }
}

/// A handle on an edge, held by the parent: drivers and BlockBackends send every request through
/// it (the request path implements the I/O methods on `Child`).
#[derive(Clone)]
pub struct Child(pub(crate) Rc<Edge>);

impl Child {
    /// The edge.
    pub fn edge(&self) -> &Rc<Edge> {
        &self.0
    }

    /// The node the edge points at now.
    pub fn node(&self) -> Rc<Node> {
        self.0.child_node()
    }

    /// The parent node's child named `name` as the graph has it now: how a driver finds its
    /// backing child after a job changed it (the edge it was opened with may be gone).
    pub fn sibling(&self, name: &str) -> Option<Child> {
        self.0.parent().node()?.child(name).map(Child)
    }
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
