//! qcow2 refcounts and cluster allocation: refcount entries of any width (1..64 bits) in
//! cached refcount blocks, the free-cluster search, new refcount blocks (placed inside the
//! range they cover), refcount table growth, write-back of dirty blocks, and deferred frees.
//!
//! Every function here that touches the allocator's state takes the metadata-lock guard
//! (`&MetaGuard`) as proof that the lock is held. Must not import `job`, `qmp`,
//! `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, ReqFlags};

use super::allocator::DeferredFree;
use super::cache::{get_u64, set_u64};
use super::header::{MAX_REFTABLE_BYTES, OFF_REFTABLE};
use super::lock::MetaGuard;
use super::overlap::{OL_REFCOUNT_BLOCK, OL_REFCOUNT_TABLE, c_hex};
use super::units::{HostCluster, HostOffset};
use super::{OFFSET_MASK, Qcow2};

/// Read entry `i` of a refcount block with `order` (bits = 1 << order).
pub(crate) fn rb_get(t: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            ((t[i / per] >> shift) as u64) & ((1 << bits) - 1)
        }
        3 => t[i] as u64,
        4 => u16::from_be_bytes([t[2 * i], t[2 * i + 1]]) as u64,
        5 => u32::from_be_bytes(t[4 * i..4 * i + 4].try_into().expect("4 bytes")) as u64,
        _ => get_u64(t, i),
    }
}

/// Write entry `i` of a refcount block with `order`.
pub(crate) fn rb_set(t: &mut [u8], order: u32, i: usize, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            t[i / per] = (t[i / per] & !mask) | (((v as u8) << shift) & mask);
        }
        3 => t[i] = v as u8,
        4 => t[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => t[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => set_u64(t, i, v),
    }
}

/// Size a refcount table grown to cover cluster `at` from `old_len` entries (clusters of
/// `cs` bytes, `1 << rb_bits` refcounts per block), with its new blocks and itself placed
/// at `at` and counted too: (new blocks, table clusters, table entries). The table grows by
/// half at least, so that growing it again is rare.
fn reftable_growth(at: u64, old_len: u64, cs: u64, rb_bits: u32) -> (u64, u64, u64) {
    let (mut k, mut m) = (1u64, 1u64);
    loop {
        let end = at + k + m;
        let first_rt = at >> rb_bits;
        let last_rt = (end - 1) >> rb_bits;
        let len = (last_rt + 1).max(old_len + old_len / 2 + 1);
        let nk = last_rt - first_rt + 1;
        let nm = (len * 8).div_ceil(cs);
        if nk == k && nm == m {
            return (k, m, len.max(m * cs / 8));
        }
        (k, m) = (nk, nm);
    }
}

/// Where the free-cluster search starts at the earliest: cluster 0 holds the header.
const FIRST_DATA_CLUSTER: HostCluster = HostCluster::new(1);

impl Qcow2 {
    /// The index of cluster `idx`'s entry in its refcount block.
    fn rb_index(&self, idx: HostCluster) -> usize {
        (idx.index() & ((1 << self.layout.rb_bits()) - 1)) as usize
    }

    /// Host offset of the refcount block covering cluster `idx`, if there is one. An
    /// unaligned offset is corruption: signalled (the image marked corrupt where writable,
    /// as QEMU does) and an EIO error.
    async fn refblock_of(&self, idx: HostCluster) -> Result<Option<HostOffset>> {
        let rt = idx.index() >> self.layout.rb_bits();
        let Some(entry) = self.alloc.reftable_entry(rt) else {
            return Ok(None);
        };
        let off = HostOffset::new(entry & OFFSET_MASK);
        if off.bytes() == 0 {
            return Ok(None);
        }
        if !off.is_cluster_aligned(self.layout.cluster_bits) {
            let msg = format!(
                "Refblock offset {off:#x} unaligned (reftable index: {})",
                c_hex(rt)
            );
            let full = self.signal_corruption(true, None, None, &msg).await;
            return Err(Error::io_msg(Errno::EIO, full));
        }
        Ok(Some(off))
    }

