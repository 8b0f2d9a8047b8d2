//! External snapshots (`blockdev-snapshot-sync`, `blockdev-snapshot`): an overlay goes on top of
//! a node, every user of the node moving to the overlay, whose backing child the node becomes.
//!
//! Prepare holds the node drained until clean, checks in QEMU's order, flushes the node, makes
//! (sync, unless mode=existing) and opens the overlay, and appends it in one two-phase graph
//! edit. Commit makes the old node read-only (best effort: a user still writing it keeps it
//! writable). Abort moves the users back and drops the overlay's backing edge; an image file
//! this action created (there was no file at that path before) is removed once the overlay is
//! closed, so a failed transaction leaves no new file behind.

use std::rc::Rc;

use serde_json::{Value, json};

use crate::engine::{Engine, ImageSpec, NewImageMode};
use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{
    DrainedSection, Node, ReplaceOptions, append, open_node, reopen_set_read_only, replace_node,
    set_backing, unref,
};
use crate::types::{ChildRole, Perms};
use crate::util::Options;

use super::{Action, TxnCtx};

/// Where the overlay comes from.
#[derive(Clone, Debug)]
pub enum SnapshotSource {
    /// `blockdev-snapshot-sync`: an image file, made unless `mode` is existing.
    Sync {
        /// `device`.
        device: Option<String>,
        /// `node-name`.
        node_name: Option<String>,
        /// `snapshot-file`.
        file: String,
        /// `snapshot-node-name`.
        overlay_name: Option<String>,
        /// `format` (default qcow2).
        format: Option<String>,
        /// `mode` (default absolute-paths).
        mode: NewImageMode,
    },
    /// `blockdev-snapshot`: an existing node.
    Node {
        /// `node`: the node to snapshot.
        node: String,
        /// `overlay`: the node that goes on top.
        overlay: String,
    },
}

/// One external snapshot action.
pub struct ExternalSnapshot {
    source: SnapshotSource,
    old: Option<Rc<Node>>,
    new: Option<Rc<Node>>,
    drained: Option<DrainedSection>,
    appended: bool,
    aborted: bool,
    /// A file this action made where there was none.
    created: Option<String>,
}

impl ExternalSnapshot {
    /// The action for `source`.
    pub fn new(source: SnapshotSource) -> ExternalSnapshot {
        ExternalSnapshot {
            source,
            old: None,
            new: None,
            drained: None,
            appended: false,
            aborted: false,
            created: None,
        }
    }

    async fn do_prepare(&mut self, engine: &Engine) -> Result<()> {
        let (device, node_name) = match &self.source {
            SnapshotSource::Sync {
                device, node_name, ..
            } => (device.clone(), node_name.clone()),
            SnapshotSource::Node { node, .. } => (Some(node.clone()), Some(node.clone())),
        };
        let old = engine
            .lookup(device.as_deref(), node_name.as_deref())
            .map_err(|e| Error::generic(e.message()))?;
        self.drained = Some(old.drained_begin().await);
        self.old = Some(old.clone());
        old.check_op_blockers()?;
        check_backing_blocker(&old)?;
        if !old.is_read_only() && crate::request::flush_node(&old).await.is_err() {
            return Err(Error::generic("An IO error has occurred"));
        }
        let new = match self.source.clone() {
            SnapshotSource::Sync {
                node_name,
                file,
                overlay_name,
                format,
                mode,
                ..
            } => {
                let overlay_name = check_overlay_name(engine, node_name, overlay_name)?;
                if mode == NewImageMode::AbsolutePaths {
                    self.create_overlay(engine, &old, &file, format.as_deref())
                        .await?;
                }
                open_overlay(engine, &file, format, overlay_name).await?
            }
            SnapshotSource::Node { overlay, .. } => engine
                .lookup(Some(&overlay), Some(&overlay))
                .map_err(|e| Error::generic(e.message()))?,
        };
        // Held until clean, as QEMU holds the overlay it opened or looked up.
        new.refcnt.set(new.refcnt.get() + 1);
        self.new = Some(new.clone());
        check_overlay(&new)?;
        append(&new, &old).await?;
        self.appended = true;
        Ok(())
    }

