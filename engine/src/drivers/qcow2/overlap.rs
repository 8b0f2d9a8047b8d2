//! qcow2 overlap checks and the corrupt bit.
//!
//! Before guest data or a metadata table is written, the target clusters are compared with
//! the live metadata known in memory (QEMU's "cached" overlap-check set minus the snapshot
//! structures, which this driver does not load): the header, the active L1 table, the active L2
//! tables, the refcount table and the refcount blocks. A write that would land on metadata of
//! another kind is never issued: the image is marked corrupt (the corrupt bit is written to the
//! header and flushed), and this write and every later write fail with EIO. A corrupt image
//! cannot be opened read-write again. Every corruption found (here, or by the mapping code:
//! misaligned table or cluster offsets) is reported as a BLOCK_IMAGE_CORRUPTED event with
//! QEMU's fields (device, node-name, msg, offset, size, fatal).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use serde_json::json;

use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::header::{INCOMPAT_CORRUPT, OFF_INCOMPAT};

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

    /// The error every write of a corrupt image fails with.
    pub(crate) fn corrupt_error(&self) -> Error {
        Error::io_msg(
            Errno::EIO,
            "qcow2: image is marked corrupt; refusing to write to it",
        )
    }

    /// The first metadata class (not in `ignore`) whose clusters meet `[off, off + len)`.
    fn overlap(&self, ignore: u32, off: u64, len: u64) -> Option<&'static str> {
        if len == 0 {
            return None;
        }
        // Structures the `overlap-check` option leaves out are not checked.
        let ignore = ignore | !self.runtime.borrow().overlap_mask;
        let cs = self.layout.cs();
        let (first, end) = (off / cs, (off + len).div_ceil(cs));
        let meets = |o: u64, l: u64| l > 0 && o / cs < end && (o + l).div_ceil(cs) > first;
        if ignore & OL_HEADER == 0 && meets(0, cs) {
            return Some("qcow2_header");
        }
        let l1_len = self.l2.l1_bytes();
        if ignore & OL_ACTIVE_L1 == 0 && meets(self.l2.l1_offset().bytes(), l1_len) {
            return Some("active L1 table");
        }
        let rt_len = self.alloc.reftable_bytes();
        if ignore & OL_REFCOUNT_TABLE == 0 && meets(self.alloc.reftable_offset().bytes(), rt_len) {
            return Some("refcount table");
        }
        if ignore & OL_ACTIVE_L2 == 0 && self.l2.any_table(|off| meets(off.bytes(), cs)) {
            return Some("active L2 table");
        }
        if ignore & OL_REFCOUNT_BLOCK == 0 && self.alloc.any_block(|off| meets(off.bytes(), cs)) {
            return Some("refcount block");
        }
        None
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
        let Some(what) = self.overlap(ignore, off, len) else {
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