    /// Make sure the refcount block at `off` is cached.
    async fn load_refblock(&self, _held: &MetaGuard<'_>, off: HostOffset) -> Result<()> {
        let off = off.bytes();
        if self.alloc.cache.contains(off) {
            return Ok(());
        }
        if self.alloc.cache.is_full()
            && let Some((victim, data, dirty)) = self.alloc.cache.lru()
        {
            if dirty {
                self.pre_write_check(OL_REFCOUNT_BLOCK, victim, self.layout.cs())
                    .await?;
                self.file.debug_event(DebugEvent::RefblockUpdate).await;
                self.file
                    .write(victim, IoBuf::from_slice(&data), ReqFlags::NONE)
                    .await
                    .1?;
            }
            self.alloc.cache.remove(victim);
        }
        self.file.debug_event(DebugEvent::RefblockLoad).await;
        let (buf, r) = self
            .file
            .read(off, IoBuf::new(self.layout.cs() as usize), ReqFlags::NONE)
            .await;
        r?;
        self.alloc.cache.insert(off, buf.as_slice().to_vec(), false);
        Ok(())
    }

    /// The refcount of host cluster `idx` (0 where no block covers it).
    pub(crate) async fn refcount(&self, held: &MetaGuard<'_>, idx: HostCluster) -> Result<u64> {
        let Some(off) = self.refblock_of(idx).await? else {
            return Ok(0);
        };
        self.load_refblock(held, off).await?;
        let off = off.bytes();
        let i = self.rb_index(idx);
        let order = self.layout.refcount_order.get();
        Ok(self
            .alloc
            .cache
            .with(off, false, |t| rb_get(t, order, i))
            .expect("just loaded"))
    }

    /// Add `delta` to the refcount of host cluster `idx` (its block must exist).
    pub(super) async fn update_refcount(
        &self,
        held: &MetaGuard<'_>,
        idx: HostCluster,
        delta: i64,
    ) -> Result<()> {
        let off = self.refblock_of(idx).await?.ok_or_else(|| {
            Error::io_msg(
                Errno::EIO,
                format!(
                    "qcow2: no refcount block for cluster {} being updated",
                    idx.index()
                ),
            )
        })?;
        self.load_refblock(held, off).await?;
        let off = off.bytes();
        let i = self.rb_index(idx);
        let (order, max) = (self.layout.refcount_order.get(), self.layout.max_refcount());
        let now = self
            .alloc
            .cache
            .with(off, true, |t| {
                let old = rb_get(t, order, i);
                let new = if delta < 0 {
                    old.checked_sub(delta.unsigned_abs())
                } else {
                    old.checked_add(delta as u64).filter(|n| *n <= max)
                };
                match new {
                    Some(n) => {
                        rb_set(t, order, i, n);
                        Ok(n)
                    }
                    None => Err(Error::io_msg(
                        Errno::EIO,
                        format!(
                            "qcow2: refcount of cluster {} would leave its range",
                            idx.index()
                        ),
                    )),
                }
            })
            .expect("just loaded")?;
        if delta < 0 {
            self.alloc.freed(held, idx);
        }
        if now == 0 {
            self.alloc.emptied(held, idx, self.layout.cluster_bits);
        }
        Ok(())
    }

