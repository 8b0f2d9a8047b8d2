//! qcow2 overlap checks and the corrupt bit.
//!
//! Before guest data or a metadata table is written, the target clusters are compared with
//! the metadata QEMU's `overlap-check` names, in QEMU's order (the first class met names the
//! corruption): the header, the active L1 table, the refcount table, the snapshot table, the
//! snapshots' (inactive) L1 tables, the active L2 tables, the refcount blocks, the inactive L2
//! tables (only with `overlap-check=all`: they are read from the image for each check, as in
//! QEMU) and the bitmap directory. A write that would land on metadata of
//! another kind is never issued: the image is marked corrupt (the corrupt bit is written to the
//! header and flushed), and this write fails with EIO; from then on every request fails with
//! ENOMEDIUM, as QEMU's node without its driver (`check_not_ejected`). A corrupt image
//! cannot be opened read-write again. Every corruption found (here, or by the mapping code:
//! misaligned table or cluster offsets) is reported as a BLOCK_IMAGE_CORRUPTED event with
//! QEMU's fields (device, node-name, msg, offset, size, fatal).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use serde_json::json;

use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::header::{INCOMPAT_CORRUPT, OFF_INCOMPAT};
use super::{OFFSET_MASK, Qcow2};

/// Metadata class: the image header (cluster 0).
pub(crate) const OL_HEADER: u32 = 1 << 0;
/// Metadata class: the active L1 table.
pub(crate) const OL_ACTIVE_L1: u32 = 1 << 1;
/// Metadata class: the active L2 tables.
pub(crate) const OL_ACTIVE_L2: u32 = 1 << 2;
/// Metadata class: the refcount table.
pub(crate) const OL_REFCOUNT_TABLE: u32 = 1 << 3;
/// Metadata class: the refcount blocks.
pub(crate) const OL_REFCOUNT_BLOCK: u32 = 1 << 4;
/// Metadata class: the internal snapshot table.
pub(crate) const OL_SNAPSHOT_TABLE: u32 = 1 << 5;
/// Metadata class: the internal snapshots' L1 tables.
pub(crate) const OL_INACTIVE_L1: u32 = 1 << 6;
/// Metadata class: the L2 tables the snapshots' L1 tables name.
pub(crate) const OL_INACTIVE_L2: u32 = 1 << 7;
/// Metadata class: the persistent bitmap directory.
pub(crate) const OL_BITMAP_DIRECTORY: u32 = 1 << 8;

/// `v` as C's `%#x` prints it (QEMU's corruption messages): "0" for zero, else "0x...".
pub(crate) fn c_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

impl Qcow2 {
    /// True once the image has been found corrupt (here or by an earlier user).
    pub(crate) fn is_corrupt(&self) -> bool {
        self.layout.incompat.get() & INCOMPAT_CORRUPT != 0
    }

    /// Refuse any request once corruption was signalled as fatal while open: the node then
    /// behaves as QEMU's does once it has dropped its driver (reads, writes and block status
    /// fail with ENOMEDIUM, flushes succeed, nothing more is written, not even at close).
    pub(crate) fn check_not_ejected(&self) -> Result<()> {
        if self.fatal_signaled.get() {
            return Err(Error::io(Errno::ENOMEDIUM));
        }
        Ok(())
    }

    /// The error every write of a corrupt image fails with.
    pub(crate) fn corrupt_error(&self) -> Error {
        Error::io_msg(
            Errno::EIO,
            "qcow2: image is marked corrupt; refusing to write to it",
        )
    }

