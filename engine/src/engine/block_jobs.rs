//! `block-stream` and `block-commit`: QEMU 5.x's validation, in its order and with its error
//! classes and messages, then the jobs in `job::stream`, `job::commit` (intermediate top) and
//! `job::active_commit` (active top).
//!
//! Every check happens before anything changes, so a refused command leaves the graph exactly
//! as it was. A read-only node that a stream or an intermediate commit
//! writes is reopened read-write by the job itself (active commit does not do so yet).

use std::rc::Rc;

use crate::error::{Error, ErrorClass, Result};
use crate::graph::Node;
use crate::job::{Job, JobOptions, active_commit, commit, stream};
use crate::types::OnError;

use super::Engine;

/// Options every block job command shares.
#[derive(Clone, Debug)]
pub struct BlockJobArgs {
    /// `job-id` (defaults to the device name).
    pub job_id: Option<String>,
    /// `speed` in bytes per second (negative is refused).
    pub speed: i64,
    /// `on-error`.
    pub on_error: OnError,
    /// `auto-finalize`.
    pub auto_finalize: bool,
    /// `auto-dismiss`.
    pub auto_dismiss: bool,
}

impl Default for BlockJobArgs {
    fn default() -> BlockJobArgs {
        BlockJobArgs {
            job_id: None,
            speed: 0,
            on_error: OnError::Report,
            auto_finalize: true,
            auto_dismiss: true,
        }
    }
}

/// `block-stream`'s arguments.
#[derive(Clone, Debug, Default)]
pub struct StreamArgs {
    /// `device`: a device or node name.
    pub device: String,
    /// `base`: a backing file name in the chain.
    pub base: Option<String>,
    /// `base-node`.
    pub base_node: Option<String>,
    /// `backing-file`: the name written into the top's header.
    pub backing_file: Option<String>,
    /// The common job options.
    pub job: BlockJobArgs,
}

/// `block-commit`'s arguments.
#[derive(Clone, Debug, Default)]
pub struct CommitArgs {
    /// `device`: a device or node name (the active layer of the chain).
    pub device: String,
    /// `top`: a file name in the chain.
    pub top: Option<String>,
    /// `top-node`.
    pub top_node: Option<String>,
    /// `base`: a file name in the chain.
    pub base: Option<String>,
    /// `base-node`.
    pub base_node: Option<String>,
    /// `backing-file`: the name written into the overlay's header.
    pub backing_file: Option<String>,
    /// `filter-node-name`.
    pub filter_node_name: Option<String>,
    /// The common job options.
    pub job: BlockJobArgs,
}

fn backing_of(node: &Rc<Node>) -> Option<Rc<Node>> {
    node.backing().map(|e| e.child_node())
}

/// True when `node` is `top` or lies in `top`'s backing chain.
fn chain_contains(top: &Rc<Node>, node: &Rc<Node>) -> bool {
    let mut cur = Some(top.clone());
    while let Some(n) = cur {
        if Rc::ptr_eq(&n, node) {
            return true;
        }
        cur = backing_of(&n);
    }
    false
}

/// QEMU's `bdrv_find_backing_image`: the image below `top` whose file name is `name`, either as
/// written or relative to the directory of the image above it.
fn find_backing_image(top: &Rc<Node>, name: &str) -> Option<Rc<Node>> {
    let mut above = top.clone();
    while let Some(below) = backing_of(&above) {
        let (file, over) = (below.driver().filename(), above.driver().filename());
        if crate::filename::names_backing(&file, &over, name) {
            return Some(below);
        }
        above = below;
    }
    None
}

/// The bottom image of `top`'s chain (QEMU's `bdrv_find_base`).
fn find_base(top: &Rc<Node>) -> Rc<Node> {
    let mut n = top.clone();
    while let Some(b) = backing_of(&n) {
        n = b;
    }
    n
}

