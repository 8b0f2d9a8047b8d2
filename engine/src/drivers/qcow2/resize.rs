//! qcow2 resize: growing the virtual size (moving to a larger L1 table, switched in by one
//! header write once it is durable) and shrinking (the tail's clusters freed, then the file
//! cut after its last cluster in use). A growing resize
//! may preallocate the new clusters (`metadata`: mapped to host clusters that read as zeroes;
//! `falloc`/`full`: the file space reserved or zero-filled as well).
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, ReqFlags};

use crate::driver::Prealloc;

use super::Qcow2;
use super::cluster::Kind;
use super::entry::{L1Entry, L2Entry};
use super::header::{MAX_L1_BYTES, OFF_L1, OFF_SIZE};
use super::lock::MetaGuard;
use super::overlap::OL_ACTIVE_L1;
use super::units::{GuestCluster, HostCluster};

impl Qcow2 {
    pub(crate) async fn do_truncate(&self, len: u64, prealloc: Prealloc) -> Result<()> {
        if !len.is_multiple_of(512) {
            return Err(Error::generic(
                "qcow2: the image size must be a multiple of 512 bytes",
            ));
        }
        let held = &self.meta.lock().await;
        let cs = self.layout.cs();
        let old = self.layout.size.get();
        let mut shrunk = None;
        let per_l1 = cs * self.layout.l2_entries();
        if len < old && prealloc != Prealloc::Off {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                "qcow2: preallocation can't be used for shrinking an image",
            ));
        }
        if len < old {
            if self.nb_snapshots() > 0 {
                return Err(Error::io_msg(
                    Errno::ENOTSUP,
                    "Can't resize an image which has snapshots",
                ));
            }
            let grew = self.free_tail(held, len).await?;
            shrunk = Some(grew);
        } else {
            if let Some(data) = &self.data {
                // The data file grows first (as QEMU grows it, reserving or writing the space
                // for falloc/full; metadata preallocation is this image's business): a cluster
                // the new metadata maps must exist there.
                let data_mode = match prealloc {
                    Prealloc::Metadata => Prealloc::Off,
                    other => other,
                };
                data.truncate(len, false, data_mode).await?;
            }
            let need = len.div_ceil(per_l1);
            if need > self.l2.l1_len() as u64 {
                self.grow_l1(held, need).await?;
            }
            if self.has_data_file() {
                if self.data_raw || prealloc != Prealloc::Off {
                    self.map_data_file_tail(held, old, len).await?;
                }
            } else if prealloc != Prealloc::Off {
                self.preallocate(held, old, len, prealloc).await?;
            }
        }
        self.file
            .write(
                OFF_SIZE,
                IoBuf::from_slice(&len.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.layout.size.set(len);
        if let Some(grew) = shrunk {
            self.truncate_file_to_used(held, grew).await;
            if let Some(data) = &self.data {
                // The tail is unmapped and durable: the data file is cut to the new size.
                data.truncate(len, false, Prealloc::Off).await?;
            }
        }
        Ok(())
    }

    /// Map every unmapped guest cluster of `[old, len)` to its own offset in the external data
    /// file (a raw data file, or a preallocating resize), as a new image maps them, then make
    /// the tables durable (metadata lock held).
    async fn map_data_file_tail(&self, held: &MetaGuard<'_>, old: u64, len: u64) -> Result<()> {
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let (first, end) = (
            GuestCluster::new(old / cs),
            GuestCluster::new(len.div_ceil(cs)),
        );
        for gc in first.to(end) {
            if self.classify(self.l2_entry(held, gc).await?)? != Kind::Unallocated {
                continue;
            }
            self.ensure_l2(held, gc).await?;
            self.set_l2_entry(held, gc, L2Entry::normal(gc.identity_host(bits)))
                .await?;
        }
        self.flush_metadata(held).await?;
        self.file.flush().await
    }

    /// Free every cluster mapped at or past guest offset `len` (metadata lock held), in QEMU's
    /// crash-safe order: the tail's L2 entries are cleared and written first, the clusters'
    /// refcounts dropped after; then the L1 entries of L2 tables wholly past `len` are cleared
    /// and written, and those tables freed after; last, refcount blocks left empty. A crash in
    /// between leaks clusters at worst. True when QEMU's shrink would have grown the file on
    /// the way (it allocates the missing L2 tables of the range, then frees those past the
    /// end), which decides the file's final length.
    async fn free_tail(&self, held: &MetaGuard<'_>, len: u64) -> Result<bool> {
        let cs = self.layout.cs();
        let per = self.layout.l2_entries();
        let (first, end) = (len.div_ceil(cs), self.layout.size.get().div_ceil(cs));
        let keep = len.div_ceil(per * cs) as usize;
        let grew = first < end
            && (first / per..end.div_ceil(per))
                .any(|l1i| self.l2.entry(l1i as usize).l2_offset().bytes() == 0);
        if first < end && ((first / per) as usize) < keep {
            // QEMU discards the tail through the lookup that allocates a missing L2 table:
            // the last table kept exists afterwards even if nothing was ever written there
            // (the ones past the new end are freed again below). Same file as QEMU's.
            self.ensure_l2(held, GuestCluster::new(first)).await?;
        }
        let mut gc = first;
        while gc < end {
            let l1i = (gc / per) as usize;
            if self.l2.entry(l1i).l2_offset().bytes() == 0 {
                gc = (l1i as u64 + 1) * per;
                continue;
            }
            let old = self.l2_entry(held, GuestCluster::new(gc)).await?;
            if old != L2Entry::UNALLOCATED {
                // A shrink always passes the freed clusters down to the file, as QEMU does.
                self.release_reporting(held, old, true).await?;
                self.set_l2_entry(held, GuestCluster::new(gc), L2Entry::UNALLOCATED)
                    .await?;
            }
            gc += 1;
        }
        // L2 tables written, flushed, then the frees applied (flush_metadata's order).
        self.flush_metadata(held).await?;
        let l1_len = self.l2.l1_len();
        let mut tables = Vec::new();
        for l1i in keep..l1_len {
            let off = self.l2.entry(l1i).l2_offset();
            if off.bytes() == 0 {
                continue;
            }
            let at = self.l2.entry_pos(l1i).bytes();
            self.pre_write_check(OL_ACTIVE_L1, at, 8).await?;
            self.file.debug_event(DebugEvent::L1ShrinkWriteTable).await;
            self.file
                .write(at, IoBuf::from_slice(&0u64.to_be_bytes()), ReqFlags::NONE)
                .await
                .1?;
            self.l2.set(l1i, L1Entry::UNALLOCATED);
            self.l2.cache.remove(off.bytes());
            tables.push(off);
        }
        if !tables.is_empty() {
            self.file.flush().await?;
            self.file
                .debug_event(DebugEvent::L1ShrinkFreeL2Clusters)
                .await;
            for off in tables {
                self.free_later(held, off, cs, true);
            }
            self.apply_pending_frees(held).await?;
            self.write_back_refblocks(held).await?;
        }
        self.drop_empty_refblocks(held).await?;
        self.file.flush().await?;
        Ok(grew)
    }

    /// After a shrink (the new size and every refcount durable): cut the file after its last
    /// cluster in use, as QEMU does. Best effort: a file that cannot be cut stays as it is
    /// (the clusters past the last used one are free either way). When QEMU's file would have
    /// grown during the shrink (`grew`), its cut lands on that cluster boundary even where the
    /// file ended inside the cluster before; so does this one.
    async fn truncate_file_to_used(&self, held: &MetaGuard<'_>, grew: bool) {
        let cs = self.layout.cs();
        let file_len = self.file.len();
        let mut c = file_len.div_ceil(cs);
        while c > 0 {
            match self.refcount(held, HostCluster::new(c - 1)).await {
                Ok(0) => c -= 1,
                Ok(_) => break,
                Err(_) => return,
            }
        }
        if c > 0 && (c * cs < file_len || (grew && c * cs != file_len)) {
            let _ = self.file.truncate(c * cs, false, Prealloc::Off).await;
        }
    }

    /// Map every unallocated guest cluster wholly inside `[old, len)` to a new host cluster
    /// that reads as zeroes (metadata lock held). Clusters reused from inside the file are
    /// zero-filled; `Full` zero-fills everything, `Falloc` reserves the file's new tail.
    async fn preallocate(
        &self,
        held: &MetaGuard<'_>,
        old: u64,
        len: u64,
        mode: Prealloc,
    ) -> Result<()> {
        let cs = self.layout.cs();
        let file_end = self.file.len();
        let (mut gc, end) = (old.div_ceil(cs), len.div_ceil(cs));
        let mut host_end = file_end;
        let unallocated = async |gc| {
            let entry = self.l2_entry(held, GuestCluster::new(gc)).await?;
            Ok::<bool, Error>(self.classify(entry)? == Kind::Unallocated)
        };
        while gc < end {
            if !unallocated(gc).await? {
                gc += 1;
                continue;
            }
            self.ensure_l2(held, GuestCluster::new(gc)).await?;
            let table_end = (gc / self.layout.l2_entries() + 1) * self.layout.l2_entries();
            let mut n = 1;
            while gc + n < end.min(table_end) && unallocated(gc + n).await? {
                n += 1;
            }
            let (first, got) = self.alloc_some(held, n).await?;
            let host = self.layout.cluster_offset(first);
            let bytes = got * cs;
            // Fresh clusters past the end of the file read as zeroes; reused ones are zeroed.
            let zero_from = host.bytes();
            let zero_to = if mode == Prealloc::Full {
                zero_from + bytes
            } else {
                (zero_from + bytes).min(file_end)
            };
            if zero_to > zero_from {
                self.pre_write_check(0, zero_from, zero_to - zero_from)
                    .await?;
                self.file
                    .write(
                        zero_from,
                        IoBuf::new((zero_to - zero_from) as usize),
                        ReqFlags::NONE,
                    )
                    .await
                    .1?;
            }
            for (i, g) in GuestCluster::new(gc).run(got).enumerate() {
                self.set_l2_entry(held, g, L2Entry::normal(host + i as u64 * cs))
                    .await?;
            }
            host_end = host_end.max(zero_from + bytes);
            gc += got;
        }
        if host_end > self.file.len() {
            let file_mode = if mode == Prealloc::Metadata {
                Prealloc::Off
            } else {
                mode
            };
            self.file.truncate(host_end, false, file_mode).await?;
        }
        self.flush_metadata(held).await?;
        self.file.flush().await
    }

    /// Replace the L1 table by a larger one (`entries`), switched in by one header write.
    pub(super) async fn grow_l1(&self, held: &MetaGuard<'_>, entries: u64) -> Result<()> {
        let cs = self.layout.cs();
        let bytes = entries * 8;
        if bytes > MAX_L1_BYTES {
            return Err(Error::io_msg(
                Errno::EFBIG,
                "qcow2: L1 table would be too large",
            ));
        }
        let clusters = bytes.div_ceil(cs);
        self.file.debug_event(DebugEvent::L1GrowAllocTable).await;
        let host = self
            .layout
            .cluster_offset(self.alloc_clusters(held, clusters).await?);
        self.write_back_refblocks(held).await?;
        let mut table = vec![0u8; (clusters * cs) as usize];
        self.l2.encode_into(&mut table);
        self.file.debug_event(DebugEvent::L1GrowWriteTable).await;
        self.file
            .write(host.bytes(), IoBuf::from_slice(&table), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        self.file.debug_event(DebugEvent::L1GrowActivateTable).await;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&(entries as u32).to_be_bytes());
        hdr.extend_from_slice(&host.bytes().to_be_bytes());
        self.file
            .write(OFF_L1, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let old_off = self.l2.l1_offset();
        let old_clusters = self.l2.l1_bytes().div_ceil(cs);
        self.l2.relocate(host, entries as usize);
        if old_off.bytes() != 0 && old_clusters > 0 {
            let first = self.layout.cluster_of(old_off);
            self.free_unreferenced(held, first, old_clusters).await?;
        }
        Ok(())
    }
}
