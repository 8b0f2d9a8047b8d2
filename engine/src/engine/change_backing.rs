//! `change-backing-file`: rewrite the backing file name recorded in the header of a node in a
//! device's chain, with QEMU's refusals in QEMU's order. Only the image header changes, never
//! the graph. A read-only node is made writable for the rewrite and read-only again after.
//! The rewrite itself is the format's (`FormatOps::change_backing_file`): everything written
//! before is flushed first, then the header is written and flushed as one step, so a crash
//! leaves either the old or the new name.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::{Node, reopen_read_only, reopen_read_write};
use crate::types::ChildRole;

use super::Engine;

/// True when `image` is `top` or below it through backing or filtered children (QEMU's
/// `bdrv_chain_contains`).
fn chain_contains(top: &Rc<Node>, image: &Rc<Node>) -> bool {
    let mut cur = Some(top.clone());
    while let Some(n) = cur {
        if Rc::ptr_eq(&n, image) {
            return true;
        }
        cur = n
            .children()
            .into_iter()
            .find(|e| e.role().contains(ChildRole::COW) || e.role().contains(ChildRole::FILTERED))
            .map(|e| e.child_node());
    }
    false
}

impl Engine {
    /// `change-backing-file` {device, image-node-name, backing-file}.
    pub async fn change_backing_file(
        &self,
        device: &str,
        image_node_name: &str,
        backing_file: &str,
    ) -> Result<()> {
        let bs = self.root_bs(device)?;
        let image = self
            .lookup(None, Some(image_node_name))
            .map_err(|e| Error::generic(e.message()))?;
        let Some(backing) = image.backing() else {
            return Err(Error::generic(
                "not allowing backing file change on an image without a backing file",
            ));
        };
        image.check_op_blockers()?;
        if !chain_contains(&bs, &image) {
            return Err(Error::generic(format!(
                "'{device}' and image file are not in the same chain"
            )));
        }
        let switched = reopen_read_write(&image).await?;
        let format = backing.child_node().driver_name();
        let name = (!backing_file.is_empty()).then_some(backing_file);
        let written = crate::request::change_backing_file(&image, name, Some(format))
            .await
            .map_err(|e| e.context(format!("Could not change backing file to '{backing_file}'")));
        let restored = reopen_read_only(&switched).await;
        written.and(restored)
    }
}
