//! qcow2 refcount rebuild for images with the dirty bit (lazy refcounts): count every
//! reference reachable from the header, the L1 table and the L2 tables, write a complete new
//! refcount table and blocks after the end of the file, switch the header to them, then clear
//! the dirty bit. The old refcount structures simply become free clusters.
//!
//! Runs during a read-write open, before any other request. Must not import `job`, `qmp`,
//! `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::cache::{get_u64, set_u64};
use super::cluster::Kind;
use super::entry::{L1Entry, L2Entry, compressed_span};
use super::header::{INCOMPAT_DIRTY, MAX_REFTABLE_BYTES, OFF_INCOMPAT, OFF_REFTABLE};
use super::lock::MetaGuard;
use super::refcount::rb_set;
use super::units::HostOffset;
use super::{OFFSET_MASK, Qcow2};

fn bad(msg: String) -> Error {
    Error::io_msg(Errno::EIO, format!("qcow2: cannot repair refcounts: {msg}"))
}

/// Count one reference to every cluster of `[off, off + len)` (at least one byte), clusters
/// `cs` bytes long.
fn add_ref(counts: &mut [u64], cs: u64, off: u64, len: u64) -> Result<()> {
    let first = off / cs;
    let last = (off + len.max(1) - 1) / cs;
    for c in first..=last {
        let slot = counts.get_mut(c as usize).ok_or_else(|| {
            bad(format!(
                "reference to {off:#x} lies beyond the end of the file"
            ))
        })?;
        *slot += 1;
    }
    Ok(())
}

impl Qcow2 {
    /// Rebuild all refcounts from the mappings and clear the dirty bit.
    /// `count_old`: the old refcount table and blocks keep a count of one (the check's rebuild,
    /// whose leak pass then frees them with a "Repairing cluster" line each, as QEMU's does);
    /// otherwise they simply become free.
    pub(crate) async fn rebuild_refcounts(
        &self,
        held: &MetaGuard<'_>,
        count_old: bool,
    ) -> Result<()> {
        let cs = self.layout.cs();
        let file_clusters = self.file.len().div_ceil(cs);
        // Bounded by the file size: every valid reference lies inside the file.
        let mut counts = super::check_walk::cluster_counts(self.file.len(), cs)?;
        self.count_mapped_refs(&mut counts).await?;
        if count_old {
            self.count_old_refcount_structures(&mut counts);
        }
        self.count_bitmap_refs(&mut counts).await?;
        // New table and blocks after everything, covering themselves.
        let base = file_clusters.max(1);
        let (area, table) =
            self.new_refcount_structures(&mut counts, base, self.layout.refcount_order.get())?;
        self.switch_refcounts(held, base * cs, area, table).await
    }

    /// Count the header (and its LUKS area), the active L1 table and every snapshot's (with every L2 table and
    /// cluster they map: once per L1 table reaching them), and the snapshot table.
    pub(super) async fn count_mapped_refs(&self, counts: &mut [u64]) -> Result<()> {
        let cs = self.layout.cs();
        add_ref(counts, cs, 0, cs)?;
        if let Some((off, len)) = self.crypto_area() {
            add_ref(counts, cs, off, len)?;
        }
        let l1 = self.l2.snapshot();
        if !l1.is_empty() {
            add_ref(counts, cs, self.l2.l1_offset().bytes(), self.l2.l1_bytes())?;
        }
        self.count_l1_refs(counts, l1).await?;
        let snaps = self.snaps.borrow().clone();
        for sn in &snaps {
            let table = self.read_snapshot_l1(sn).await?;
            if sn.l1_size > 0 {
                add_ref(counts, cs, sn.l1_offset, sn.l1_size as u64 * 8)?;
            }
            self.count_l1_refs(counts, table).await?;
        }
        match self.snap_table.get() {
            (_, 0) => Ok(()),
            (at, len) => add_ref(counts, cs, at, len),
        }
    }

