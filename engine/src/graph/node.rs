//! What a node of the graph (QEMU's BlockDriverState) answers and does: its driver, edges,
//! options, limits, permissions, quiesce counter, op blockers and before-write hooks, and the
//! in-flight guard of the request path. The `Node` type itself (with its [`IoState`]) is in
//! `types`.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::{Rc, Weak};

use serde_json::{Value, json};

use crate::bitmap::NodeBitmaps;
use crate::driver::{BlockDriver, Breakpoints, no_breakpoints};
use crate::error::Result;
use crate::io::Limits;
use crate::types::{DetectZeroes, NodeId, Perms};

use super::io_state::{BeforeWrite, IoState, NodeStats};
use super::types::{Edge, GraphCtx, Node, NodeOptions, ParentRef};

impl Node {
    pub(crate) fn new_shell(
        ctx: &Rc<GraphCtx>,
        name: String,
        implicit: bool,
        driver_name: &'static str,
        opts: NodeOptions,
    ) -> Rc<Node> {
        Rc::new(Node {
            id: NodeId(ctx.next_id()),
            name,
            implicit,
            ctx: ctx.clone(),
            driver: OnceCell::new(),
            driver_name,
            opts: Cell::new(opts),
            children: RefCell::new(Vec::new()),
            parents: RefCell::new(Vec::new()),
            refcnt: Cell::new(0),
            monitor_owned: Cell::new(false),
            limits: Cell::new(Limits::default()),
            quiesce: Cell::new(0),
            io: IoState::default(),
            bitmaps: Default::default(),
            cumulative: Cell::new((Perms::NONE, Perms::ALL)),
            closed: Cell::new(false),
            op_blockers: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn set_driver(&self, driver: Box<dyn BlockDriver>) {
        assert!(
            self.driver.set(driver).is_ok(),
            "driver of node '{}' set twice",
            self.name
        );
        self.refresh_limits();
    }

    /// Identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node name (`#blockNNN` for implicit nodes).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the engine named this node itself.
    pub fn is_implicit(&self) -> bool {
        self.implicit
    }

    /// The graph context.
    pub fn ctx(&self) -> &Rc<GraphCtx> {
        &self.ctx
    }

    /// The driver. Panics while the node is still opening (nothing can reach it then).
    pub fn driver(&self) -> &dyn BlockDriver {
        self.driver
            .get()
            .expect("node used before its driver was opened")
            .as_ref()
    }

    /// The driver's name.
    pub fn driver_name(&self) -> &'static str {
        self.driver_name
    }

    /// Generic options.
    pub fn options(&self) -> NodeOptions {
        self.opts.get()
    }

    /// True when the node is read-only now (as opened, or as last reopened).
    pub fn is_read_only(&self) -> bool {
        self.opts.get().read_only
    }

    /// Only the reopen commit phase switches this, together with the driver and permissions.
    pub(crate) fn set_read_only(&self, read_only: bool) {
        let mut o = self.opts.get();
        o.read_only = read_only;
        self.opts.set(o);
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.driver().len()
    }

    /// True for a zero-length node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Limits as last refreshed.
    pub fn limits(&self) -> Limits {
        self.limits.get()
    }

    /// Ask the driver for its limits again (after a graph change below this node).
    pub fn refresh_limits(&self) {
        let mut limits = self.driver().limits();
        limits.request_align = limits.request_align.max(1);
        assert!(
            limits.request_align.is_power_of_two(),
            "request_align must be a power of two"
        );
        self.limits.set(limits);
    }

    /// The node's named dirty bitmaps (QMP `block-dirty-bitmap-*`; marked by the request path).
    pub fn bitmaps(&self) -> &NodeBitmaps {
        &self.bitmaps
    }

    /// Child edges in attach order.
    pub fn children(&self) -> Vec<Rc<Edge>> {
        self.children.borrow().clone()
    }

    /// The child edge with this name ("file", "backing").
    pub fn child(&self, name: &str) -> Option<Rc<Edge>> {
        self.children
            .borrow()
            .iter()
            .find(|e| e.name() == name)
            .cloned()
    }

    /// Parent edges in attach order.
    pub fn parents(&self) -> Vec<Rc<Edge>> {
        self.parents
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The name of the first user outside the graph directly above this node that has a
    /// device name (a BlockBackend), or "" (QEMU's `bdrv_get_device_name`, used by events).
    pub fn device_name(&self) -> String {
        self.parents()
            .iter()
            .find_map(|e| match e.parent() {
                ParentRef::External(p) => p.upgrade().and_then(|p| p.device_name()),
                ParentRef::Node(_) => None,
            })
            .unwrap_or_default()
    }

    /// Reference count: parent edges plus one if owned by the monitor.
    pub fn refcnt(&self) -> u32 {
        self.refcnt.get()
    }

    /// True when created by `blockdev-add` and not yet deleted.
    pub fn is_monitor_owned(&self) -> bool {
        self.monitor_owned.get()
    }

    /// Depth of drained sections covering this node.
    pub fn quiesce_counter(&self) -> u32 {
        self.quiesce.get()
    }

    /// True inside a drained section.
    pub fn is_quiesced(&self) -> bool {
        self.quiesce.get() > 0
    }

    /// Requests in flight in this node.
    pub fn in_flight(&self) -> u32 {
        self.io.in_flight.get()
    }

    /// Requests tracked in this node now (in flight past the request path's entry).
    pub fn tracked_len(&self) -> usize {
        self.io.tracked.len()
    }

    /// The cumulative permissions (taken, shared) of this node's parents.
    pub fn cumulative_perms(&self) -> (Perms, Perms) {
        self.cumulative.get()
    }

    /// Set the write threshold (0 disables it).
    pub fn set_write_threshold(&self, bytes: u64) {
        self.io.write_threshold.set(bytes);
    }

    /// The write threshold (0 = off).
    pub fn write_threshold(&self) -> u64 {
        self.io.write_threshold.get()
    }

    /// Register a before-write hook.
    pub fn add_before_write(&self, hook: Rc<dyn BeforeWrite>) {
        self.io.before_write.borrow_mut().push(hook);
    }

    /// Remove a before-write hook.
    pub fn remove_before_write(&self, hook: &Rc<dyn BeforeWrite>) {
        self.io
            .before_write
            .borrow_mut()
            .retain(|h| !Rc::ptr_eq(h, hook));
    }

    /// Accounting snapshot as JSON.
    pub fn stats_json(&self) -> Value {
        self.io.stats.borrow().to_json()
    }

    /// Run `f` on the statistics.
    pub fn with_stats<R>(&self, f: impl FnOnce(&NodeStats) -> R) -> R {
        f(&self.io.stats.borrow())
    }

    /// Refuse operations that would disturb a user of this node (a job) until the returned token
    /// is passed to [`Node::remove_op_blocker`]. `reason` completes "Node 'x' is busy: ...".
    pub fn add_op_blocker(&self, reason: impl Into<String>) -> u64 {
        let token = self.ctx.next_id();
        self.op_blockers.borrow_mut().push((token, reason.into()));
        token
    }

    /// Lift a blocker added by [`Node::add_op_blocker`].
    pub fn remove_op_blocker(&self, token: u64) {
        self.op_blockers.borrow_mut().retain(|(t, _)| *t != token);
    }

    /// `Ok` when no blocker is set, else QEMU's "Node '...' is busy: <reason>" (first blocker).
    pub fn check_op_blockers(&self) -> Result<()> {
        match self.op_blockers.borrow().first() {
            None => Ok(()),
            Some((_, reason)) => Err(crate::error::Error::generic(format!(
                "Node '{}' is busy: {reason}",
                self.name
            ))),
        }
    }

    /// The backing child edge, if any.
    pub fn backing(&self) -> Option<Rc<Edge>> {
        self.child("backing")
    }

    /// The node's primary storage or filtered child ("file", or the filter's child).
    pub fn primary_child(&self) -> Option<Rc<Edge>> {
        use crate::types::ChildRole;
        self.children
            .borrow()
            .iter()
            .find(|e| e.role().contains(ChildRole::PRIMARY))
            .cloned()
    }

    /// The breakpoint verbs of this node's driver (blkdebug), or ENOTSUP when it has none.
    pub fn breakpoints(&self) -> Result<&dyn Breakpoints> {
        self.driver().breakpoints().ok_or_else(no_breakpoints)
    }

    /// The first node at or below this one (following primary/filtered children, then any
    /// child) whose driver has breakpoints: where `break`/`resume` of qemu-io act.
    pub fn find_breakpoint_node(self: &Rc<Node>) -> Option<Rc<Node>> {
        if self.driver().breakpoints().is_some() {
            return Some(self.clone());
        }
        let children = self.children();
        let primary = children
            .iter()
            .filter(|e| e.role().contains(crate::types::ChildRole::PRIMARY));
        let others = children
            .iter()
            .filter(|e| !e.role().contains(crate::types::ChildRole::PRIMARY));
        primary
            .chain(others)
            .find_map(|e| e.child_node().find_breakpoint_node())
    }

    /// Count a request in; the guard counts it out when dropped (even if its future is
    /// dropped), waking drain waiters when the node becomes idle.
    pub(crate) fn enter(self: &Rc<Node>) -> InFlightGuard {
        self.io.in_flight.set(self.io.in_flight.get() + 1);
        InFlightGuard { node: self.clone() }
    }

    /// `query-named-block-nodes` entry.
    pub fn describe(&self) -> Value {
        let (perm, shared) = self.cumulative.get();
        // QEMU reports the backing *file name* and how deep the chain below goes.
        let backing = self.backing().map(|e| e.child_node().driver().filename());
        let mut depth = 0u32;
        let mut below = self.backing().map(|e| e.child_node());
        while let Some(n) = below {
            depth += 1;
            below = n.backing().map(|e| e.child_node());
        }
        let mut info = json!({
            "node-name": self.name,
            "drv": self.driver_name,
            "file": self.driver().filename(),
            "ro": self.is_read_only(),
            "encrypted": false,
            "detect_zeroes": match self.opts.get().detect_zeroes {
                DetectZeroes::Off => "off", DetectZeroes::On => "on", DetectZeroes::Unmap => "unmap",
            },
            "write_threshold": self.io.write_threshold.get(),
            "cache": {"writeback": true, "direct": self.opts.get().direct, "no-flush": self.opts.get().no_flush},
            "backing_file": backing,
            "backing_file_depth": depth,
            "image": {"virtual-size": self.len(), "format": self.driver_name,
                      "format-specific": self.driver().specific_info()},
            "perm": perm.name_list(),
            "shared-perm": shared.name_list(),
        });
        if !self.bitmaps.is_empty() {
            // QEMU lists the member only when the node has bitmaps, after the write threshold.
            insert_after(
                &mut info,
                "write_threshold",
                "dirty-bitmaps",
                self.bitmaps.info(),
            );
        }
        info
    }
}

/// Insert `key: value` into the object `obj` right after `after` (member order is visible).
fn insert_after(obj: &mut Value, after: &str, key: &str, value: Value) {
    let Value::Object(map) = obj else { return };
    let old = std::mem::take(map);
    for (k, v) in old {
        let hit = k == after;
        map.insert(k, v);
        if hit {
            map.insert(key.to_string(), value.clone());
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node('{}', {})", self.name, self.driver_name)
    }
}

/// Counts one request in flight in a node; counts it out on drop.
pub struct InFlightGuard {
    node: Rc<Node>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = self.node.io.in_flight.get() - 1;
        self.node.io.in_flight.set(n);
        if n == 0 {
            self.node.ctx.progress.notify_all();
        }
    }
}
