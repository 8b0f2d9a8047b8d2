//! Changing the refcount width (`qemu-img amend -o refcount_bits=N`).
//!
//! The refcounts are counted afresh from everything the header reaches (as the dirty-image
//! repair counts them, `repair.rs`), a complete refcount table and blocks of the new width are
//! written after the end of the file, covering themselves, and flushed; then one write inside
//! the first sector switches the header's refcount table offset, its size and the refcount
//! order together, and is flushed. A power loss before that write leaves the old structures in
//! charge (the new clusters past them are unreferenced), after it the new ones, which count
//! the old table and blocks as free: either way the image checks clean with its data intact.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};

use super::Qcow2;
use super::amend::Progress;
use super::header::{OFF_REFCOUNT_ORDER, OFF_REFTABLE};
use super::units::HostOffset;

/// The largest refcount a `2^order`-bit entry holds.
fn max_refcount(order: u32) -> u64 {
    if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

impl Qcow2 {
    /// Rewrite the refcount structures with `2^order`-bit entries and switch to them.
    pub(super) async fn change_refcount_order(
        &self,
        order: u32,
        progress: &Progress<'_>,
    ) -> Result<()> {
        debug_assert_eq!(
            self.layout.version.get(),
            3,
            "v2 headers have no refcount order"
        );
        let held = &self.meta.lock().await;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        let cs = self.layout.cs();
        let mut counts = super::check_walk::cluster_counts(self.file.len(), cs)?;
        self.count_mapped_refs(&mut counts).await?;
        self.count_bitmap_refs(&mut counts).await?;
        let max = max_refcount(order);
        if let Some((c, n)) = counts.iter().enumerate().find(|(_, n)| **n > max) {
            return Err(Error::io_msg(
                Errno::EINVAL,
                format!(
                    "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} \
                     has a refcount of {n}",
                    1u32 << order,
                    c as u64 * cs
                ),
            ));
        }
        progress.at(0.3);
        let base = self.file.len().div_ceil(cs).max(1);
        let (area, table) = self.new_refcount_structures(&mut counts, base, order)?;
        let table_off = base * cs;
        self.write_flushed(table_off, &area).await?;
        progress.at(0.8);
        // Offset, cluster count and order in one write of the first sector, with the fields
        // between them (snapshots, feature bits) as they are on disk.
        let (raw, _) = self.read_header_raw().await?;
        let (start, end) = (OFF_REFTABLE as usize, OFF_REFCOUNT_ORDER as usize + 4);
        let mut fields = raw[start..end].to_vec();
        let rt_clusters = (table.len() as u64 * 8).div_ceil(cs) as u32;
        fields[0..8].copy_from_slice(&table_off.to_be_bytes());
        fields[8..12].copy_from_slice(&rt_clusters.to_be_bytes());
        fields[end - start - 4..].copy_from_slice(&order.to_be_bytes());
        self.write_flushed(OFF_REFTABLE, &fields).await?;
        self.layout.refcount_order.set(order);
        self.alloc
            .replace_table(held, HostOffset::new(table_off), table);
        Ok(())
    }
}
