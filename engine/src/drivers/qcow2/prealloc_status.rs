//! Is this image metadata-preallocated? When most clusters the refcounts call used hold no
//! data in the file, the image was preallocated with `preallocation=metadata` (or resized so),
//! and a data cluster over a hole of the file reads as zeroes: zero-seeking block status asks
//! the file then (`request::status::chain_status_want_zero`), and map shows such clusters as
//! `"data": true, "zero": true`, as QEMU's does. The test (once per open, when first asked) is
//! QEMU's heuristic: at least 10/9 of the file's really allocated clusters (and two more) have
//! a non-zero refcount.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::Result;

use super::Qcow2;
use super::lock::MetaGuard;
use super::units::HostCluster;

impl Qcow2 {
    /// Whether the image looks metadata-preallocated (decided once per open). Metadata lock
    /// held.
    pub(super) async fn metadata_preallocated(&self, held: &MetaGuard<'_>) -> Result<bool> {
        if let Some(known) = self.metadata_prealloc.get() {
            return Ok(known);
        }
        let cs = self.layout.cs();
        let file_len = self.file.len();
        // What the file system holds, as QEMU measures it; else the file's data runs.
        let real = match self.file.node().driver().allocated_bytes() {
            Some(bytes) => bytes,
            None => {
                let mut real = 0u64;
                let mut pos = 0u64;
                while pos < file_len {
                    let st = self.file.block_status(pos, file_len - pos).await?;
                    if !st.mapping.is_zero() {
                        real += st.len;
                    }
                    pos += st.len.max(1);
                }
                real
            }
        };
        let real_clusters = real / cs;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let mut used = 0u64;
        let mut idx = HostCluster::new(0);
        let end = HostCluster::new(file_len.div_ceil(cs));
        while idx < end && used < threshold {
            used += u64::from(self.refcount(held, idx).await? > 0);
            idx += 1;
        }
        let known = used >= threshold;
        self.metadata_prealloc.set(Some(known));
        Ok(known)
    }
}