/// The image whose backing file is `top`, walking down from `active`.
fn find_overlay(active: &Rc<Node>, top: &Rc<Node>) -> Option<Rc<Node>> {
    let mut n = active.clone();
    while let Some(b) = backing_of(&n) {
        if Rc::ptr_eq(&b, top) {
            return Some(n);
        }
        n = b;
    }
    None
}

impl Engine {
    /// QEMU's `bdrv_lookup_bs(name, name)` with its GenericError.
    fn lookup_device_or_node(&self, name: &str) -> Result<Rc<Node>> {
        if let Ok(bb) = self.backend(name) {
            return bb
                .root_node()
                .ok_or_else(|| Error::generic(format!("Device '{name}' has no medium")));
        }
        self.graph().node(name).ok_or_else(|| {
            Error::generic(format!("Cannot find device={name} nor node_name={name}"))
        })
    }

    /// QEMU's `bdrv_lookup_bs(NULL, name)`.
    fn lookup_node_only(&self, name: &str) -> Result<Rc<Node>> {
        self.graph()
            .node(name)
            .ok_or_else(|| Error::generic(format!("Cannot find device= nor node_name={name}")))
    }

    /// The job options, the id defaulting to the name of the device attached to `bs` (empty
    /// when none is, which the registry refuses).
    fn job_options(&self, bs: &Rc<Node>, a: &BlockJobArgs) -> Result<JobOptions> {
        let id = match &a.job_id {
            Some(id) => id.clone(),
            None => self
                .backends()
                .into_iter()
                .find(|bb| bb.root_node().is_some_and(|r| Rc::ptr_eq(&r, bs)))
                .map(|bb| bb.name().to_string())
                .unwrap_or_default(),
        };
        let speed =
            u64::try_from(a.speed).map_err(|_| Error::generic("Invalid parameter 'speed'"))?;
        Ok(JobOptions {
            id,
            internal: false,
            auto_finalize: a.auto_finalize,
            auto_dismiss: a.auto_dismiss,
            speed,
        })
    }

    /// `block-stream`.
    pub async fn block_stream(&self, a: StreamArgs) -> Result<Rc<Job>> {
        let bs = self.lookup_device_or_node(&a.device)?;
        if a.base.is_some() && a.base_node.is_some() {
            return Err(Error::generic(
                "'base' and 'base-node' cannot be specified at the same time",
            ));
        }
        let mut base = None;
        let mut base_name = None;
        if let Some(name) = &a.base {
            let b = find_backing_image(&bs, name)
                .ok_or_else(|| Error::generic(format!("Base '{name}' not found")))?;
            base = Some(b);
            base_name = Some(name.clone());
        }
        if let Some(name) = &a.base_node {
            let b = self.lookup_node_only(name)?;
            if Rc::ptr_eq(&b, &bs) || !chain_contains(&bs, &b) {
                return Err(Error::generic(format!(
                    "Node '{name}' is not a backing image of '{}'",
                    a.device
                )));
            }
            base_name = Some(b.driver().filename());
            base = Some(b);
        }
        let mut n = Some(bs.clone());
        while let Some(node) = n {
            if base.as_ref().is_some_and(|b| Rc::ptr_eq(b, &node)) {
                break;
            }
            node.check_op_blockers()?;
            n = backing_of(&node);
        }
        if base.is_none() && a.backing_file.is_some() {
            return Err(Error::generic(
                "backing file specified, but streaming the entire chain",
            ));
        }
        let backing_file = a.backing_file.clone().or(base_name);
        let opts = self.job_options(&bs, &a.job)?;
        stream::start(self.jobs(), &opts, bs, base, backing_file, a.job.on_error).await
    }

