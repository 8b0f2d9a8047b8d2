//! The Engine's mirror commands: `blockdev-mirror` and `drive-mirror` (which first creates and
//! opens its target), and the checks they share (QEMU's `blockdev_mirror_common`), each with
//! QEMU's error in QEMU's order. The job itself is `job::mirror`.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::job::mirror::{self, CopyMode, MirrorParams, SyncMode};
use crate::job::{Job, JobOptions};
use crate::types::{ChildRole, OnError};

use super::Engine;
use super::image::{NewTarget, new_target_backing};

/// `drive-mirror`'s `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewImageMode {
    /// The target exists; it is opened with its own backing chain.
    Existing,
    /// Create the target; for sync=top/none its backing is the source's chain.
    AbsolutePaths,
}

/// Arguments of `blockdev-mirror` and `drive-mirror` (those only one of them has are `None`
/// for the other).
#[derive(Clone, Debug, Default)]
pub struct MirrorArgs {
    /// `job-id`.
    pub job_id: Option<String>,
    /// `device`: a device name or a root node name.
    pub device: String,
    /// `target`: a node name (blockdev-mirror) or a file name (drive-mirror).
    pub target: String,
    /// `format` (drive-mirror).
    pub format: Option<String>,
    /// `node-name` of the new target (drive-mirror).
    pub node_name: Option<String>,
    /// `replaces`.
    pub replaces: Option<String>,
    /// `sync`: full, top, none, incremental or bitmap (the last two are refused).
    pub sync: String,
    /// `mode` (drive-mirror).
    pub mode: Option<NewImageMode>,
    /// `speed`.
    pub speed: Option<i64>,
    /// `granularity`.
    pub granularity: Option<u64>,
    /// `buf-size`.
    pub buf_size: Option<i64>,
    /// `on-source-error`.
    pub on_source_error: Option<OnError>,
    /// `on-target-error`.
    pub on_target_error: Option<OnError>,
    /// `unmap` (drive-mirror).
    pub unmap: Option<bool>,
    /// `filter-node-name` (blockdev-mirror).
    pub filter_node_name: Option<String>,
    /// `copy-mode`.
    pub copy_mode: Option<CopyMode>,
    /// `auto-finalize`.
    pub auto_finalize: Option<bool>,
    /// `auto-dismiss`.
    pub auto_dismiss: Option<bool>,
}

/// Largest granularity QEMU accepts (64 MiB).
const MAX_GRANULARITY: u64 = 64 << 20;

impl Engine {
    /// QEMU's `qmp_get_root_bs`: a device's root node or a node without node parents.
    pub fn root_bs(&self, name: &str) -> Result<Rc<Node>> {
        let bs = match self.backend(name) {
            Ok(bb) => bb
                .root_node()
                .ok_or_else(|| Error::generic("Device has no medium"))?,
            Err(_) => self.graph().node(name).ok_or_else(|| {
                Error::generic(format!(
                    "Cannot find device='{name}' nor node-name='{name}'"
                ))
            })?,
        };
        if bs.parents().iter().any(|e| e.parent().node().is_some()) {
            return Err(Error::generic("Need a root block node"));
        }
        Ok(bs)
    }

    /// The device name a node is attached to, if any (default job id).
    pub(super) fn device_of(&self, node: &Rc<Node>) -> Option<String> {
        self.backends()
            .into_iter()
            .find(|bb| bb.root_node().is_some_and(|r| Rc::ptr_eq(&r, node)))
            .map(|bb| bb.name().to_string())
    }

    /// `blockdev-mirror`.
    pub async fn blockdev_mirror(&self, args: MirrorArgs) -> Result<Rc<Job>> {
        let bs = self.root_bs(&args.device)?;
        let target = self.graph().node(&args.target).ok_or_else(|| {
            Error::generic(format!(
                "Cannot find device='{0}' nor node-name='{0}'",
                args.target
            ))
        })?;
        let zero_target = args.sync == "full";
        self.mirror_common(args, bs, target, zero_target, false)
            .await
    }

