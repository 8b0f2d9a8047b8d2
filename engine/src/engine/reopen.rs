//! Reopening a device's image with another access mode (qemu-io's `reopen -r`/`-w`): the
//! device's own permissions and the node graph's read-only state change together, or not at
//! all.

use crate::backend::BlockBackend;
use crate::error::{Error, Result};
use crate::graph::reopen_set_read_only;
use crate::types::Perms;

use super::Engine;

/// What a device needs on top of reading to write its image.
fn write_perms() -> Perms {
    Perms::WRITE | Perms::RESIZE
}

impl Engine {
    /// Switch the image under `bb` to read-only (`true`) or read-write. Going read-only, the
    /// device first gives up its write permissions (so the graph's check sees no writer);
    /// going read-write, it takes them once the nodes are writable. On error the device and
    /// the nodes are as they were.
    pub async fn reopen_device(&self, bb: &BlockBackend, read_only: bool) -> Result<()> {
        let node = bb
            .root_node()
            .ok_or_else(|| Error::generic(format!("Device '{}' has no medium", bb.name())))?;
        let o = bb.options();
        if read_only {
            bb.set_perms(o.perm & !write_perms(), o.shared)?;
            if let Err(e) = reopen_set_read_only(&node, true).await {
                // Taking back what was held a moment ago cannot conflict.
                let _ = bb.set_perms(o.perm, o.shared);
                return Err(e);
            }
            return Ok(());
        }
        reopen_set_read_only(&node, false).await?;
        if let Err(e) = bb.set_perms(o.perm | write_perms(), o.shared) {
            let _ = reopen_set_read_only(&node, true).await;
            return Err(e);
        }
        Ok(())
    }
}
