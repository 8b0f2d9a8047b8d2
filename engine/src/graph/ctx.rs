//! What the graph context shared by every node of one engine does: env, event queue, debug
//! listeners, the node registry, the table of drivers that can be opened by name and the guard
//! against backing loops. The `GraphCtx` type itself is in `types`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use super::types::{DebugListener, GraphCtx, Node, OpenFn, Reporter};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::event::{DebugEvent, DebugSwitch, Event, EventQueue};
use crate::util::Notify;

/// Deepest backing chain a graph opens. Opening, reading and dropping a chain nest one call
/// per image, so the depth must have a bound the stack is sized for (the CLI's engine thread
/// has room for this many in a debug build); QEMU's own chains are far shorter in practice.
pub const MAX_CHAIN_DEPTH: usize = 4096;

/// Keeps an image file on the list of chains being opened; leaves it when dropped.
pub struct ChainEntry {
    ctx: Rc<GraphCtx>,
}

impl Drop for ChainEntry {
    fn drop(&mut self) {
        self.ctx.opening_chain.borrow_mut().pop();
    }
}

/// `path` with `.` components and `dir/..` pairs removed, so that two spellings of one file
/// in a chain compare equal (the engine cannot ask the host for canonical names).
pub fn normalize_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

impl GraphCtx {
    /// A new context on `env`.
    pub fn new(env: Rc<dyn Env>) -> Rc<GraphCtx> {
        Rc::new(GraphCtx {
            env,
            events: EventQueue::default(),
            reporter: RefCell::new(None),
            debug: DebugSwitch::default(),
            debug_listeners: RefCell::new(Vec::new()),
            progress: Notify::new(),
            nodes: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(1),
            next_implicit: Cell::new(1),
            drivers: RefCell::new(BTreeMap::new()),
            opening_chain: RefCell::new(Vec::new()),
            objects: Default::default(),
        })
    }

    /// Note that the backing chain below the image file `path` is being opened. Fails with
    /// QEMU's message when `path` is already on the way down (a backing loop: a->b->a, or an
    /// image backed by itself), which would otherwise open images without end.
    pub fn enter_chain(self: &Rc<Self>, path: &str) -> Result<ChainEntry> {
        let path = normalize_path(path);
        if self.opening_chain.borrow().contains(&path) {
            return Err(Error::generic(format!(
                "Backing file '{path}' creates an infinite loop."
            )));
        }
        if self.opening_chain.borrow().len() >= MAX_CHAIN_DEPTH {
            return Err(Error::generic(format!(
                "Backing chain of more than {MAX_CHAIN_DEPTH} images below '{path}' refused"
            )));
        }
        self.opening_chain.borrow_mut().push(path);
        Ok(ChainEntry { ctx: self.clone() })
    }

    /// The environment.
    pub fn env(&self) -> &Rc<dyn Env> {
        &self.env
    }

    /// Emit a QMP event stamped with the env's clock.
    pub fn emit(&self, name: &'static str, data: serde_json::Value) {
        self.events.push(Event {
            time_ns: self.env.now_ns(),
            name,
            data,
        });
    }

    /// Install (or remove) the receiver of diagnostic lines.
    pub fn set_reporter(&self, reporter: Option<Reporter>) {
        *self.reporter.borrow_mut() = reporter;
    }

    /// A diagnostic line for the user of the tool (see `reporter`).
    pub fn report(&self, line: &str) {
        let reporter = self.reporter.borrow().clone();
        if let Some(r) = reporter {
            r(line);
        }
    }

    /// A fresh name for an implicitly created node ("#block001").
    pub(crate) fn implicit_name(&self) -> String {
        loop {
            let n = self.next_implicit.get();
            self.next_implicit.set(n + 1);
            let name = format!("#block{n:03}");
            if !self.nodes.borrow().contains_key(&name) {
                return name;
            }
        }
    }

    /// Make a driver openable by name.
    pub fn register_driver(&self, name: &'static str, open: OpenFn) {
        self.drivers.borrow_mut().insert(name, open);
    }

    /// The open function of a driver.
    pub(crate) fn driver(&self, name: &str) -> Result<OpenFn> {
        self.drivers.borrow().get(name).copied().ok_or_else(|| {
            let known: Vec<&str> = self.drivers.borrow().keys().copied().collect();
            Error::generic(format!(
                "Unknown driver '{name}' (known: {})",
                known.join(", ")
            ))
        })
    }

    /// Names of the registered drivers.
    pub fn driver_names(&self) -> Vec<&'static str> {
        self.drivers.borrow().keys().copied().collect()
    }

    /// Find a node by name.
    pub fn node(&self, name: &str) -> Option<Rc<Node>> {
        self.nodes.borrow().get(name).cloned()
    }

    /// Every node, in name order.
    pub fn nodes(&self) -> Vec<Rc<Node>> {
        self.nodes.borrow().values().cloned().collect()
    }

    pub(crate) fn register_node(&self, node: &Rc<Node>) -> Result<()> {
        let mut nodes = self.nodes.borrow_mut();
        if nodes.contains_key(node.name()) {
            return Err(Error::generic(format!(
                "Duplicate nodes with node-name='{}'",
                node.name()
            )));
        }
        nodes.insert(node.name().to_string(), node.clone());
        Ok(())
    }

    /// Forget every node (the engine is going away): breaks the registry ↔ node reference cycle
    /// so nodes are freed once nothing else holds them. Nodes are not closed: a caller that wants
    /// caches written back calls `Engine::shutdown` first.
    pub(crate) fn forget_all_nodes(&self) {
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        drop(nodes);
    }

    pub(crate) fn unregister_node(&self, name: &str) {
        self.nodes.borrow_mut().remove(name);
    }

    /// Add a global debug-event listener.
    pub fn add_debug_listener(&self, listener: Rc<dyn DebugListener>) {
        self.debug_listeners.borrow_mut().push(listener);
        self.debug.add();
    }

    /// Remove a listener added with `add_debug_listener`.
    pub fn remove_debug_listener(&self, listener: &Rc<dyn DebugListener>) {
        let mut listeners = self.debug_listeners.borrow_mut();
        if let Some(pos) = listeners.iter().position(|l| Rc::ptr_eq(l, listener)) {
            listeners.remove(pos);
            self.debug.remove();
        }
    }

    /// Tell the global listeners about a graph-level event (drain phases). These points cannot
    /// suspend: a listener's returned future is dropped unpolled.
    pub(crate) fn raise_graph_event(&self, node: &Rc<Node>, event: DebugEvent) {
        if self.debug.active() {
            for listener in self.debug_listeners() {
                drop(listener.on_event(node, event));
            }
        }
    }

    pub(crate) fn debug_listeners(&self) -> Vec<Rc<dyn DebugListener>> {
        self.debug_listeners.borrow().clone()
    }
}
