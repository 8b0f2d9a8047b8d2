//! qcow2 L1/L2 mapping: reading L2 entries through the L2 cache, classifying them, allocating
//! new L2 tables (refcount, table, flush, then the L1 entry), updating entries, writing dirty
//! tables back (after the refcounts and guest data they rely on are durable) and the metadata
//! flush that also applies deferred frees.
//!
//! Every function here that reads or changes the mapping takes the metadata-lock guard
//! (`&MetaGuard`) as proof that the lock is held. Must not import `job`, `qmp`,
//! `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, ReqFlags};
use crate::util::planted::{self, Bug};

use super::Qcow2;
use super::cache::{get_u64, set_u64};
use super::entry::{EntryFormat, L1Entry, L2Entry};
use super::lock::MetaGuard;
use super::overlap::{OL_ACTIVE_L1, OL_ACTIVE_L2, c_hex};
use super::units::{GuestCluster, HostOffset};

pub(crate) use super::entry::Kind;

impl Qcow2 {
    /// How this image's L2 entries decode.
    pub(crate) fn entry_format(&self) -> EntryFormat {
        EntryFormat {
            cluster_bits: self.layout.cluster_bits,
            data_file: self.has_data_file(),
            zero_flag: self.layout.version.get() >= 3,
        }
    }

    /// Decode an L2 entry (validated: a bad one is an I/O error, never a panic).
    pub(crate) fn classify(&self, entry: L2Entry) -> Result<Kind> {
        entry.classify(self.entry_format())
    }

    /// Where guest cluster `gc`'s entry is: (L1 index, index in its L2 table).
    pub(super) fn l2_slot(&self, gc: GuestCluster) -> (usize, usize) {
        let per = self.layout.l2_entries();
        ((gc.index() / per) as usize, (gc.index() % per) as usize)
    }

    /// The L2 table offset for L1 index `l1i`, allocating the table if `alloc`.
    async fn l2_table(
        &self,
        held: &MetaGuard<'_>,
        l1i: usize,
        alloc: bool,
    ) -> Result<Option<HostOffset>> {
        if !alloc && l1i >= self.l2.l1_len() {
            // Past the L1 table (only the VM state area reaches there): never written.
            return Ok(None);
        }
        let entry = self.l2.get(l1i).ok_or_else(|| {
            Error::io_msg(Errno::EIO, format!("qcow2: L1 index {l1i} out of range"))
        })?;
        let off = entry.l2_offset();
        if off.bytes() != 0 {
            if !off.is_cluster_aligned(self.layout.cluster_bits) {
                let msg = format!(
                    "L2 table offset {off:#x} unaligned (L1 index: {})",
                    c_hex(l1i as u64)
                );
                let full = self.signal_corruption(true, None, None, &msg).await;
                return Err(Error::io_msg(Errno::EIO, full));
            }
            if alloc && !entry.is_copied() {
                // Shared with a snapshot: the active L1 gets its own copy first.
                return self.cow_l2_table(held, l1i, off).await.map(Some);
            }
            return Ok(Some(off));
        }
        if !alloc {
            return Ok(None);
        }
        let off = self
            .layout
            .cluster_offset(self.alloc_clusters(held, 1).await?);
        // The refcount must be on disk before anything refers to the table (with lazy
        // refcounts, the dirty bit stands for it).
        if !self.lazy.get() {
            self.write_back_refblocks(held).await?;
        }
        let zeros = vec![0u8; self.layout.cs() as usize];
        self.install_l2_table(held, l1i, off, zeros).await?;
        Ok(Some(off))
    }

