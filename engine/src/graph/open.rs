//! Creating nodes from `blockdev-add` options: the common options every node has, the driver
//! lookup, children given inline (new implicit nodes) or by reference (existing node names),
//! and cleanup when any part of the open fails.

use std::rc::Rc;

use serde_json::Value;

use crate::env::Env;
use crate::error::{Error, Result, ResultExt};
use crate::types::{ChildRole, DetectZeroes, validate_node_name};
use crate::util::Options;

use super::edge::Child;
use super::edit::{attach_unchecked, refresh_perms, unref};
use super::types::{Edge, GraphCtx, Node, NodeOptions, OpenCtx};

impl OpenCtx {
    /// The name of the node being opened.
    pub fn node_name(&self) -> &str {
        self.node.name()
    }

    /// The node being opened, weakly (a driver keeping it must not keep its node alive), for
    /// drivers that report events naming their node and device.
    pub fn weak_node(&self) -> std::rc::Weak<Node> {
        Rc::downgrade(&self.node)
    }

    /// The node's generic options.
    pub fn options(&self) -> NodeOptions {
        self.node.options()
    }

    /// The environment (host files, clock).
    pub fn env(&self) -> Rc<dyn Env> {
        self.node.ctx().env().clone()
    }

    /// The graph context.
    pub fn graph(&self) -> &Rc<GraphCtx> {
        self.node.ctx()
    }

    /// Open or look up the child given by `spec` (an options object, or a node name) and attach
    /// it as `name` with `role`. Permissions are checked once the whole node is open.
    pub async fn open_child(&self, name: &str, role: ChildRole, spec: Value) -> Result<Child> {
        let child = match spec {
            // QEMU looks a reference up as a device name and as a node name.
            Value::String(reference) => self.node.ctx().node(&reference).ok_or_else(|| {
                Error::generic(format!(
                    "Cannot find device='{reference}' nor node-name='{reference}'"
                ))
            })?,
            Value::Object(_) => {
                let opts = Options::new(spec).context_with(|| format!("child '{name}'"))?;
                // A bad option of the child is named by its path from this node ("file.x").
                open_node(self.node.ctx(), opts)
                    .await
                    .map_err(|e| e.under_option(name))?
            }
            _ => {
                return Err(Error::generic(format!(
                    "Invalid parameter type for '{name}', expected: object or node name"
                )));
            }
        };
        let edge = attach_unchecked(&self.node, &child, name, role);
        if edge.is_err() && child.refcnt() == 0 {
            unref_new(&child).await;
        }
        Ok(Child(edge?))
    }
}

/// Release a node that was opened for a parent whose open then failed.
async fn unref_new(node: &Rc<Node>) {
    node.refcnt.set(node.refcnt.get() + 1);
    unref(node).await;
}

