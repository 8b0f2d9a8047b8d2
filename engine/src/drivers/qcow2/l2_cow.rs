//! Copy-on-write of an L2 table shared with an internal snapshot (its L1 entry lacks COPIED,
//! its refcount is above one): before an entry changes, the active L1 gets a private copy.
//! QEMU's order: new cluster (refcount durable), old table read (`l2_alloc_cow_read`), copy
//! written and flushed (`l2_alloc_write`), the L1 entry pointed at it with COPIED
//! (`l1_update`), then the old table loses the active L1's reference. The data clusters the
//! copy maps keep their counts: the snapshot's table and the copy each hold one reference.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::Result;
use crate::event::DebugEvent;

use super::Qcow2;
use super::lock::MetaGuard;
use super::units::HostOffset;

impl Qcow2 {
    /// Give L1 entry `l1i` a private copy of the shared L2 table at `old`; the copy's offset.
    pub(super) async fn cow_l2_table(
        &self,
        held: &MetaGuard<'_>,
        l1i: usize,
        old: HostOffset,
    ) -> Result<HostOffset> {
        let cs = self.layout.cs();
        let new = self
            .layout
            .cluster_offset(self.alloc_clusters(held, 1).await?);
        if !self.lazy.get() {
            self.write_back_refblocks(held).await?;
        }
        self.file.debug_event(DebugEvent::L2AllocCowRead).await;
        let table = self.l2_table_copy(held, old).await?;
        self.install_l2_table(held, l1i, new, table).await?;
        // The old table keeps the snapshot's reference; the active L1's goes once the new
        // entry is durable (the next metadata flush).
        self.free_later(held, old, cs, false);
        Ok(new)
    }
}
