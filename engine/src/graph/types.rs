//! The graph's vocabulary: the data types of the graph that point at one another (a node holds
//! its edges and its context, an edge its child and its parent, the context its nodes and the
//! drivers' open functions), with the edge's constructor and readers and the id counter.
//!
//! Only data lives here; what the types do lives in the files above (`node`, `edge`, `ctx`,
//! `drain`, `perm`, `edit`, `reopen`, `open`), so those import this file and never each other
//! in a loop. Fields are visible to the whole `graph` module and, where the request path reads
//! them, to the crate.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use crate::driver::BlockDriver;
use crate::env::{Env, LocalBoxFuture};
use crate::error::Result;
use crate::event::{DebugEvent, DebugSwitch, EventQueue};
use crate::io::Limits;
use crate::types::{ChildRole, DetectZeroes, EdgeId, NodeId, Perms};
use crate::util::{Notify, Options};

use super::io_state::IoState;

/// Generic options every node has (the common part of `blockdev-add`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// Opened read-only: nobody may take WRITE or RESIZE on it.
    pub read_only: bool,
    /// `discard=unmap`: discard requests are passed down (otherwise ignored).
    pub discard_unmap: bool,
    /// `cache.no-flush`: flushes stop at this node (children are still flushed).
    pub no_flush: bool,
    /// `cache.direct`: bypass the host page cache (protocol drivers honour it).
    pub direct: bool,
    /// `detect-zeroes`.
    pub detect_zeroes: DetectZeroes,
    /// `force-share`: share every permission with every other user.
    pub force_share: bool,
}

/// A node of the graph.
pub struct Node {
    pub(super) id: NodeId,
    pub(super) name: String,
    pub(super) implicit: bool,
    pub(super) ctx: Rc<GraphCtx>,
    pub(super) driver: OnceCell<Box<dyn BlockDriver>>,
    pub(super) driver_name: &'static str,
    /// A cell: reopen switches `read_only` (everything else is fixed at open).
    pub(super) opts: Cell<NodeOptions>,
    pub(crate) children: RefCell<Vec<Rc<Edge>>>,
    pub(crate) parents: RefCell<Vec<Weak<Edge>>>,
    /// Parent edges plus monitor ownership; the node closes when it reaches 0.
    pub(crate) refcnt: Cell<u32>,
    pub(crate) monitor_owned: Cell<bool>,
    pub(super) limits: Cell<Limits>,
    pub(crate) quiesce: Cell<u32>,
    /// The request path's per-node state (in-flight count, tracked requests, write
    /// generations, write threshold, before-write hooks, statistics).
    pub(crate) io: IoState,
    /// The node's named dirty bitmaps.
    pub(super) bitmaps: crate::bitmap::NodeBitmaps,
    /// Union of parents' perms and intersection of their shared perms, as last committed.
    pub(crate) cumulative: Cell<(Perms, Perms)>,
    pub(crate) closed: Cell<bool>,
    /// Why operations on this node are refused now (a job using it), oldest first.
    pub(super) op_blockers: RefCell<Vec<(u64, String)>>,
}

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

/// An edge of the graph.
pub struct Edge {
    pub(super) id: EdgeId,
    pub(super) name: String,
    pub(super) role: ChildRole,
    pub(super) parent: ParentRef,
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
}

/// Opens a driver of one kind: given the node's context and its driver-specific options (the
/// common ones already taken), returns the driver. Leftover options must be refused.
pub type OpenFn = fn(OpenCtx, Options) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>>;

/// Something outside the graph that wants every debug event (simulator breakpoints, traces).
pub trait DebugListener {
    /// Called for every debug event on any node; a returned future suspends the request.
    fn on_event(&self, node: &Rc<Node>, event: DebugEvent) -> Option<LocalBoxFuture<'static, ()>>;
}

/// State shared by all nodes of one engine.
pub struct GraphCtx {
    pub(super) env: Rc<dyn Env>,
    /// QMP events, in emission order.
    pub events: EventQueue,
    /// Counts listeners so the request path can skip debug events cheaply.
    pub debug: DebugSwitch,
    pub(super) debug_listeners: RefCell<Vec<Rc<dyn DebugListener>>>,
    /// Woken whenever a node or external parent may have become idle (drain polling).
    pub(crate) progress: Notify,
    pub(super) nodes: RefCell<BTreeMap<String, Rc<Node>>>,
    pub(super) next_id: Cell<u64>,
    pub(super) next_implicit: Cell<u64>,
    pub(super) drivers: RefCell<BTreeMap<&'static str, OpenFn>>,
    /// Image files whose backing chain is being opened right now, outermost first (see
    /// [`GraphCtx::enter_chain`]): a backing reference back into this list is a loop.
    pub(super) opening_chain: RefCell<Vec<String>>,
    /// Where diagnostics go (QEMU's `error_report` lines: "qcow2: Marking image as corrupt:
    /// ..."), installed by the tool that prints them; without one they are dropped (the QMP
    /// events carry the same facts).
    pub(super) reporter: RefCell<Option<Reporter>>,
    /// The user-created objects (`--object`, `object-add`): drivers look up secrets and
    /// throttle groups here.
    pub objects: crate::object::ObjectRegistry,
}

impl GraphCtx {
    /// A fresh id for a node or an edge.
    pub(crate) fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }
}

/// Receives the engine's diagnostic lines.
pub type Reporter = Rc<dyn Fn(&str)>;

/// What a driver's open function gets: the node being opened, to attach children to.
#[derive(Clone)]
pub struct OpenCtx {
    pub(super) node: Rc<Node>,
}
