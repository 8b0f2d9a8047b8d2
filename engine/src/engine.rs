//! The Engine facade: the one API the QMP front end, the CLI and the simulator use.
//!
//! Owns the env, the graph context (nodes, events), the machine run state, the BlockBackends by
//! name and the jobs (verbs in `engine/jobs.rs`). Operations here validate user input and produce QEMU's errors; the
//! mechanisms live in `graph`, `request`, `backend` and `drivers`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Value, json};

use crate::backend::{BackendOptions, BlockBackend, Machine};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::graph::{GraphCtx, Node, open_node, unref};
use crate::job::JobRegistry;
use crate::object::ObjectRegistry;
use crate::util::Options;

mod backup;
mod backup_bitmap;
mod bitmaps;
mod block_jobs;
mod change_backing;
mod image;
mod jobs;
mod mirror;
mod reopen;
mod snapshots;

pub use backup::{BackupArgs, BackupPerf};
pub use bitmaps::{BitmapAddArgs, BitmapRef, default_granularity};
pub use image::ImageSpec;
pub use mirror::{MirrorArgs, NewImageMode};

pub use block_jobs::{BlockJobArgs, CommitArgs, StreamArgs};

/// A block engine instance.
pub struct Engine {
    ctx: Rc<GraphCtx>,
    jobs: Rc<JobRegistry>,
    machine: Rc<Machine>,
    backends: RefCell<BTreeMap<String, Rc<BlockBackend>>>,
    nbd: crate::nbd::Nbd,
}

impl Engine {
    /// A new engine on `env` with every built-in driver registered.
    pub fn new(env: Rc<dyn Env>) -> Engine {
        let ctx = GraphCtx::new(env);
        crate::drivers::register_all(&ctx);
        crate::job::backup::register(&ctx);
        let machine = Machine::new(&ctx);
        Engine {
            jobs: JobRegistry::new(&ctx),
            nbd: crate::nbd::Nbd::new(&ctx),
            ctx,
            machine,
            backends: RefCell::new(BTreeMap::new()),
        }
    }

    /// The environment.
    pub fn env(&self) -> &Rc<dyn Env> {
        self.ctx.env()
    }

    /// The graph context (nodes, events, debug listeners).
    pub fn graph(&self) -> &Rc<GraphCtx> {
        &self.ctx
    }

    /// The machine run state.
    pub fn machine(&self) -> &Rc<Machine> {
        &self.machine
    }

    /// The NBD server and its exports.
    pub fn nbd(&self) -> &crate::nbd::Nbd {
        &self.nbd
    }

    /// The user-created objects (secrets, throttle groups), kept by the graph so drivers reach
    /// them.
    pub fn objects(&self) -> &ObjectRegistry {
        &self.ctx.objects
    }

    /// `object-add`: create a user object (`--object`) from its arguments.
    pub async fn object_add(&self, args: Value) -> Result<()> {
        self.ctx.objects.add(self.ctx.env(), args).await
    }

    /// Take every QMP event emitted so far.
    pub fn take_events(&self) -> Vec<Event> {
        self.ctx.events.drain()
    }

    /// `blockdev-add`: open a node tree from options; the root is owned by the monitor.
    pub async fn blockdev_add(&self, options: Value) -> Result<Rc<Node>> {
        let opts = Options::new(options)?;
        if !opts.has("node-name") {
            return Err(Error::generic(
                "'node-name' must be specified for the root node",
            ));
        }
        if let Some(Value::String(name)) = opts.clone().take("node-name")
            && self.backends.borrow().contains_key(&name)
        {
            return Err(Error::generic(format!(
                "node-name={name} is conflicting with a device id"
            )));
        }
        let node = open_node(&self.ctx, opts).await?;
        node.monitor_owned.set(true);
        node.refcnt.set(node.refcnt.get() + 1);
        Ok(node)
    }

