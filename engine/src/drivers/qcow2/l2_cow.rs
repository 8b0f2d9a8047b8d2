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
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::entry::L1Entry;
use super::lock::MetaGuard;
use super::overlap::{OL_ACTIVE_L1, OL_ACTIVE_L2};
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
        self.load_l2(held, old).await?;
        let table = self
            .l2
            .cache
            .with(old.bytes(), false, |t| t.to_vec())
            .expect("just loaded");
        self.file.debug_event(DebugEvent::L2AllocWrite).await;
        let written = match self.pre_write_check(OL_ACTIVE_L2, new.bytes(), cs).await {
            Ok(()) => {
                self.file
                    .write(new.bytes(), IoBuf::from_slice(&table), ReqFlags::NONE)
                    .await
                    .1
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.free_unreferenced(held, self.layout.cluster_of(new), 1)
                .await?;
            return Err(e);
        }
        self.file.flush().await?;
        self.file.debug_event(DebugEvent::L1Update).await;
        let entry = L1Entry::table(new);
        let at = self.l2.entry_pos(l1i).bytes();
        self.pre_write_check(OL_ACTIVE_L1, at, 8).await?;
        self.file
            .write(
                at,
                IoBuf::from_slice(&entry.raw().to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.l2.set(l1i, entry);
        // The old table keeps the snapshot's reference; the active L1's goes once the new
        // entry is durable (the next metadata flush).
        self.free_later(held, old, cs, false);
        self.make_room_l2(held).await?;
        self.l2.cache.insert(new.bytes(), table, false);
        Ok(new)
    }
}