    /// Count the L2 tables of `l1` and every cluster they map.
    async fn count_l1_refs(&self, counts: &mut [u64], l1: Vec<L1Entry>) -> Result<()> {
        let cs = self.layout.cs();
        for e in l1 {
            let l2 = e.l2_offset().bytes();
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(cs) {
                return Err(bad(format!("L2 table offset {l2:#x} is unaligned")));
            }
            add_ref(counts, cs, l2, cs)?;
            let (buf, r) = self
                .file
                .read(l2, IoBuf::new(cs as usize), ReqFlags::NONE)
                .await;
            r?;
            for chunk in buf
                .as_slice()
                .chunks_exact(self.layout.l2_entry_bytes() as usize)
            {
                let entry = L2Entry::from_raw(get_u64(chunk, 0));
                match self.classify(entry)? {
                    // Clusters of an external data file are not refcounted.
                    Kind::Normal { .. } | Kind::Zero { host: Some(_) } if self.has_data_file() => {}
                    Kind::Normal { host, .. } | Kind::Zero { host: Some(host) } => {
                        add_ref(counts, cs, host.bytes(), cs)?
                    }
                    Kind::Compressed { offset, len } => {
                        let (start, len) = compressed_span(offset, len);
                        add_ref(counts, cs, start.bytes(), len)?
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Persistent bitmaps own clusters too; counted the way the check counts them (only
    /// read when the autoclear bit says they are valid, as the check does).
    pub(super) async fn count_bitmap_refs(&self, counts: &mut [u64]) -> Result<()> {
        let bitmaps = if self.layout.autoclear.get() & super::bitmaps::AUTOCLEAR_BITMAPS != 0 {
            self.bitmap_refs().await?
        } else {
            Vec::new()
        };
        for (c, n) in bitmaps.into_iter().enumerate() {
            if n > 0 {
                let slot = counts
                    .get_mut(c)
                    .ok_or_else(|| bad("a bitmap lies beyond the end of the file".into()))?;
                *slot += n;
            }
        }
        Ok(())
    }

    /// A refcount table and blocks of `2^order`-bit entries placed at cluster `base`, sized
    /// to cover `counts` and themselves (whose clusters are added to `counts`), filled in: the
    /// area's bytes (table then blocks) and the table's entries.
    pub(super) fn new_refcount_structures(
        &self,
        counts: &mut Vec<u64>,
        base: u64,
        order: u32,
    ) -> Result<(Vec<u8>, Vec<u64>)> {
        let cs = self.layout.cs();
        let rb_entries = (cs * 8) >> order;
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = base + rt + rb;
            let nrb = total.div_ceil(rb_entries);
            let nrt = (nrb * 8).div_ceil(cs);
            if (nrb, nrt) == (rb, rt) {
                break;
            }
            (rb, rt) = (nrb, nrt);
        }
        if rt * cs > MAX_REFTABLE_BYTES {
            return Err(bad("the refcount table would be too large".into()));
        }
        let total = base + rt + rb;
        counts.resize(total as usize, 0);
        for c in base..total {
            counts[c as usize] = 1;
        }
        let max = if order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << order)) - 1
        };
        let mut area = vec![0u8; ((rt + rb) * cs) as usize];
        let mut table = vec![0u64; (rt * cs / 8) as usize];
        for b in 0..rb {
            table[b as usize] = (base + rt + b) * cs;
        }
        for (c, &n) in counts.iter().enumerate() {
            if n > max {
                return Err(bad(format!("cluster {c} has {n} references")));
            }
            let b = c as u64 / rb_entries;
            let start = ((rt + b) * cs) as usize;
            rb_set(
                &mut area[start..start + cs as usize],
                order,
                c % rb_entries as usize,
                n,
            );
        }
        for (i, e) in table.iter().enumerate() {
            set_u64(&mut area, i, *e);
        }
        Ok((area, table))
    }

    /// Write the new refcount `area` at `table_off`, point the header at its table and clear
    /// the dirty bit, each step flushed before the next; then use the new table in memory.
    async fn switch_refcounts(
        &self,
        held: &MetaGuard<'_>,
        table_off: u64,
        area: Vec<u8>,
        table: Vec<u64>,
    ) -> Result<()> {
        let rt = (table.len() as u64 * 8).div_ceil(self.layout.cs());
        self.file
            .write(table_off, IoBuf::from_slice(&area), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&table_off.to_be_bytes());
        hdr.extend_from_slice(&(rt as u32).to_be_bytes());
        self.file
            .write(OFF_REFTABLE, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let incompat = self.layout.incompat.get() & !INCOMPAT_DIRTY;
        self.file
            .write(
                OFF_INCOMPAT,
                IoBuf::from_slice(&incompat.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.layout.incompat.set(incompat);
        self.alloc
            .replace_table(held, HostOffset::new(table_off), table);
        Ok(())
    }

    /// Count the clusters of the current refcount table and its (aligned, in-file) blocks.
    fn count_old_refcount_structures(&self, counts: &mut [u64]) {
        let cs = self.layout.cs();
        let table_clusters = (self.alloc.reftable_bytes()).div_ceil(cs);
        let first = self.alloc.reftable_offset().bytes() / cs;
        let blocks = self.alloc.reftable_snapshot();
        let old = (first..first + table_clusters).chain(
            blocks
                .iter()
                .map(|e| e & OFFSET_MASK)
                .filter(|b| *b != 0 && b.is_multiple_of(cs))
                .map(|b| b / cs),
        );
        for c in old {
            if let Some(slot) = counts.get_mut(c as usize) {
                *slot += 1;
            }
        }
    }
}