    /// `blockdev-del`: release a monitor-owned node nobody else uses.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<()> {
        let node = self.node(node_name)?;
        if node.parents().iter().any(|e| e.parent().node().is_none()) {
            return Err(Error::generic(format!("Node {node_name} is in use")));
        }
        node.check_op_blockers()?;
        // QEMU blocks deleting a backing file with its parent's backing blocker.
        let backing_of = node
            .parents()
            .iter()
            .filter(|e| e.role().contains(crate::types::ChildRole::COW))
            .find_map(|e| e.parent().node());
        if let Some(parent) = backing_of {
            return Err(Error::generic(format!(
                "Node '{node_name}' is busy: node is used as backing hd of '{}'",
                parent.name()
            )));
        }
        if !node.is_monitor_owned() {
            return Err(Error::generic(format!(
                "Node {node_name} is not owned by the monitor"
            )));
        }
        if node.refcnt() > 1 {
            return Err(Error::generic(format!(
                "Block device {node_name} is in use"
            )));
        }
        node.monitor_owned.set(false);
        unref(&node).await;
        Ok(())
    }

    /// Find a node by name (QMP's error when missing).
    pub fn node(&self, node_name: &str) -> Result<Rc<Node>> {
        self.ctx
            .node(node_name)
            .ok_or_else(|| Error::generic(format!("Cannot find node {node_name}")))
    }

    /// Find a node by device name or node name (QEMU's `bdrv_lookup_bs`).
    pub fn lookup(&self, device: Option<&str>, node_name: Option<&str>) -> Result<Rc<Node>> {
        if let Some(dev) = device
            && let Some(bb) = self.backends.borrow().get(dev)
        {
            return bb
                .root_node()
                .ok_or_else(|| Error::generic(format!("Device '{dev}' has no medium")));
        }
        if let Some(name) = node_name
            && let Some(n) = self.ctx.node(name)
        {
            return Ok(n);
        }
        Err(Error::not_found(format!(
            "Cannot find device='{}' nor node-name='{}'",
            device.unwrap_or(""),
            node_name.unwrap_or("")
        )))
    }

    /// Attach a device (BlockBackend) named `name` to a node.
    pub fn device_add(
        &self,
        name: &str,
        node_name: &str,
        opts: BackendOptions,
    ) -> Result<Rc<BlockBackend>> {
        crate::types::validate_node_name(name)
            .map_err(|_| Error::generic(format!("Invalid device id '{name}'")))?;
        if self.backends.borrow().contains_key(name) {
            return Err(Error::generic(format!("Duplicate device id '{name}'")));
        }
        if self.ctx.node(name).is_some() {
            return Err(Error::generic(format!(
                "Device id '{name}' is conflicting with a node-name"
            )));
        }
        let node = self.node(node_name)?;
        let bb = BlockBackend::new(name, &node, &self.machine, opts)?;
        self.backends
            .borrow_mut()
            .insert(name.to_string(), bb.clone());
        Ok(bb)
    }

    /// Detach and forget a device.
    pub async fn device_del(&self, name: &str) -> Result<()> {
        let bb = self
            .backends
            .borrow_mut()
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("Device '{name}' not found")))?;
        bb.detach().await
    }

    /// A device by name.
    pub fn backend(&self, name: &str) -> Result<Rc<BlockBackend>> {
        self.backends
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("Device '{name}' not found")))
    }

    /// Every device, by name.
    pub fn backends(&self) -> Vec<Rc<BlockBackend>> {
        self.backends.borrow().values().cloned().collect()
    }

    /// `query-named-block-nodes`.
    pub fn query_named_block_nodes(&self, flat: bool) -> Value {
        let nodes: Vec<Value> = self
            .ctx
            .nodes()
            .iter()
            .filter(|n| !flat || !n.is_implicit())
            .map(|n| n.describe())
            .collect();
        Value::Array(nodes)
    }

    /// `query-block`.
    pub fn query_block(&self) -> Value {
        Value::Array(self.backends().iter().map(|b| b.describe()).collect())
    }

    /// `query-blockstats` (per node).
    pub fn query_blockstats(&self) -> Value {
        Value::Array(
            self.ctx
                .nodes()
                .iter()
                .map(|n| json!({"node-name": n.name(), "stats": n.stats_json()}))
                .collect(),
        )
    }

    /// `x-debug-query-block-graph`: nodes and edges with their permissions.
    pub fn block_graph(&self) -> Value {
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for bb in self.backends() {
            nodes.push(json!({"id": format!("dev:{}", bb.name()), "type": "block-backend", "name": bb.name()}));
        }
        for n in self.ctx.nodes() {
            nodes.push(json!({"id": n.id().0, "type": "block-driver", "name": n.name(), "driver": n.driver_name()}));
            for e in n.parents() {
                let parent = match e.parent().node() {
                    Some(p) => json!(p.id().0),
                    None => json!(e.parent().describe()),
                };
                edges.push(json!({
                    "parent": parent, "child": n.id().0, "name": e.name(),
                    "perm": e.perm().name_list(), "shared-perm": e.shared().name_list(),
                    "frozen": e.is_frozen(),
                }));
            }
        }
        json!({"nodes": nodes, "edges": edges})
    }

    /// `block-set-write-threshold`.
    pub fn set_write_threshold(&self, node_name: &str, threshold: u64) -> Result<()> {
        self.node(node_name)?.set_write_threshold(threshold);
        Ok(())
    }

    /// `block_resize`: grow or shrink through a temporary user holding RESIZE, drained.
    pub async fn block_resize(
        &self,
        device: Option<&str>,
        node_name: Option<&str>,
        size: u64,
    ) -> Result<()> {
        let node = self.lookup(device, node_name)?;
        node.check_op_blockers()?;
        let tmp = BackendOptions {
            perm: crate::types::Perms::RESIZE,
            shared: crate::types::Perms::ALL,
            ..BackendOptions::tool(false)
        };
        let bb = BlockBackend::new("block_resize", &node, &self.machine, tmp)?;
        let drained = node.drained_begin().await;
        let root = bb.root().expect("just attached");
        let r = root
            .truncate(size, false, crate::driver::Prealloc::Off)
            .await;
        drop(drained);
        bb.detach().await?;
        r
    }

    /// `cont`: resume a machine stopped by an I/O error.
    pub fn cont(&self) {
        self.machine.cont();
    }

    /// `stop`.
    pub fn stop(&self) {
        self.machine.stop();
    }

    /// Flush every device and release everything (end of a tool run).
    pub async fn shutdown(&self) -> Result<()> {
        self.nbd.shutdown().await;
        self.jobs.cancel_all().await;
        let mut first_err = None;
        for bb in self.backends() {
            if let Err(e) = bb.flush().await {
                first_err.get_or_insert(e);
            }
        }
        let names: Vec<String> = self.backends.borrow().keys().cloned().collect();
        for name in names {
            let _ = self.device_del(&name).await;
        }
        // A backing node the monitor added is released once the node above it is: go round
        // until no monitor-owned node is left that only the monitor holds.
        loop {
            let free: Vec<_> = self
                .ctx
                .nodes()
                .into_iter()
                .filter(|n| n.is_monitor_owned() && n.refcnt() == 1)
                .collect();
            if free.is_empty() {
                break;
            }
            for node in free {
                node.monitor_owned.set(false);
                unref(&node).await;
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Nodes hold the graph context and the context's registry holds the nodes.
        self.jobs.forget_all();
        self.backends.borrow_mut().clear();
        self.ctx.forget_all_nodes();
    }
}