    /// Write `table` to the new (refcounted) cluster at `off`, flush, and point L1 entry `l1i`
    /// at it with COPIED; the table is cached clean. A failed table write frees the cluster.
    pub(super) async fn install_l2_table(
        &self,
        held: &MetaGuard<'_>,
        l1i: usize,
        off: HostOffset,
        table: Vec<u8>,
    ) -> Result<()> {
        self.file.debug_event(DebugEvent::L2AllocWrite).await;
        let r = match self
            .pre_write_check(OL_ACTIVE_L2, off.bytes(), self.layout.cs())
            .await
        {
            Ok(()) => {
                self.file
                    .write(off.bytes(), IoBuf::from_slice(&table), ReqFlags::NONE)
                    .await
                    .1
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.free_unreferenced(held, self.layout.cluster_of(off), 1)
                .await?;
            return Err(e);
        }
        self.file.flush().await?;
        self.file.debug_event(DebugEvent::L1Update).await;
        let new = L1Entry::table(off);
        let entry_at = self.l2.entry_pos(l1i).bytes();
        self.pre_write_check(OL_ACTIVE_L1, entry_at, 8).await?;
        self.file
            .write(
                entry_at,
                IoBuf::from_slice(&new.raw().to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.l2.set(l1i, new);
        self.make_room_l2(held).await?;
        self.l2.cache.insert(off.bytes(), table, false);
        Ok(())
    }

    /// Evict the least recently used L2 table if the cache is full.
    pub(super) async fn make_room_l2(&self, held: &MetaGuard<'_>) -> Result<()> {
        if !self.l2.cache.is_full() {
            return Ok(());
        }
        if let Some((victim, data, dirty)) = self.l2.cache.lru() {
            if dirty {
                if !self.lazy.get() {
                    self.write_back_refblocks(held).await?;
                }
                self.flush_data_file().await?;
                self.file.flush().await?;
                self.pre_write_check(OL_ACTIVE_L2, victim, self.layout.cs())
                    .await?;
                self.file.debug_event(DebugEvent::L2Update).await;
                self.file
                    .write(victim, IoBuf::from_slice(&data), ReqFlags::NONE)
                    .await
                    .1?;
            }
            self.l2.cache.remove(victim);
        }
        Ok(())
    }

    pub(super) async fn load_l2(&self, held: &MetaGuard<'_>, off: HostOffset) -> Result<()> {
        let off = off.bytes();
        if self.l2.cache.contains(off) {
            return Ok(());
        }
        self.make_room_l2(held).await?;
        self.file.debug_event(DebugEvent::L2Load).await;
        let (buf, r) = self
            .file
            .read(off, IoBuf::new(self.layout.cs() as usize), ReqFlags::NONE)
            .await;
        r?;
        self.l2.cache.insert(off, buf.as_slice().to_vec(), false);
        Ok(())
    }

    /// The L2 entry of guest cluster `gc` (unallocated when its L2 table does not exist).
    pub(crate) async fn l2_entry(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<L2Entry> {
        let (l1i, i) = self.l2_slot(gc);
        let Some(off) = self.l2_table(held, l1i, false).await? else {
            return Ok(L2Entry::UNALLOCATED);
        };
        self.load_l2(held, off).await?;
        let i = if self.layout.ext_l2 { 2 * i } else { i };
        Ok(L2Entry::from_raw(
            self.l2
                .cache
                .with(off.bytes(), false, |t| get_u64(t, i))
                .expect("just loaded"),
        ))
    }

    /// The subcluster bitmap of guest cluster `gc` (extended L2 entries only): bit `s` says
    /// subcluster `s` is allocated, bit `32 + s` that it reads as zeroes.
    pub(crate) async fn l2_bitmap(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<u64> {
        debug_assert!(self.layout.ext_l2);
        let (l1i, i) = self.l2_slot(gc);
        let Some(off) = self.l2_table(held, l1i, false).await? else {
            return Ok(0);
        };
        self.load_l2(held, off).await?;
        Ok(self
            .l2
            .cache
            .with(off.bytes(), false, |t| get_u64(t, 2 * i + 1))
            .expect("just loaded"))
    }

    /// The kind of guest cluster `gc`. A data cluster offset that is not cluster aligned is
    /// corruption: reported (and on a writable image marked), and an EIO error.
    pub(crate) async fn kind_at(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<Kind> {
        let entry = self.l2_entry(held, gc).await?;
        match self.classify(entry) {
            Ok(k) => Ok(k),
            Err(e) => {
                let (l1i, i) = self.l2_slot(gc);
                let l2 = self.l2.entry(l1i).l2_offset().bytes();
                let msg = format!(
                    "Cluster allocation offset {:#x} unaligned (L2 offset: {}, L2 index: {})",
                    entry.host_offset(),
                    c_hex(l2),
                    c_hex(i as u64)
                );
                let full = self.signal_corruption(true, None, None, &msg).await;
                Err(Error::io_msg(e.errno().unwrap_or(Errno::EIO), full))
            }
        }
    }

    /// Make sure guest cluster `gc` has an L2 table (allocating one if needed).
    pub(crate) async fn ensure_l2(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<()> {
        let (l1i, _) = self.l2_slot(gc);
        self.l2_table(held, l1i, true).await?;
        Ok(())
    }

    /// Set the L2 entry of guest cluster `gc` (its table must exist) in the cache. With
    /// extended L2 entries the subcluster bitmap is cleared too: every caller but the
    /// subcluster paths (which use `set_l2_ext`) installs an entry whose subclusters are all
    /// unallocated (compressed, preallocated, or no cluster at all).
    pub(crate) async fn set_l2_entry(
        &self,
        held: &MetaGuard<'_>,
        gc: GuestCluster,
        entry: L2Entry,
    ) -> Result<()> {
        self.set_l2_ext(held, gc, entry, 0).await
    }

    /// Set the L2 entry of guest cluster `gc` and, with extended L2 entries, its subcluster
    /// `bitmap` (ignored otherwise), in the cache (allocating the table if needed).
    pub(crate) async fn set_l2_ext(
        &self,
        held: &MetaGuard<'_>,
        gc: GuestCluster,
        entry: L2Entry,
        bitmap: u64,
    ) -> Result<()> {
        let (l1i, i) = self.l2_slot(gc);
        let off = self.l2_table(held, l1i, true).await?.expect("allocated");
        self.load_l2(held, off).await?;
        let ext = self.layout.ext_l2;
        self.l2
            .cache
            .with(off.bytes(), true, |t| {
                if ext {
                    set_u64(t, 2 * i, entry.raw());
                    set_u64(t, 2 * i + 1, bitmap);
                } else {
                    set_u64(t, i, entry.raw());
                }
            })
            .expect("just loaded");
        Ok(())
    }

    /// Flush the external data file, if any: guest data there must be durable before an L2
    /// table pointing at it is written.
    pub(crate) async fn flush_data_file(&self) -> Result<()> {
        match &self.data {
            Some(d) => d.flush().await,
            None => Ok(()),
        }
    }

    /// Write back every dirty cached table in dependency order, then apply deferred frees:
    /// refcounts, flush (data + refcounts durable), L2 tables, flush, frees, refcounts.
    pub(crate) async fn flush_metadata(&self, held: &MetaGuard<'_>) -> Result<()> {
        self.file.debug_event(DebugEvent::FlushToOs).await;
        if self.l2.cache.has_dirty() {
            if !self.lazy.get() {
                self.write_back_refblocks(held).await?;
            }
            self.flush_data_file().await?;
            if !planted::on(Bug::Qcow2FlushOrder) {
                self.file.flush().await?;
            }
            for (off, data) in self.l2.cache.dirty() {
                self.pre_write_check(OL_ACTIVE_L2, off, self.layout.cs())
                    .await?;
                self.file.debug_event(DebugEvent::L2Update).await;
                self.file
                    .write(off, IoBuf::from_slice(&data), ReqFlags::NONE)
                    .await
                    .1?;
                self.l2.cache.mark_clean(off, &data);
            }
        }
        if self.alloc.has_deferred() {
            self.file.flush().await?;
            self.apply_pending_frees(held).await?;
        }
        self.write_back_refblocks(held).await
    }
}