    /// The first metadata class (not in `ignore`) whose clusters meet `[off, off + len)`.
    async fn overlap(&self, ignore: u32, off: u64, len: u64) -> Option<&'static str> {
        if len == 0 {
            return None;
        }
        // Structures the `overlap-check` option leaves out are not checked.
        let ignore = ignore | !self.runtime.borrow().overlap_mask;
        let cs = self.layout.cs();
        let (first, end) = (off / cs, (off + len).div_ceil(cs));
        let meets = |o: u64, l: u64| l > 0 && o / cs < end && (o + l).div_ceil(cs) > first;
        let checks = |class: u32| ignore & class == 0;
        if checks(OL_HEADER) && meets(0, cs) {
            return Some("qcow2_header");
        }
        let l1_len = self.l2.l1_bytes();
        if checks(OL_ACTIVE_L1) && meets(self.l2.l1_offset().bytes(), l1_len) {
            return Some("active L1 table");
        }
        let rt_len = self.alloc.reftable_bytes();
        if checks(OL_REFCOUNT_TABLE) && meets(self.alloc.reftable_offset().bytes(), rt_len) {
            return Some("refcount table");
        }
        let (table_at, table_len) = self.snap_table.get();
        if checks(OL_SNAPSHOT_TABLE) && meets(table_at, table_len) {
            return Some("snapshot table");
        }
        if checks(OL_INACTIVE_L1) && self.inactive_l1s().iter().any(|&(o, l)| meets(o, l)) {
            return Some("inactive L1 table");
        }
        if checks(OL_ACTIVE_L2) && self.l2.any_table(|off| meets(off.bytes(), cs)) {
            return Some("active L2 table");
        }
        if checks(OL_REFCOUNT_BLOCK) && self.alloc.any_block(|off| meets(off.bytes(), cs)) {
            return Some("refcount block");
        }
        if checks(OL_INACTIVE_L2) && self.meets_inactive_l2(&meets).await {
            return Some("inactive L2 table");
        }
        let (dir_at, dir_len) = self.bitmap_dir_at.get();
        if checks(OL_BITMAP_DIRECTORY) && meets(dir_at, dir_len) {
            return Some("bitmap directory");
        }
        None
    }

    /// Where each internal snapshot's L1 table is: (offset, bytes).
    fn inactive_l1s(&self) -> Vec<(u64, u64)> {
        let snaps = self.snaps.borrow();
        snaps
            .iter()
            .map(|s| (s.l1_offset, s.l1_size as u64 * 8))
            .collect()
    }

    /// Whether an L2 table some snapshot's L1 table names passes `meets`. The inactive L1
    /// tables are read from the image (nothing caches them); one that cannot be read is
    /// skipped, as QEMU skips it.
    async fn meets_inactive_l2(&self, meets: &impl Fn(u64, u64) -> bool) -> bool {
        let cs = self.layout.cs();
        for (at, bytes) in self.inactive_l1s() {
            let Ok(raw) = self.read_meta(at, bytes).await else {
                continue;
            };
            for e in raw.chunks_exact(8) {
                let l2 = u64::from_be_bytes(e.try_into().expect("8 bytes")) & OFFSET_MASK;
                if l2 != 0 && meets(l2, cs) {
                    return true;
                }
            }
        }
        false
    }

    /// Refuse a write of `[off, off + len)` that would overwrite live metadata (other than
    /// the `ignore` classes): mark the image corrupt and fail with EIO. Also fails once the
    /// image is corrupt.
    pub(crate) async fn pre_write_check(&self, ignore: u32, off: u64, len: u64) -> Result<()> {
        // In check mode, an image marked corrupt by an earlier user is being repaired: only
        // corruption found now stops the repair's writes.
        if (self.is_corrupt() && !self.check_mode) || self.fatal_signaled.get() {
            return Err(self.corrupt_error());
        }
        let Some(what) = self.overlap(ignore, off, len).await else {
            return Ok(());
        };
        let msg = format!("Preventing invalid write on metadata (overlaps with {what})");
        let full = self
            .signal_corruption(true, Some(off), Some(len), &msg)
            .await;
        Err(Error::io_msg(Errno::EIO, full))
    }

    /// Report corruption found in the image (QEMU's corruption signal): emit
    /// BLOCK_IMAGE_CORRUPTED naming the node and its device, and when `fatal` (only possible
    /// on a writable image) mark the image corrupt so no later write can damage it further.
    /// After the first event, non-fatal ones and fatal ones on an image already marked corrupt
    /// are not reported again. Returns the message for the error the caller fails with.
    pub(crate) async fn signal_corruption(
        &self,
        fatal: bool,
        offset: Option<u64>,
        size: Option<u64>,
        msg: &str,
    ) -> String {
        let fatal = fatal && !self.read_only.get();
        let full = if fatal {
            format!(
                "qcow2: Marking image as corrupt: {msg}; further corruption events will be \
                 suppressed"
            )
        } else {
            format!(
                "qcow2: Image is corrupt: {msg}; further non-fatal corruption events will be \
                 suppressed"
            )
        };
        if fatal {
            self.fatal_signaled.set(true);
        }
        if self.signaled_corruption.get() && (!fatal || self.is_corrupt()) {
            return full;
        }
        self.signaled_corruption.set(true);
        if let Some(node) = self.node.upgrade() {
            let mut data = json!({
                "device": node.device_name(),
                "node-name": node.name(),
                "msg": msg,
                "fatal": fatal,
            });
            if let Some(o) = offset {
                data["offset"] = json!(o);
            }
            if let Some(s) = size {
                data["size"] = json!(s);
            }
            node.ctx().emit("BLOCK_IMAGE_CORRUPTED", data);
            // QEMU prints the line on stderr as it signals the event.
            node.ctx().report(&full);
        }
        if fatal {
            self.mark_corrupt().await;
        }
        full
    }

    /// Set the corrupt bit in memory and, for v3 images, durably in the header (best effort:
    /// the image is treated as corrupt in memory even if the header cannot be written).
    async fn mark_corrupt(&self) {
        let bits = self.layout.incompat.get() | INCOMPAT_CORRUPT;
        self.layout.incompat.set(bits);
        if self.layout.version.get() < 3 {
            return;
        }
        let r = self
            .file
            .write(
                OFF_INCOMPAT,
                IoBuf::from_slice(&bits.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1;
        if r.is_ok() {
            let _ = self.file.flush().await;
        }
    }
}
