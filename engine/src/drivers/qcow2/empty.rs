//! Emptying a qcow2 image (`qemu-img commit` empties the image it committed): every cluster is
//! dropped so the image reads from its backing file. A v3 image without snapshots, bitmaps or a
//! data file is rebuilt from scratch (header, one-cluster refcount table, one refblock, a zeroed
//! L1 table, and nothing else: the file shrinks to those clusters, as QEMU's does); any other
//! image has its clusters deallocated one by one.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::driver::Prealloc;
use crate::error::Result;
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::bitmaps::AUTOCLEAR_BITMAPS;
use super::cache::set_u64;
use super::header::OFF_L1;
use super::lock::MetaGuard;
use super::refcount::rb_set;
use super::units::HostCluster;

impl Qcow2 {
    /// Deallocate every cluster so the image reads entirely from its backing file (or as
    /// zeroes).
    pub(crate) async fn do_make_empty(&self) -> Result<()> {
        if self.can_rebuild_empty() {
            let held = self.meta.lock().await;
            return self.rebuild_empty(&held).await;
        }
        let len = self.layout.size.get().next_multiple_of(self.layout.cs());
        self.discard_clusters(0, len, true).await?;
        let held = &self.meta.lock().await;
        self.flush_metadata(held).await
    }

    /// The L1 table's size in whole clusters.
    fn l1_clusters(&self) -> u64 {
        (self.l2.l1_bytes()).div_ceil(self.layout.cs())
    }

    /// Whether the image can be rebuilt empty: v3 (the dirty bit covers the rebuild), nothing
    /// referenced outside the L1 table (snapshots, bitmaps, a LUKS header), guest data in the
    /// image itself,
    /// and header + refcount table + refblock + L1 covered by that one refblock.
    fn can_rebuild_empty(&self) -> bool {
        self.layout.version.get() >= 3
            && self.nb_snapshots() == 0
            && self.layout.autoclear.get() & AUTOCLEAR_BITMAPS == 0
            && !self.has_data_file()
            && self.crypto_area().is_none()
            && 3 + self.l1_clusters() <= 1 << self.layout.rb_bits()
    }

    /// Rebuild the image empty, metadata lock held. Crash safety: the dirty bit is set first,
    /// so an interrupted rebuild is repaired from the L1 table at the next open; the old L1 is
    /// zeroed (the image is empty from then on: only leaks remain), then the new structures'
    /// clusters are zeroed, and only then does the header point at them. Zeroes are valid in
    /// every place the header may still point at.
    async fn rebuild_empty(&self, held: &MetaGuard<'_>) -> Result<()> {
        let cs = self.layout.cs();
        let l1c = self.l1_clusters();
        self.flush_metadata(held).await?;
        let was_dirty = self.layout.incompat.get() & super::header::INCOMPAT_DIRTY != 0;
        if !was_dirty {
            self.set_dirty_bit(true).await?;
        }
        let zero = |off: u64, len: u64| async move {
            let buf = IoBuf::from_slice(&vec![0u8; len as usize]);
            self.file.write(off, buf, ReqFlags::NONE).await.1
        };
        let l1_bytes = self.l2.l1_bytes();
        zero(self.l2.l1_offset().bytes(), l1_bytes).await?;
        self.file.flush().await?;
        // The empty image's new structures are prepared (blkdebug's empty_image_prepare).
        self.file
            .debug_event(crate::event::DebugEvent::EmptyImagePrepare)
            .await;
        zero(cs, (2 + l1c) * cs).await?;
        self.file.flush().await?;
        // The header write below switches both the L1 table and the refcount table (QEMU
        // raises both events here).
        self.file
            .debug_event(crate::event::DebugEvent::L1Update)
            .await;
        self.file
            .debug_event(crate::event::DebugEvent::ReftableUpdate)
            .await;
        // l1_size (unchanged), l1_table_offset, refcount_table_offset and _clusters are
        // adjacent: one write switches them together.
        let mut hdr = Vec::with_capacity(24);
        hdr.extend_from_slice(&(self.l2.l1_len() as u32).to_be_bytes());
        hdr.extend_from_slice(&(3 * cs).to_be_bytes());
        hdr.extend_from_slice(&cs.to_be_bytes());
        hdr.extend_from_slice(&1u32.to_be_bytes());
        self.file
            .write(OFF_L1, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let mut table = vec![0u8; cs as usize];
        set_u64(&mut table, 0, 2 * cs);
        let mut block = vec![0u8; cs as usize];
        for c in 0..3 + l1c {
            rb_set(&mut block, self.layout.refcount_order.get(), c as usize, 1);
        }
        self.file
            .write(cs, IoBuf::from_slice(&table), ReqFlags::NONE)
            .await
            .1?;
        self.file
            .write(2 * cs, IoBuf::from_slice(&block), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        self.file
            .truncate((3 + l1c) * cs, false, Prealloc::Off)
            .await?;
        self.forget_tables(held, cs);
        if !was_dirty {
            self.set_dirty_bit(false).await?;
        }
        Ok(())
    }

    /// The in-memory state of the rebuilt image: an empty L1 at cluster 3, the refcount table
    /// at cluster 1 naming the refblock at cluster 2; no cached table is valid any more.
    fn forget_tables(&self, held: &MetaGuard<'_>, cs: u64) {
        let at = |c| self.layout.cluster_offset(HostCluster::new(c));
        self.alloc.take_deferred(held);
        self.l2.reset(at(3));
        let mut reftable = vec![0u64; (cs / 8) as usize];
        reftable[0] = at(2).bytes();
        self.alloc.replace_table(held, at(1), reftable);
    }
}