    /// `block-commit`.
    pub async fn block_commit(&self, a: CommitArgs) -> Result<Rc<Job>> {
        let bs = self.commit_device(&a.device)?;
        bs.check_op_blockers()?;
        let top = self.commit_top(&bs, &a)?;
        let base = self.commit_base(&top, &a)?;
        check_chain_blockers(&top, &base)?;
        if Rc::ptr_eq(&top, &base) {
            return Err(Error::generic("cannot commit an image into itself"));
        }
        let on_error = a.job.on_error;
        if Rc::ptr_eq(&top, &bs) {
            if a.backing_file.is_some() {
                return Err(Error::generic(
                    "'backing-file' specified, but 'top' is the active layer",
                ));
            }
            let opts = self.job_options(&bs, &a.job)?;
            return active_commit::start(
                self.jobs(),
                &opts,
                &top,
                &base,
                on_error,
                a.filter_node_name.as_deref(),
            )
            .await;
        }
        let overlay = find_overlay(&bs, &top).expect("top lies below the active layer");
        overlay.check_op_blockers()?;
        let opts = self.job_options(&bs, &a.job)?;
        let spec = commit::CommitSpec {
            overlay: Some(overlay),
            top,
            base,
            backing_file: a.backing_file.clone(),
            on_error,
            filter_node_name: a.filter_node_name.clone(),
        };
        commit::start(self.jobs(), &opts, spec).await
    }

    /// block-commit's `device`: a device's root node, or a node by name.
    fn commit_device(&self, device: &str) -> Result<Rc<Node>> {
        self.backend(device)
            .ok()
            .and_then(|bb| bb.root_node())
            .or_else(|| self.graph().node(device))
            .ok_or_else(|| {
                Error::with_class(
                    ErrorClass::DeviceNotFound,
                    format!("Device '{device}' not found"),
                )
            })
    }

    /// block-commit's top: `top-node`, `top` (a file name in the chain) or the active layer.
    fn commit_top(&self, bs: &Rc<Node>, a: &CommitArgs) -> Result<Rc<Node>> {
        let mut top = Some(bs.clone());
        if a.top_node.is_some() && a.top.is_some() {
            return Err(Error::generic(
                "'top-node' and 'top' are mutually exclusive",
            ));
        } else if let Some(name) = &a.top_node {
            let t = self.lookup_node_only(name)?;
            if !chain_contains(bs, &t) {
                return Err(Error::generic(format!(
                    "'{name}' is not in this backing file chain"
                )));
            }
            top = Some(t);
        } else if let Some(name) = &a.top
            && bs.driver().filename() != *name
        {
            top = find_backing_image(bs, name);
        }
        top.ok_or_else(|| {
            Error::generic(format!(
                "Top image file {} not found",
                a.top.as_deref().unwrap_or("NULL")
            ))
        })
    }

    /// block-commit's base: `base-node`, `base` (a file name below top) or the chain's bottom.
    fn commit_base(&self, top: &Rc<Node>, a: &CommitArgs) -> Result<Rc<Node>> {
        let base = if a.base_node.is_some() && a.base.is_some() {
            return Err(Error::generic(
                "'base-node' and 'base' are mutually exclusive",
            ));
        } else if let Some(name) = &a.base_node {
            let b = self.lookup_node_only(name)?;
            if !chain_contains(top, &b) {
                return Err(Error::generic(format!(
                    "'{name}' is not in this backing file chain"
                )));
            }
            Some(b)
        } else if let Some(name) = &a.base {
            find_backing_image(top, name)
        } else {
            Some(find_base(top))
        };
        base.ok_or_else(|| {
            Error::generic(format!(
                "Base '{}' not found",
                a.base.as_deref().unwrap_or("NULL")
            ))
        })
    }
}

/// Every node from `top` down to `base` (inclusive) must allow a block job.
fn check_chain_blockers(top: &Rc<Node>, base: &Rc<Node>) -> Result<()> {
    let mut n = Some(top.clone());
    while let Some(node) = n {
        node.check_op_blockers()?;
        if Rc::ptr_eq(&node, base) {
            break;
        }
        n = backing_of(&node);
    }
    Ok(())
}