    /// Make the overlay image, backed by `old`'s image, as long as `old`.
    async fn create_overlay(
        &mut self,
        engine: &Engine,
        old: &Rc<Node>,
        file: &str,
        format: Option<&str>,
    ) -> Result<()> {
        let existed = engine.env().fs().exists(file);
        let spec = ImageSpec {
            path: file.to_string(),
            format: format.unwrap_or("qcow2").to_string(),
            size: old.len(),
            backing_file: Some(old.driver().filename()),
            backing_fmt: Some(old.driver_name().to_string()),
        };
        let r = engine.create_image(&spec).await;
        if !existed && engine.env().fs().exists(file) {
            self.created = Some(file.to_string());
        }
        r
    }
}

/// QEMU's op blocker of a backing node: an overlay cannot go between a node and its overlay.
fn check_backing_blocker(node: &Node) -> Result<()> {
    let parent = node
        .parents()
        .iter()
        .filter(|e| e.role().contains(ChildRole::COW))
        .find_map(|e| e.parent().node());
    match parent {
        Some(p) => Err(Error::generic(format!(
            "Node '{}' is busy: node is used as backing hd of '{}'",
            node.name(),
            p.name()
        ))),
        None => Ok(()),
    }
}

/// `snapshot-node-name`: required with `node-name`, and not a name in use.
fn check_overlay_name(
    engine: &Engine,
    node_name: Option<String>,
    overlay_name: Option<String>,
) -> Result<Option<String>> {
    if node_name.is_some() && overlay_name.is_none() {
        return Err(Error::generic("New overlay node-name missing"));
    }
    if let Some(name) = &overlay_name
        && engine.lookup(Some(name), Some(name)).is_ok()
    {
        return Err(Error::generic("New overlay node-name already in use"));
    }
    Ok(overlay_name)
}

/// Open the overlay image without its backing chain (the old node becomes its backing).
async fn open_overlay(
    engine: &Engine,
    file: &str,
    format: Option<String>,
    node_name: Option<String>,
) -> Result<Rc<Node>> {
    let driver = match format {
        Some(f) => f,
        None => crate::probe::probe_format(&**engine.env(), file, "").await?,
    };
    let mut opts = json!({
        "driver": driver,
        "file": {"driver": "file", "filename": file},
    });
    if let Some(n) = node_name {
        opts["node-name"] = json!(n);
    }
    if driver != "raw" {
        opts["backing"] = Value::Null;
    }
    open_node(engine.graph(), Options::new(opts)?).await
}

/// QEMU's checks of the overlay, in its order.
fn check_overlay(new: &Node) -> Result<()> {
    if new.cumulative_perms().0.contains(Perms::CONSISTENT_READ) {
        return Err(Error::generic("The overlay is already in use"));
    }
    new.check_op_blockers()?;
    if new.backing().is_some() {
        return Err(Error::generic("The overlay already has a backing image"));
    }
    if !new.driver().caps().supports_backing {
        return Err(Error::generic(
            "The overlay does not support backing images",
        ));
    }
    Ok(())
}

impl Action for ExternalSnapshot {
    fn kind(&self) -> &'static str {
        match self.source {
            SnapshotSource::Sync { .. } => "blockdev-snapshot-sync",
            SnapshotSource::Node { .. } => "blockdev-snapshot",
        }
    }

    fn prepare<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.do_prepare(cx.engine))
    }

    fn commit<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(old) = &self.old {
                // Best effort, as in QEMU: a user still writing the old node keeps it writable.
                let _ = reopen_set_read_only(old, true).await;
            }
        })
    }

    fn abort<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            self.aborted = true;
            let (Some(old), Some(new)) = (&self.old, &self.new) else {
                return;
            };
            if !self.appended {
                return;
            }
            // Undoing an edit that just succeeded on the same graph cannot conflict.
            let _ = replace_node(new, old, ReplaceOptions::default()).await;
            let _ = set_backing(new, None).await;
        })
    }

    fn clean<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            self.drained = None;
            let mut closed = true;
            if let Some(new) = self.new.take() {
                unref(&new).await;
                closed = new.refcnt() == 0;
            }
            if self.aborted
                && closed
                && let Some(path) = self.created.take()
            {
                let _ = cx.engine.env().fs().remove(&path);
            }
        })
    }
}
