//! Edges: a parent's use of a child node, with a name, a role, the permissions it takes and
//! shares, and a frozen flag. Parents are nodes or users outside the graph (BlockBackends, jobs).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};

use crate::types::{ChildRole, EdgeId, Perms};

use super::node::Node;

/// A user of a node that is not itself a node: a BlockBackend, a job.
pub trait ParentOps {
    /// How errors name this user ("device 'drive0'", "job 'm0'").
    fn describe(&self) -> String;

    /// The device name events report for nodes below this user (a BlockBackend's name);
    /// `None` for users that are not devices.
    fn device_name(&self) -> Option<String> {
        None
    }

    /// A node below entered a drained section: stop issuing new requests.
    fn drained_begin(&self) {}

    /// The drained section ended: resume.
    fn drained_end(&self) {}

    /// True while this user still has requests in flight or is about to issue one (drain polls
    /// until every parent says no).
    fn drained_poll(&self) -> bool {
        false
    }
}

/// Who holds an edge.
#[derive(Clone)]
pub enum ParentRef {
    /// A node (its driver's child).
    Node(Weak<Node>),
    /// Something outside the graph.
    External(Weak<dyn ParentOps>),
}

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

/// An edge of the graph.
pub struct Edge {
    id: EdgeId,
    name: String,
    role: ChildRole,
    parent: ParentRef,
    pub(crate) child: RefCell<Rc<Node>>,
    pub(crate) perm: Cell<Perms>,
    pub(crate) shared: Cell<Perms>,
    pub(crate) frozen: Cell<bool>,
    /// Still linked into the graph (false once detached).
    pub(crate) attached: Cell<bool>,
}

impl Edge {
    pub(crate) fn new(
        id: EdgeId,
        name: &str,
        role: ChildRole,
        parent: ParentRef,
        child: Rc<Node>,
    ) -> Rc<Edge> {
        Rc::new(Edge {
            id,
            name: name.to_string(),
            role,
            parent,
            child: RefCell::new(child),
            perm: Cell::new(Perms::NONE),
            shared: Cell::new(Perms::ALL),
            frozen: Cell::new(false),
            attached: Cell::new(false),
        })
    }

    /// Identity.
    pub fn id(&self) -> EdgeId {
        self.id
    }

    /// The edge name ("file", "backing", "root").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's role.
    pub fn role(&self) -> ChildRole {
        self.role
    }

    /// The parent.
    pub fn parent(&self) -> &ParentRef {
        &self.parent
    }

    /// The child node now (graph edits may change it between requests).
    pub fn child_node(&self) -> Rc<Node> {
        self.child.borrow().clone()
    }

    /// Permissions taken.
    pub fn perm(&self) -> Perms {
        self.perm.get()
    }

    /// Permissions shared with other users.
    pub fn shared(&self) -> Perms {
        self.shared.get()
    }

    /// True when the edge may not be changed (a job relies on it).
    pub fn is_frozen(&self) -> bool {
        self.frozen.get()
    }

    /// True while linked into the graph.
    pub fn is_attached(&self) -> bool {
        self.attached.get()
    }

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
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
