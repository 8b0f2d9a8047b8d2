//! The named dirty bitmap verbs (`block-dirty-bitmap-add`, `-remove`, `-clear`, `-enable`,
//! `-disable`, `-merge`, `x-debug-block-dirty-bitmap-sha256`): node and bitmap lookup, QEMU's
//! refusals in QEMU's order, and the change itself on the node's [`NodeBitmaps`]. A refused
//! verb changes nothing (a merge resolves and checks every source before it touches the
//! target).
//!
//! [`NodeBitmaps`]: crate::bitmap::NodeBitmaps

use std::rc::Rc;

use crate::bitmap::{Bitmap, Use, valid_granularity};
use crate::driver::cannot_store_bitmaps;
use crate::error::{Error, Result};
use crate::graph::Node;

use super::Engine;

/// A merge source: a bitmap of the target's node, or of a named node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapRef {
    /// `"name"`: on the target's node.
    Local(String),
    /// `{"node": .., "name": ..}`.
    Node {
        /// The node.
        node: String,
        /// The bitmap.
        name: String,
    },
}

/// What `block-dirty-bitmap-add` asks for.
#[derive(Clone, Debug, Default)]
pub struct BitmapAddArgs {
    /// The node.
    pub node: String,
    /// The new bitmap's name.
    pub name: String,
    /// Bytes per bit (`None`: QEMU's default for the node).
    pub granularity: Option<u64>,
    /// Store the bitmap in the image.
    pub persistent: bool,
    /// Create it not recording.
    pub disabled: bool,
}

impl Engine {
    /// `block-dirty-bitmap-add`.
    pub fn bitmap_add(&self, args: &BitmapAddArgs) -> Result<Rc<Bitmap>> {
        if args.name.is_empty() {
            return Err(Error::generic("Bitmap name cannot be empty"));
        }
        // A device name works too, as everywhere QEMU takes `node` here.
        let node = self
            .lookup(Some(&args.node), Some(&args.node))
            .map_err(|e| Error::generic(e.message()))?;
        let granularity = args
            .granularity
            .unwrap_or_else(|| default_granularity(&node));
        if !valid_granularity(granularity) {
            return Err(Error::generic(
                "Granularity must be power of 2 and at least 512",
            ));
        }
        if args.persistent {
            match node.driver().format_ops() {
                Some(ops) => {
                    let taken = node.bitmaps().find(&args.name).is_some();
                    ops.can_store_new_bitmap(node.name(), &args.name, granularity, taken)?
                }
                None => return Err(cannot_store_bitmaps(node.name())),
            }
        }
        let b = node
            .bitmaps()
            .create(&args.name, node.len(), granularity, args.disabled)?;
        b.set_persistent(args.persistent);
        Ok(b)
    }

    /// Find bitmap `name` of node `node` (QEMU's messages when either is missing).
    pub fn bitmap(&self, node: &str, name: &str) -> Result<(Rc<Node>, Rc<Bitmap>)> {
        let n = self
            .lookup(Some(node), Some(node))
            .map_err(|_| Error::generic(format!("Node '{node}' not found")))?;
        let b = n
            .bitmaps()
            .find(name)
            .ok_or_else(|| Error::generic(format!("Dirty bitmap '{name}' not found")))?;
        Ok((n, b))
    }

    /// `block-dirty-bitmap-remove`: also from the image when persistent.
    pub async fn bitmap_remove(&self, node: &str, name: &str) -> Result<()> {
        let (n, b) = self.bitmap(node, name)?;
        b.check(Use::Remove)?;
        if b.persistent()
            && let Some(ops) = n.driver().format_ops()
        {
            ops.remove_bitmap(name).await?;
        }
        n.bitmaps().remove(name);
        Ok(())
    }

    /// `block-dirty-bitmap-clear`.
    pub fn bitmap_clear(&self, node: &str, name: &str) -> Result<()> {
        let (_, b) = self.bitmap(node, name)?;
        b.check(Use::Modify)?;
        b.clear();
        Ok(())
    }

    /// `block-dirty-bitmap-enable` (`true`) and `-disable`.
    pub fn bitmap_set_enabled(&self, node: &str, name: &str, enabled: bool) -> Result<()> {
        let (_, b) = self.bitmap(node, name)?;
        b.check(Use::Read)?;
        b.set_enabled(enabled);
        Ok(())
    }

    /// `block-dirty-bitmap-merge`: the union of `sources` into `target` of `node`.
    pub fn bitmap_merge(&self, node: &str, target: &str, sources: &[BitmapRef]) -> Result<()> {
        let (_, dst) = self.bitmap(node, target)?;
        dst.check(Use::Modify)?;
        let mut srcs = Vec::with_capacity(sources.len());
        for s in sources {
            let (_, src) = match s {
                BitmapRef::Local(name) => self.bitmap(node, name)?,
                BitmapRef::Node { node, name } => self.bitmap(node, name)?,
            };
            src.check(Use::Read)?;
            dst.check_merge_size(&src)?;
            srcs.push(src);
        }
        for src in srcs {
            dst.merge_from(&src);
        }
        Ok(())
    }

    /// `x-debug-block-dirty-bitmap-sha256`: the hash of the serialised bits, in hex.
    pub fn bitmap_sha256(&self, node: &str, name: &str) -> Result<String> {
        Ok(self.bitmap(node, name)?.1.sha256_hex())
    }
}

/// QEMU's default granularity: the node's cluster size clamped to 4 KiB..64 KiB, or 64 KiB
/// when it has no clusters.
pub fn default_granularity(node: &Node) -> u64 {
    match node.driver().image_info().cluster_size {
        0 => 65536,
        c => c.clamp(4096, 65536),
    }
}
