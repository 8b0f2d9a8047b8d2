//! The link between a node's live named bitmaps and the persistent bitmaps its image format
//! stores (QEMU's `qcow2_load_dirty_bitmaps` / `qcow2_store_persistent_dirty_bitmaps` /
//! `qcow2_reopen_bitmaps_ro|rw`, done once here for every format through
//! [`FormatOps`](crate::driver::FormatOps)):
//! * at open, every stored bitmap becomes a live persistent bitmap: one stored in use (the
//!   image was not closed cleanly while the bitmap recorded) loads inconsistent and without
//!   bits; on a read-only node they load read-only; on a writable node they are all marked in
//!   use in the image before anything can write, so a crash leaves them inconsistent;
//! * at close and at a switch to read-only, every persistent bitmap that is consistent and
//!   writable is stored back with its bits and recording state, clearing its in-use flag;
//! * at a switch to read-write, the read-only ones become writable and are marked in use again.
//!
//! A format that keeps its bitmaps read-only for this open (qcow2 opened for check/repair)
//! loads them read-only: nothing is marked or stored.

use std::rc::Rc;

use crate::bitmap::{Bitmap, HBits, LoadedFlags};
use crate::driver::BitmapToStore;
use crate::error::Result;

use super::types::Node;

/// Load the image's stored bitmaps into `node`'s live bitmaps (a fresh open: the node has
/// none of their names yet), marking them in use when the node is writable.
pub(super) async fn load(node: &Rc<Node>) -> Result<()> {
    let drv = node.driver();
    // Known from the header already read: an image without bitmaps costs no I/O here.
    let Some(ops) = drv.format_ops().filter(|o| o.has_persistent_bitmaps()) else {
        return Ok(());
    };
    let stored = ops.stored_bitmaps().await?;
    if stored.is_empty() {
        return Ok(());
    }
    let readonly = node.is_read_only() || ops.bitmaps_read_only();
    let len = node.len();
    let mut loaded = Vec::with_capacity(stored.len());
    for s in &stored {
        let bits = if s.in_use {
            // Its bits on disk may miss writes: QEMU does not even read them.
            HBits::new(len.div_ceil(s.granularity))
        } else {
            ops.load_bitmap(&s.name).await?
        };
        let flags = LoadedFlags {
            enabled: s.auto,
            inconsistent: s.in_use,
            readonly,
        };
        loaded.push(Bitmap::from_loaded(
            &s.name,
            len,
            s.granularity,
            flags,
            bits,
        )?);
    }
    if !readonly && stored.iter().any(|s| !s.in_use) {
        ops.mark_bitmaps_in_use().await?;
    }
    // Inserted in directory order, each in front: the last entry comes first, as in QEMU.
    for b in loaded {
        node.bitmaps().insert(Rc::new(b))?;
    }
    Ok(())
}

/// The bitmaps [`store`] writes back: persistent, consistent and writable.
fn to_store(node: &Node) -> Vec<Rc<Bitmap>> {
    node.bitmaps()
        .all()
        .into_iter()
        .filter(|b| b.persistent() && !b.inconsistent() && !b.readonly())
        .collect()
}

/// Store every persistent, consistent, writable bitmap of `node` in its image, not in use
/// (a bitmap a job holds is stored with what its successor recorded, so nothing is lost).
/// Returns the bitmaps stored.
pub(super) async fn store(node: &Rc<Node>) -> Result<Vec<Rc<Bitmap>>> {
    let list = to_store(node);
    if list.is_empty() || node.is_read_only() {
        return Ok(Vec::new());
    }
    let drv = node.driver();
    let Some(ops) = drv.format_ops() else {
        return Ok(Vec::new());
    };
    let len = node.len();
    let held: Vec<(String, u64, bool, HBits)> = list
        .iter()
        .map(|b| {
            b.resize(len);
            (
                b.name(),
                b.granularity(),
                b.recording(),
                b.bits_to_persist(),
            )
        })
        .collect();
    let set: Vec<BitmapToStore<'_>> = held
        .iter()
        .map(|(name, granularity, enabled, bits)| BitmapToStore {
            name,
            granularity: *granularity,
            enabled: *enabled,
            bits,
        })
        .collect();
    ops.store_bitmaps(&set).await?;
    Ok(list)
}

/// Before `node` closes: store its bitmaps. A failure cannot be returned to anyone; it is
/// reported as QEMU reports it, and the bitmaps stay in use in the image (inconsistent at the
/// next open, never silently stale).
pub(super) async fn store_at_close(node: &Rc<Node>) {
    if let Err(e) = store(node).await {
        node.ctx().report(&format!(
            "Lost persistent bitmaps during inactivation of node '{}': {}",
            device_or_node_name(node),
            e.message()
        ));
    }
}

/// After a switch: the bitmaps `stored` before it follow the node's new mode.
pub(super) fn set_readonly(stored: &[Rc<Bitmap>], readonly: bool) {
    for b in stored {
        b.set_readonly(readonly);
    }
}

/// A switch to read-only that stored `stored` failed: the node stays writable, so its
/// bitmaps must be in use in the image again.
pub(super) async fn remark_after_failed_switch(node: &Rc<Node>, stored: &[Rc<Bitmap>]) {
    if stored.is_empty() {
        return;
    }
    if let Some(ops) = node.driver().format_ops()
        && let Err(e) = ops.mark_bitmaps_in_use().await
    {
        node.ctx().report(&format!(
            "Could not mark the persistent bitmaps of node '{}' in use: {}",
            device_or_node_name(node),
            e.message()
        ));
    }
}

/// After `node` became writable: its persistent read-only bitmaps become writable, marked in
/// use in the image first. On error they stay read-only.
pub(super) async fn after_read_write(node: &Rc<Node>) -> Result<()> {
    let drv = node.driver();
    let Some(ops) = drv.format_ops() else {
        return Ok(());
    };
    if ops.bitmaps_read_only() {
        return Ok(());
    }
    let list: Vec<Rc<Bitmap>> = node
        .bitmaps()
        .all()
        .into_iter()
        .filter(|b| b.persistent() && b.readonly())
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    if list.iter().any(|b| !b.inconsistent()) {
        ops.mark_bitmaps_in_use().await?;
    }
    set_readonly(&list, false);
    Ok(())
}

/// QEMU's `bdrv_get_device_or_node_name`.
fn device_or_node_name(node: &Node) -> String {
    let dev = node.device_name();
    if dev.is_empty() {
        node.name().to_string()
    } else {
        dev
    }
}