fn take_common(opts: &mut Options) -> Result<(Option<String>, NodeOptions)> {
    let node_name = opts.take_str("node-name")?;
    let read_only = opts.take_bool("read-only")?.unwrap_or(false);
    // auto-read-only only matters for a read-write open that may fall back; blk opens exactly
    // what is asked, so the flag is accepted and has no further effect.
    let _auto_read_only = opts.take_bool("auto-read-only")?;
    let discard_unmap = match opts.take_str("discard")? {
        None => false,
        Some(mode) => crate::types::discard_unmap(&mode).ok_or_else(|| {
            Error::generic(format!(
                "Invalid discard option '{mode}' (expected ignore or unmap)"
            ))
        })?,
    };
    let (direct, no_flush) = match opts.take_dict("cache")? {
        None => (false, false),
        Some(mut cache) => {
            let d = cache.take_bool("direct")?.unwrap_or(false);
            let n = cache.take_bool("no-flush")?.unwrap_or(false);
            cache.finish()?;
            (d, n)
        }
    };
    let detect_zeroes = match opts.take_str("detect-zeroes")? {
        None => DetectZeroes::Off,
        Some(s) => DetectZeroes::parse(&s)?,
    };
    if detect_zeroes == DetectZeroes::Unmap && !discard_unmap {
        return Err(Error::generic(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    let force_share = opts.take_bool("force-share")?.unwrap_or(false);
    if force_share && !read_only {
        return Err(Error::generic(
            "force-share=on can only be used with read-only images",
        ));
    }
    let node_opts = NodeOptions {
        read_only,
        discard_unmap,
        no_flush,
        direct,
        detect_zeroes,
        force_share,
    };
    Ok((node_name, node_opts))
}

/// Open a node from options. Children given inline are opened first, as implicit nodes unless
/// they carry a node name. On any error every node opened for this call is released again.
pub async fn open_node(ctx: &Rc<GraphCtx>, mut opts: Options) -> Result<Rc<Node>> {
    let driver = opts.require_str("driver")?;
    let open = ctx.driver(&driver)?;
    let (node_name, node_opts) = take_common(&mut opts)?;
    let driver_name = ctx
        .driver_names()
        .into_iter()
        .find(|d| *d == driver)
        .expect("looked up");
    let node = new_named_shell(ctx, node_name, driver_name, node_opts)?;
    let opened = open(OpenCtx { node: node.clone() }, opts).await;
    finish_open(ctx, node, opened).await
}

fn new_named_shell(
    ctx: &Rc<GraphCtx>,
    node_name: Option<String>,
    driver_name: &'static str,
    node_opts: NodeOptions,
) -> Result<Rc<Node>> {
    let (name, implicit) = match node_name {
        Some(n) => {
            validate_node_name(&n)?;
            if ctx.node(&n).is_some() {
                return Err(Error::generic(format!(
                    "Duplicate nodes with node-name='{n}'"
                )));
            }
            (n, false)
        }
        None => (ctx.implicit_name(), true),
    };
    Ok(Node::new_shell(ctx, name, implicit, driver_name, node_opts))
}

/// Create a node whose driver is not openable by name: a job-private filter (commit-top,
/// mirror-top). `build` attaches its children through the [`OpenCtx`] and returns the driver.
/// Named `node_name`, or implicitly when `None`. The node starts with no reference: the caller
/// links it into the graph (e.g. [`insert_filter`](super::insert_filter)) right away.
pub async fn open_internal_node(
    ctx: &Rc<GraphCtx>,
    node_name: Option<String>,
    driver_name: &'static str,
    build: impl FnOnce(
        OpenCtx,
    ) -> crate::env::LocalBoxFuture<
        'static,
        Result<Box<dyn crate::driver::BlockDriver>>,
    >,
) -> Result<Rc<Node>> {
    let node = new_named_shell(ctx, node_name, driver_name, NodeOptions::default())?;
    let opened = build(OpenCtx { node: node.clone() }).await;
    finish_open(ctx, node, opened).await
}

async fn finish_open(
    ctx: &Rc<GraphCtx>,
    node: Rc<Node>,
    opened: Result<Box<dyn crate::driver::BlockDriver>>,
) -> Result<Rc<Node>> {
    let result = async {
        node.set_driver(opened?);
        refresh_perms(&node)?;
        node.driver().activate().await?;
        // The stored bitmaps become live (and in use) before anyone can write.
        super::persist::load(&node).await?;
        ctx.register_node(&node)
    }
    .await;
    if let Err(e) = result {
        release_children(&node).await;
        return Err(e);
    }
    Ok(node)
}

/// Undo the children attached during a failed open.
async fn release_children(node: &Rc<Node>) {
    let edges: Vec<Rc<Edge>> = node.children.borrow_mut().drain(..).collect();
    for edge in edges {
        let child = edge.child_node();
        child
            .parents
            .borrow_mut()
            .retain(|w| !std::ptr::eq(w.as_ptr(), Rc::as_ptr(&edge)));
        edge.attached.set(false);
        unref(&child).await;
    }
}

/// Builds the driver of a node created by [`open_internal`], attaching its children through
/// the given [`OpenCtx`].
pub type InternalOpen = Box<
    dyn FnOnce(
        OpenCtx,
    )
        -> crate::env::LocalBoxFuture<'static, Result<Box<dyn crate::driver::BlockDriver>>>,
>;

/// Create a node whose driver the caller supplies instead of a registered one: job-private
/// filters (mirror-top) that must not be openable by `blockdev-add`. `node_name` of `None`
/// makes an implicit node. The caller owns one reference to the returned node and drops it
/// with [`unref`](super::unref); on error nothing is left behind. (Same as
/// [`open_internal_node`], which leaves the reference to the graph edit that links the node.)
pub async fn open_internal(
    ctx: &Rc<GraphCtx>,
    node_name: Option<&str>,
    driver_name: &'static str,
    opts: NodeOptions,
    build: InternalOpen,
) -> Result<Rc<Node>> {
    let node = new_named_shell(ctx, node_name.map(str::to_string), driver_name, opts)?;
    let opened = build(OpenCtx { node: node.clone() }).await;
    let node = finish_open(ctx, node, opened).await?;
    node.refcnt.set(node.refcnt.get() + 1);
    Ok(node)
}

/// Close a node that was opened but that nothing references (no parent, not monitor-owned),
/// e.g. a target opened for a command that then failed. Does nothing to a referenced node.
pub async fn close_unused(node: &Rc<Node>) {
    if node.refcnt() == 0 {
        unref_new(node).await;
    }
}