    /// `drive-mirror`: create (unless mode=existing) and open the target image, then mirror.
    pub async fn drive_mirror(&self, args: MirrorArgs) -> Result<Rc<Job>> {
        let bs = self.root_bs(&args.device)?;
        // Early check, before a target is created for nothing.
        bs.check_op_blockers()?;
        let mode = args.mode.unwrap_or(NewImageMode::AbsolutePaths);
        let (sync, backing_node) = new_target_backing(&bs, &args.sync, mode);
        if args.replaces.is_some() && args.node_name.is_none() {
            return Err(Error::generic(
                "a node-name must be provided when replacing a named node of the graph",
            ));
        }
        let target = self
            .open_new_target(NewTarget {
                source: &bs,
                path: &args.target,
                format: args.format.clone(),
                mode,
                backing: backing_node.as_ref(),
                node_name: args.node_name.as_deref(),
            })
            .await?;
        let zero_target = sync == "full" && mode == NewImageMode::Existing;
        let backs_on_source = backing_node.as_ref().is_some_and(|n| Rc::ptr_eq(n, &bs));
        let mut args = args;
        args.sync = sync;
        let r = self
            .mirror_common(args, bs, target.clone(), zero_target, backs_on_source)
            .await;
        if r.is_err() && target.refcnt() == 0 {
            // Nobody took the new target: close it again.
            crate::graph::close_unused(&target).await;
        }
        r
    }

    /// QEMU's `blockdev_mirror_common` and the checks of `mirror_start`.
    async fn mirror_common(
        &self,
        a: MirrorArgs,
        bs: Rc<Node>,
        target: Rc<Node>,
        zero_target: bool,
        target_backs_on_source: bool,
    ) -> Result<Rc<Job>> {
        let granularity = a.granularity.unwrap_or(0);
        if granularity != 0 && !(512..=MAX_GRANULARITY).contains(&granularity) {
            return Err(Error::param_invalid(
                "granularity",
                "expects a value in range [512B, 64MB]",
            ));
        }
        if !granularity.is_power_of_two() && granularity != 0 {
            return Err(Error::param_invalid("granularity", "expects power of 2"));
        }
        bs.check_op_blockers()?;
        target.check_op_blockers()?;
        let mut sync = a.sync.clone();
        if bs.backing().is_none() && sync == "top" {
            sync = "full".into();
        }
        if let Some(name) = &a.replaces {
            let bs_size = bs.len();
            let to_replace = check_to_replace_node(&bs, name)?;
            if to_replace.len() != bs_size {
                return Err(Error::generic(
                    "cannot replace image with a mirror image of different size",
                ));
            }
        }
        let sync = SyncMode::parse(&sync)?;
        let speed = a.speed.unwrap_or(0);
        let job_id = match a.job_id.clone() {
            Some(id) => id,
            None => self.device_of(&bs).unwrap_or_default(),
        };
        let opts = JobOptions {
            id: job_id,
            internal: false,
            auto_finalize: a.auto_finalize.unwrap_or(true),
            auto_dismiss: a.auto_dismiss.unwrap_or(true),
            speed: u64::try_from(speed).map_err(|_| Error::generic("Invalid parameter 'speed'"))?,
        };
        let params = MirrorParams {
            source: bs,
            target,
            replaces: a.replaces,
            sync,
            granularity,
            buf_size: a.buf_size.unwrap_or(0),
            zero_target: zero_target && sync == SyncMode::Full,
            unmap: a.unmap.unwrap_or(true),
            on_source_error: a.on_source_error.unwrap_or(OnError::Report),
            on_target_error: a.on_target_error.unwrap_or(OnError::Report),
            filter_node_name: a.filter_node_name,
            copy_mode: a.copy_mode.unwrap_or(CopyMode::Background),
            target_backs_on_source,
            restore_read_only: Vec::new(),
        };
        mirror::start(self.jobs(), &opts, params).await
    }
}

/// QEMU's `check_to_replace_node`: the node must exist, not be blocked, and be `bs` itself or
/// reachable from it through filters only (replacing anything else could change what the guest
/// sees abruptly).
fn check_to_replace_node(bs: &Rc<Node>, name: &str) -> Result<Rc<Node>> {
    let to_replace = bs
        .ctx()
        .node(name)
        .ok_or_else(|| Error::generic(format!("Node name '{name}' not found")))?;
    to_replace.check_op_blockers()?;
    if !can_replace(bs, &to_replace) {
        return Err(Error::generic(format!(
            "Cannot replace '{name}' by a node mirrored from '{}', because it cannot be \
             guaranteed that doing so would not lead to an abrupt change of visible data",
            bs.name()
        )));
    }
    Ok(to_replace)
}

fn can_replace(bs: &Rc<Node>, to_replace: &Rc<Node>) -> bool {
    if Rc::ptr_eq(bs, to_replace) {
        return true;
    }
    let filtered = bs
        .children()
        .into_iter()
        .find(|e| e.role().contains(ChildRole::FILTERED));
    // Only through filters (a raw image without an offset or size window counts as one).
    filtered.is_some_and(|e| can_replace(&e.child_node(), to_replace))
}
