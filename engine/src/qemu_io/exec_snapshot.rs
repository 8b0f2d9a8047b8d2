//! qemu-io's `-s` (snapshot mode): the image is opened read-only as the backing of a temporary
//! qcow2 overlay of the same size, created in the session's temporary directory and unlinked
//! as soon as it is open, so every write lands in the overlay and the image never changes.
//! The overlay's header names no backing file: the backing is attached by node, as QEMU's
//! temporary snapshot is, so it works for any image, `--image-opts` included.

use std::rc::Rc;

use serde_json::json;

use crate::engine::ImageSpec;
use crate::env::OpenOptions;
use crate::error::{Error, Result};
use crate::graph::Node;

use super::Session;
use crate::qemu_io::OpenSpec;

/// Node name of the image under a snapshot overlay (the overlay takes the usual name).
const BASE_NODE: &str = "snapshot-base";

impl Session {
    /// Open `spec`'s image read-only and put a temporary overlay on it; returns the overlay,
    /// leaving both nodes in `owned_nodes` (overlay first) for `close`.
    pub(super) async fn add_snapshot_overlay(&mut self, spec: &OpenSpec) -> Result<Rc<Node>> {
        let base_spec = OpenSpec {
            read_only: true,
            node_name: BASE_NODE.to_string(),
            ..spec.clone()
        };
        let base = base_spec.add_to(&self.engine).await?;
        self.owned_nodes.push(base.name().to_string());
        let path = self.claim_temp_file()?;
        let made = self.make_overlay(&path, &base, spec).await;
        // Unlinked at once: the open overlay stays usable and leaves no trace.
        let _ = self.engine.env().fs().remove(&path);
        let overlay = made?;
        self.owned_nodes.insert(0, overlay.name().to_string());
        Ok(overlay)
    }

    /// A new, empty file in the temporary directory (created exclusively, so two sessions never
    /// share one).
    fn claim_temp_file(&self) -> Result<String> {
        let fs = self.engine.env().fs();
        let exclusive = OpenOptions {
            write: true,
            create_new: true,
            ..Default::default()
        };
        let mut last = None;
        for n in 0..1000u32 {
            let path = format!("{}/vl.blk.{}.{n}", self.cfg.temp_dir, self.cfg.temp_tag);
            match fs.open(&path, exclusive) {
                Ok(_) => return Ok(path),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| Error::generic("no temporary file name left"))
            .context("Could not get temporary filename"))
    }

    async fn make_overlay(&self, path: &str, base: &Rc<Node>, spec: &OpenSpec) -> Result<Rc<Node>> {
        let image = ImageSpec {
            path: path.to_string(),
            format: "qcow2".into(),
            size: base.len(),
            backing_file: None,
            backing_fmt: None,
        };
        self.engine
            .create_image(&image)
            .await
            .map_err(|e| e.context("Could not create temporary overlay"))?;
        let top = OpenSpec {
            filename: None,
            format: None,
            image_opts: false,
            options: None,
            probed_raw: false,
            ..spec.clone()
        };
        let mut opts = json!({
            "driver": "qcow2",
            "node-name": spec.node_name,
            "file": {"driver": "file", "filename": path},
            "backing": base.name(),
        });
        if let Some(obj) = opts.as_object_mut() {
            top.inherit(obj);
        }
        self.engine.blockdev_add(opts).await
    }
}
