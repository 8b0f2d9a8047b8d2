//! Image creation at the Engine level (what drive-mirror needs to make its target): a raw file
//! of a size, or a qcow2 image with an optional backing file name, written through the engine's
//! own drivers on the env's file system. Jobs never create images themselves.

use std::rc::{Rc, Weak};

use serde_json::json;

use crate::drivers::qcow2::{self, CreateOptions};
use crate::error::{Error, Result};
use crate::graph::{ParentOps, attach_external, detach, open_node};
use crate::types::Perms;
use crate::util::Options;

use super::Engine;

/// The short-lived user that writes a new image's metadata.
struct Creator;

impl ParentOps for Creator {
    fn describe(&self) -> String {
        "image creation".into()
    }
}

/// What to create.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Path on the env's file system.
    pub path: String,
    /// "raw" or "qcow2".
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Backing file name written into the header (qcow2 only).
    pub backing_file: Option<String>,
    /// Backing format written into the header (qcow2 only).
    pub backing_fmt: Option<String>,
}

impl Engine {
    /// Create an image as `qemu-img create` would (QEMU's `bdrv_img_create` errors).
    pub async fn create_image(&self, spec: &ImageSpec) -> Result<()> {
        if !matches!(spec.format.as_str(), "raw" | "qcow2") {
            return Err(match spec.format.as_str() {
                "file" | "blkdebug" | "null-co" | "null-aio" => Error::generic(format!(
                    "Format driver '{}' does not support image creation",
                    spec.format
                )),
                f => Error::generic(format!("Unknown file format '{f}'")),
            });
        }
        if spec.format == "raw" && spec.backing_file.is_some() {
            return Err(Error::generic(
                "Backing file not supported for file format 'raw'",
            ));
        }
        crate::drivers::create_host_file(&**self.env(), &spec.path)?;
        let file = open_node(
            self.graph(),
            Options::new(json!({"driver": "file", "filename": spec.path}))?,
        )
        .await?;
        let creator: Rc<dyn ParentOps> = Rc::new(Creator);
        let weak: Weak<dyn ParentOps> = Rc::downgrade(&creator);
        let all = Perms::CONSISTENT_READ | Perms::WRITE | Perms::RESIZE;
        let child = attach_external(weak, &file, "create", all, Perms::ALL)?;
        let made = if spec.format == "qcow2" {
            let o = CreateOptions {
                size: spec.size,
                backing_file: spec.backing_file.clone(),
                backing_fmt: spec.backing_fmt.clone(),
                ..CreateOptions::default()
            };
            qcow2::create(&child, &o).await
        } else {
            child
                .truncate(spec.size, true, crate::driver::Prealloc::Off)
                .await
        };
        let flushed = child.flush().await;
        detach(child.edge()).await?;
        made.and(flushed)
    }
}

/// The image drive-mirror and drive-backup make (or open, mode=existing) for their target.
pub(super) struct NewTarget<'a> {
    /// The node being copied (its format is the default, its length the size).
    pub source: &'a Rc<crate::graph::Node>,
    /// The target's file name.
    pub path: &'a str,
    /// `format` (default: the source's, unless mode=existing, where it is probed).
    pub format: Option<String>,
    /// `mode`.
    pub mode: super::NewImageMode,
    /// The node backing a new target (see [`new_target_backing`]).
    pub backing: Option<&'a Rc<crate::graph::Node>>,
    /// `node-name` of the target.
    pub node_name: Option<&'a str>,
}

/// The sync mode to use and the node that backs a new target, as QEMU's drive-mirror and
/// drive-backup choose them: sync=top of a source without backing file is full; a new image for
/// sync=top is backed by the source's backing node, for sync=none by the source itself, for
/// sync=full by nothing; an existing image keeps its own.
pub(super) fn new_target_backing(
    bs: &Rc<crate::graph::Node>,
    sync: &str,
    mode: super::NewImageMode,
) -> (String, Option<Rc<crate::graph::Node>>) {
    let mut sync = sync.to_string();
    let mut source = bs.backing().map(|e| e.child_node());
    if source.is_none() && sync == "top" {
        sync = "full".into();
    }
    if sync == "none" {
        source = Some(bs.clone());
    }
    let backing = match mode {
        super::NewImageMode::AbsolutePaths if sync != "full" => source,
        _ => None,
    };
    (sync, backing)
}

impl Engine {
    /// Create (unless mode=existing) and open a job's new target image.
    pub(super) async fn open_new_target(&self, t: NewTarget<'_>) -> Result<Rc<crate::graph::Node>> {
        use super::NewImageMode;
        let format = match (t.format, t.mode) {
            (Some(f), _) => Some(f),
            (None, NewImageMode::Existing) => None,
            (None, NewImageMode::AbsolutePaths) => Some(t.source.driver_name().to_string()),
        };
        if t.mode == NewImageMode::AbsolutePaths {
            let spec = ImageSpec {
                path: t.path.to_string(),
                format: format.clone().expect("absolute-paths always has a format"),
                size: t.source.len(),
                backing_file: t.backing.map(|n| n.driver().filename()),
                backing_fmt: t.backing.map(|n| n.driver_name().to_string()),
            };
            self.create_image(&spec).await?;
        }
        let mut opts = json!({"file": {"driver": "file", "filename": t.path}});
        if let Some(n) = t.node_name {
            opts["node-name"] = json!(n);
        }
        let fmt = match format {
            Some(f) => f,
            None => crate::probe::probe_format(&**self.env(), t.path, "").await?,
        };
        opts["driver"] = json!(fmt);
        if fmt == "qcow2" && t.mode == NewImageMode::AbsolutePaths {
            // The source's chain backs the new target (by node, not opened a second time).
            opts["backing"] = match t.backing {
                Some(n) => json!(n.name()),
                None => serde_json::Value::Null,
            };
        }
        open_node(self.graph(), Options::new(opts)?).await
    }
}
