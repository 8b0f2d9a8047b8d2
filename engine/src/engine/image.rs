//! Image creation at the Engine level (what drive-mirror needs to make its target): a raw file
//! of a size, or a qcow2 image with an optional backing file name, written through the engine's
//! own drivers on the env's file system. Jobs never create images themselves.

use std::rc::{Rc, Weak};

use serde_json::json;

use crate::drivers::qcow2::{self, CreateOptions};
use crate::env::OpenOptions;
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
        let create = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        };
        drop(
            self.env()
                .fs()
                .open(&spec.path, create)
                .map_err(|e| e.context(format!("Could not create '{}'", spec.path)))?,
        );
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