    /// Make sure a refcount block covers cluster `c` (creating it, or growing the table, at
    /// free cluster `c`). Returns false when it had to create something (the caller rescans).
    async fn cover(&self, held: &MetaGuard<'_>, c: HostCluster) -> Result<bool> {
        let rt = c.index() >> self.layout.rb_bits();
        if rt as usize >= self.alloc.reftable_len() {
            self.grow_reftable(held, c).await?;
            return Ok(false);
        }
        if self.refblock_of(c).await?.is_none() {
            self.new_refblock(held, rt, c).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// True when cluster `c` is free and already covered by a refcount block.
    async fn free_and_covered(&self, held: &MetaGuard<'_>, c: HostCluster) -> Result<bool> {
        Ok(self.refblock_of(c).await?.is_some() && self.refcount(held, c).await? == 0)
    }

    /// Allocate `n` contiguous host clusters (refcount 1 each); returns the first.
    pub(crate) async fn alloc_clusters(&self, held: &MetaGuard<'_>, n: u64) -> Result<HostCluster> {
        self.file.debug_event(DebugEvent::ClusterAlloc).await;
        self.settle_frees(held).await?;
        'search: loop {
            let mut first_free = None;
            let mut start = self.alloc.hint().max(FIRST_DATA_CLUSTER);
            let mut run = 0;
            let mut i = start;
            while run < n {
                if self.refcount(held, i).await? == 0 {
                    first_free.get_or_insert(i);
                    if run == 0 {
                        start = i;
                    }
                    run += 1;
                } else {
                    run = 0;
                }
                i += 1;
            }
            self.check_space(start + n)?;
            for c in start.run(n) {
                if !self.cover(held, c).await? {
                    continue 'search;
                }
            }
            for c in start.run(n) {
                self.update_refcount(held, c, 1).await?;
            }
            let hint = first_free.filter(|f| *f < start).unwrap_or(start + n);
            self.alloc.set_hint(held, hint);
            return Ok(start);
        }
    }

    /// Allocate between 1 and `n` contiguous host clusters at the first free one (guest data:
    /// a shorter run avoids fragmenting the file); returns (first cluster, count).
    pub(crate) async fn alloc_some(
        &self,
        held: &MetaGuard<'_>,
        n: u64,
    ) -> Result<(HostCluster, u64)> {
        self.file.debug_event(DebugEvent::ClusterAlloc).await;
        self.settle_frees(held).await?;
        loop {
            let mut start = self.alloc.hint().max(FIRST_DATA_CLUSTER);
            while self.refcount(held, start).await? != 0 {
                start += 1;
            }
            self.check_space(start + 1)?;
            if !self.cover(held, start).await? {
                continue;
            }
            let mut got = 1;
            while got < n && self.free_and_covered(held, start + got).await? {
                got += 1;
            }
            for c in start.run(got) {
                self.update_refcount(held, c, 1).await?;
            }
            self.alloc.set_hint(held, start + got);
            return Ok((start, got));
        }
    }

    /// Allocate `size` bytes (at most a cluster) for one compressed cluster, packed after the
    /// previous one when it fits, else at the start of a new cluster (continuing over the
    /// boundary when the new cluster happens to follow the partly filled one). Every host
    /// cluster the bytes touch gains one reference. Returns where the bytes go.
    pub(crate) async fn alloc_bytes(&self, held: &MetaGuard<'_>, size: u64) -> Result<HostOffset> {
        self.file.debug_event(DebugEvent::ClusterAllocBytes).await;
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        debug_assert!(size > 0 && size <= cs);
        let mut cursor = self.alloc.byte_cursor();
        if let Some(at) = cursor
            && self.refcount(held, at.cluster(bits)).await? >= self.layout.max_refcount()
        {
            // No more references fit: start a new cluster.
            cursor = None;
        }
        let room = cursor.map_or(0, |at| cs - at.in_cluster(bits));
        let (at, fresh) = if room >= size {
            (cursor.expect("room in it"), None)
        } else {
            let new = self.alloc_clusters(held, 1).await?;
            // Allocating may have settled frees: the partly filled cluster may be gone.
            let still = cursor.filter(|c| self.alloc.byte_cursor() == Some(*c));
            let at = match still {
                Some(c) if c.cluster(bits) + 1 == new => c,
                _ => new.offset(bits),
            };
            (at, Some(new))
        };
        // `alloc_clusters` gave the new cluster its reference; the others gain one here.
        let last = HostOffset::new(at.bytes() + size - 1).cluster(bits);
        for c in at.cluster(bits).to(last + 1) {
            if Some(c) != fresh {
                self.update_refcount(held, c, 1).await?;
            }
        }
        self.alloc
            .set_byte_cursor(held, HostOffset::new(at.bytes() + size), bits);
        Ok(at)
    }

    /// Make queued frees real before allocating. A free waits until the mapping change that
    /// caused it is durable (so a crash never leaves an old L2 entry pointing at a reused
    /// cluster); QEMU reuses a freed cluster at once. Writing the mappings back first (one flush,
    /// only when frees are queued) keeps both: the same layout as QEMU's, and crash safety.
    async fn settle_frees(&self, held: &MetaGuard<'_>) -> Result<()> {
        if !self.alloc.has_deferred() {
            return Ok(());
        }
        Box::pin(self.flush_metadata(held)).await
    }

    fn check_space(&self, end_cluster: HostCluster) -> Result<()> {
        if self.layout.cluster_offset(end_cluster).bytes() > OFFSET_MASK {
            return Err(Error::io_msg(Errno::ENOSPC, "qcow2: image file is full"));
        }
        Ok(())
    }

    /// Undo an allocation nothing refers to yet (the refcount drops at once).
    pub(crate) async fn free_unreferenced(
        &self,
        held: &MetaGuard<'_>,
        first: HostCluster,
        n: u64,
    ) -> Result<()> {
        for c in first.run(n) {
            self.update_refcount(held, c, -1).await?;
        }
        Ok(())
    }

    /// Queue `[host, host+len)` for a refcount decrement once the mapping change that freed it
    /// is durable (applied by `flush_metadata`); `discard`: discard what becomes free in the file.
    pub(crate) fn free_later(
        &self,
        held: &MetaGuard<'_>,
        host: HostOffset,
        len: u64,
        discard: bool,
    ) {
        self.alloc
            .defer_free(held, DeferredFree { host, len, discard });
    }

    /// Apply the queued frees (the mappings that freed them are durable now).
    pub(crate) async fn apply_pending_frees(&self, held: &MetaGuard<'_>) -> Result<()> {
        for DeferredFree { host, len, discard } in self.alloc.take_deferred(held) {
            self.file.debug_event(DebugEvent::ClusterFree).await;
            let first = self.layout.cluster_of(host);
            let last = self.layout.cluster_of(host + (len.max(1) - 1));
            for c in first.to(last + 1) {
                self.update_refcount(held, c, -1).await?;
                // Nothing refers to a cluster whose count reached zero (the mapping change is
                // durable) and nothing can reuse it before this discard (metadata lock held).
                if discard && self.refcount(held, c).await? == 0 {
                    let cs = self.layout.cs();
                    // Best effort, as in QEMU: a failed discard leaves the data in place.
                    let at = self.layout.cluster_offset(c).bytes();
                    let _ = self.file.discard(at, cs).await;
                }
            }
        }
        Ok(())
    }

    /// A new refcount block for reftable index `rt`, placed at free cluster `at` (which it
    /// covers and counts).
    async fn new_refblock(&self, held: &MetaGuard<'_>, rt: u64, at: HostCluster) -> Result<()> {
        self.file.debug_event(DebugEvent::RefblockAlloc).await;
        let cs = self.layout.cs();
        let mut data = vec![0u8; cs as usize];
        rb_set(
            &mut data,
            self.layout.refcount_order.get(),
            (at.index() - (rt << self.layout.rb_bits())) as usize,
            1,
        );
        let block = self.layout.cluster_offset(at);
        let off = block.bytes();
        self.pre_write_check(OL_REFCOUNT_BLOCK, off, cs).await?;
        self.file.debug_event(DebugEvent::RefblockAllocWrite).await;
        self.file
            .write(off, IoBuf::from_slice(&data), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        self.file.debug_event(DebugEvent::RefblockAllocHookup).await;
        let entry_at = (self.alloc.reftable_offset() + rt * 8).bytes();
        self.pre_write_check(OL_REFCOUNT_TABLE, entry_at, 8).await?;
        self.file
            .write(
                entry_at,
                IoBuf::from_slice(&off.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.alloc.set_reftable_entry(held, rt, off);
        if self.alloc.cache.is_full() {
            self.load_refblock(held, block).await?;
        } else {
            self.alloc.cache.insert(off, data, false);
        }
        Ok(())
    }

    /// Grow the refcount table so that it covers cluster `at` (which is beyond the current
    /// coverage, hence free along with everything after it). New blocks and the new table are
    /// placed at `at`; the header is switched once they are durable; the old table is freed.
    async fn grow_reftable(&self, held: &MetaGuard<'_>, at: HostCluster) -> Result<()> {
        self.file.debug_event(DebugEvent::ReftableGrow).await;
        // The growth arithmetic is on cluster indices; byte offsets only where written.
        let at = at.index();
        let cs = self.layout.cs();
        let rb_bits = self.layout.rb_bits();
        let old_len = self.alloc.reftable_len() as u64;
        let (k, m, new_len) = reftable_growth(at, old_len, cs, rb_bits);
        if m * cs > MAX_REFTABLE_BYTES {
            return Err(Error::io_msg(
                Errno::EFBIG,
                "qcow2: refcount table would exceed its maximum size",
            ));
        }
        let first_rt = at >> rb_bits;
        let mut table = self.alloc.reftable_snapshot();
        table.resize(new_len as usize, 0);
        self.file
            .debug_event(DebugEvent::RefblockAllocWriteBlocks)
            .await;
        for b in 0..k {
            let rt = first_rt + b;
            let mut data = vec![0u8; cs as usize];
            for c in at..at + k + m {
                if c >> rb_bits == rt {
                    rb_set(
                        &mut data,
                        self.layout.refcount_order.get(),
                        (c - (rt << rb_bits)) as usize,
                        1,
                    );
                }
            }
            let off = (at + b) * cs;
            self.file
                .write(off, IoBuf::from_slice(&data), ReqFlags::NONE)
                .await
                .1?;
            table[rt as usize] = off;
        }
        let mut tbytes = vec![0u8; (m * cs) as usize];
        for (i, e) in table.iter().enumerate() {
            set_u64(&mut tbytes, i, *e);
        }
        let new_off = (at + k) * cs;
        self.file
            .debug_event(DebugEvent::RefblockAllocWriteTable)
            .await;
        self.file
            .write(new_off, IoBuf::from_slice(&tbytes), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        self.file
            .debug_event(DebugEvent::RefblockAllocSwitchTable)
            .await;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&new_off.to_be_bytes());
        hdr.extend_from_slice(&(m as u32).to_be_bytes());
        self.file
            .write(OFF_REFTABLE, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let old_off = self.alloc.reftable_offset();
        let old_clusters = (old_len * 8).div_ceil(cs);
        table.truncate((m * cs / 8) as usize);
        self.alloc
            .moved_table(held, HostOffset::new(new_off), table);
        // The header no longer refers to the old table: free it now.
        for c in self.layout.cluster_of(old_off).run(old_clusters) {
            self.update_refcount(held, c, -1).await?;
        }
        Ok(())
    }

    /// Free the refcount blocks that count nothing but themselves (after a shrink, as QEMU
    /// does): each one's reftable entry is cleared and made durable first, its own refcount
    /// dropped after (nothing to drop when the block counts itself). Dirty blocks must have
    /// been written back before.
    pub(crate) async fn drop_empty_refblocks(&self, held: &MetaGuard<'_>) -> Result<()> {
        let per = 1u64 << self.layout.rb_bits();
        let order = self.layout.refcount_order.get();
        let entries = self.alloc.reftable_len() as u64;
        for rt in 0..entries {
            let Some(block) = self.refblock_of(HostCluster::new(rt * per)).await? else {
                continue;
            };
            let own = self.layout.cluster_of(block);
            let self_slot = (own.index() / per == rt).then_some((own.index() % per) as usize);
            self.load_refblock(held, block).await?;
            let off = block.bytes();
            let empty = self
                .alloc
                .cache
                .with(off, false, |t| {
                    (0..per as usize).all(|i| {
                        let v = rb_get(t, order, i);
                        v == 0 || (Some(i) == self_slot && v == 1)
                    })
                })
                .expect("just loaded");
            if !empty {
                continue;
            }
            let at = (self.alloc.reftable_offset() + rt * 8).bytes();
            self.pre_write_check(OL_REFCOUNT_TABLE, at, 8).await?;
            self.file
                .write(at, IoBuf::from_slice(&0u64.to_be_bytes()), ReqFlags::NONE)
                .await
                .1?;
            self.file.flush().await?;
            self.alloc.set_reftable_entry(held, rt, 0);
            self.alloc.cache.remove(off);
            if self_slot.is_none() {
                self.update_refcount(held, own, -1).await?;
            } else {
                self.alloc.freed(held, own);
            }
        }
        self.write_back_refblocks(held).await
    }

    /// Write every dirty refcount block to the file (not flushed).
    pub(crate) async fn write_back_refblocks(&self, _held: &MetaGuard<'_>) -> Result<()> {
        for (off, data) in self.alloc.cache.dirty() {
            self.pre_write_check(OL_REFCOUNT_BLOCK, off, self.layout.cs())
                .await?;
            self.file.debug_event(DebugEvent::RefblockUpdate).await;
            self.file
                .write(off, IoBuf::from_slice(&data), ReqFlags::NONE)
                .await
                .1?;
            self.alloc.cache.mark_clean(off, &data);
        }
        Ok(())
    }
}
