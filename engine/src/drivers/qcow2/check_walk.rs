//! qcow2 consistency check, first half: counting the references to every host cluster.
//!
//! Walks everything that owns host clusters — the header, the active L1 table and its L2
//! tables (with their data and compressed clusters), the internal snapshots' L1/L2 tables, the
//! snapshot table, the refcount table, the persistent dirty bitmaps (directory, tables, data)
//! and the refcount blocks — and counts, per host cluster, how often it is referenced. Structural problems found on the way (misaligned tables or
//! clusters, refcount blocks outside the image, reference overflow) are counted as
//! corruptions, as `qemu-img check` does. The comparison with the stored refcounts and the
//! repairs live in `check`.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::io::{IoBuf, ReqFlags};

use super::bitmaps::{AUTOCLEAR_BITMAPS, BITMAP_ENTRY_RESERVED, EXT_BITMAPS};
use super::cache::get_u64;
use super::entry::{L1Entry, L2Entry};
use super::header::Header;
use super::units::HostOffset;
use super::{OFFSET_MASK, Qcow2};
use crate::driver::CheckReport;

/// Flags of refcount table entries that must be zero.
const REFT_RESERVED: u64 = 0x1ff;
/// Largest L1 table of a snapshot, in entries.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// Expected refcount per host cluster: dense over the image file, sparse beyond its end
/// (at most the one cluster a partly written last cluster may reach into).
pub(crate) struct Refs {
    /// Clusters inside the file.
    pub dense: Vec<u64>,
    /// Clusters referenced beyond the end of the file.
    pub beyond: BTreeMap<u64, u64>,
    max: u64,
}

impl Refs {
    fn get_mut(&mut self, k: u64) -> &mut u64 {
        match self.dense.get_mut(k as usize) {
            Some(v) => v,
            None => self.beyond.entry(k).or_insert(0),
        }
    }

    /// The number of references to cluster `k`.
    pub fn get(&self, k: u64) -> u64 {
        match self.dense.get(k as usize) {
            Some(v) => *v,
            None => self.beyond.get(&k).copied().unwrap_or(0),
        }
    }
}

/// Most host clusters the check and the refcount rebuild keep a count for (8 bytes each):
/// 4 TiB of image file with 64 KiB clusters. A (sparse) file larger than that is refused
/// rather than turned into an allocation of its size (QEMU's check fails with "out of memory"
/// there); a guest write to a corrupt mapping far past the end of the file makes one.
pub(crate) const MAX_CHECK_CLUSTERS: u64 = 1 << 26;

/// A zeroed count per host cluster of the image file, or the error for a file too large.
pub(crate) fn cluster_counts(file_len: u64, cs: u64) -> Result<Vec<u64>> {
    let n = file_len.div_ceil(cs);
    if n > MAX_CHECK_CLUSTERS {
        return Err(crate::error::Error::io_msg(
            crate::error::Errno::ENOMEM,
            format!(
                "qcow2: the image file is too large to check ({n} clusters, at most \
                 {MAX_CHECK_CLUSTERS})"
            ),
        ));
    }
    Ok(vec![0; n as usize])
}

/// An internal snapshot's L1 table, from the snapshot table.
struct SnapL1 {
    id: String,
    name: String,
    offset: u64,
    size: u32,
}

impl Qcow2 {
    /// Count one reference to every cluster touched by `[off, off + size)`.
    fn inc_refs(&self, refs: &mut Refs, rep: &mut CheckReport, off: u64, size: u64) {
        if size == 0 {
            return;
        }
        // The last cluster may be partly beyond the end of the file; more is corrupt.
        if off as u128 + size as u128 >= self.file.len() as u128 + self.layout.cs() as u128 {
            rep.error(format!(
                "ERROR: counting reference for region exceeding the end of the file by one \
                 cluster or more: offset {off:#x} size {size:#x}"
            ));
            rep.corruptions += 1;
            return;
        }
        let bits = self.layout.cluster_bits;
        for k in (off >> bits)..=((off + size - 1) >> bits) {
            let max = refs.max;
            let v = refs.get_mut(k);
            if *v == max {
                rep.error(format!("ERROR: overflow cluster offset={:#x}", k << bits));
                rep.corruptions += 1;
                continue;
            }
            *v += 1;
        }
    }

    /// Read `len` bytes at `off`; bytes past the end of the file read as zeroes.
    pub(super) async fn read_meta(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let end = self.file.len();
        let mut out = vec![0u8; len as usize];
        if off < end {
            let n = (end - off).min(len);
            let (buf, r) = self
                .file
                .read(off, IoBuf::new(n as usize), ReqFlags::NONE)
                .await;
            r?;
            out[..n as usize].copy_from_slice(buf.as_slice());
        }
        Ok(out)
    }

    /// Count every internal snapshot's L1 table (and what it maps) and the snapshot table.
    async fn count_snapshots(&self, refs: &mut Refs, rep: &mut CheckReport) -> Result<()> {
        let cs = self.layout.cs();
        let (snaps, table_size) = self.snapshot_l1s();
        for s in snaps {
            if !s.offset.is_multiple_of(cs) {
                rep.error(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; \
                     snapshot table entry corrupted",
                    s.id, s.name, s.offset
                ));
                rep.corruptions += 1;
                continue;
            }
            if s.size as u64 > MAX_L1_ENTRIES {
                rep.error(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; \
                     snapshot table entry corrupted",
                    s.id, s.name, s.size
                ));
                rep.corruptions += 1;
                continue;
            }
            // Not read past the end of the file: zero-filled tables of up to 32 MiB for
            // each of thousands of entries would be a denial of service.
            let end = s.offset.checked_add(s.size as u64 * 8);
            if end.is_none_or(|e| e > self.file.len()) {
                rep.error(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table lies beyond the end of \
                     the file; snapshot table entry corrupted",
                    s.id, s.name, s.offset
                ));
                rep.corruptions += 1;
                continue;
            }
            let raw = self.read_meta(s.offset, s.size as u64 * 8).await?;
            let table: Vec<L1Entry> = raw
                .chunks_exact(8)
                .map(|c| L1Entry::from_raw(u64::from_be_bytes(c.try_into().expect("8 bytes"))))
                .collect();
            self.count_l1(refs, rep, s.offset, &table, false).await?;
        }
        self.inc_refs(refs, rep, self.snap_table.get().0, table_size);
        Ok(())
    }

    /// Count the refcount blocks of `reftable`; true when the refcount structure itself is
    /// broken (reserved bits, a block shared with something else).
    fn count_refcount_blocks(
        &self,
        refs: &mut Refs,
        rep: &mut CheckReport,
        reftable: &[u64],
    ) -> bool {
        let cs = self.layout.cs();
        let mut rebuild = false;
        let file_clusters = refs.dense.len() as u64;
        for (i, e) in reftable.iter().enumerate() {
            let off = e & !REFT_RESERVED;
            if e & REFT_RESERVED != 0 {
                rep.error(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                rep.corruptions += 1;
                rebuild = true;
                continue;
            }
            let block = HostOffset::new(off);
            if self.layout.cluster_of(block).index() >= file_clusters {
                rep.corruptions += 1;
                rep.error(format!("ERROR refcount block {i} is outside image"));
                continue;
            }
            if off != 0 {
                self.inc_refs(refs, rep, off, cs);
                let n = refs.get(self.layout.cluster_of(block).index());
                if n != 1 {
                    rep.error(format!("ERROR refcount block {i} refcount={n}"));
                    rep.corruptions += 1;
                    rebuild = true;
                }
            }
        }
        rebuild
    }

    /// Count the references of every structure of the image (QEMU's `calculate_refcounts`).
    /// Returns whether the refcount structure itself is broken (needs a rebuild).
    pub(crate) async fn count_refs(
        &self,
        h: &Header,
        rep: &mut CheckReport,
    ) -> Result<(Refs, bool)> {
        let cs = self.layout.cs();
        let mut refs = Refs {
            dense: cluster_counts(self.file.len(), cs)?,
            beyond: BTreeMap::new(),
            max: self.layout.max_refcount(),
        };
        self.inc_refs(&mut refs, rep, 0, cs);
        if let Some((off, len)) = h.crypto_area {
            // The LUKS header area of an encrypted image.
            self.inc_refs(&mut refs, rep, off, len);
        }
        let l1 = self.l2.snapshot();
        self.count_l1(&mut refs, rep, h.l1_offset, &l1, true)
            .await?;
        self.count_snapshots(&mut refs, rep).await?;
        let reftable = self.alloc.reftable_snapshot();
        self.inc_refs(
            &mut refs,
            rep,
            self.alloc.reftable_offset().bytes(),
            reftable.len() as u64 * 8,
        );
        self.count_bitmaps(&mut refs, rep, h).await?;
        let rebuild = self.count_refcount_blocks(&mut refs, rep, &reftable);
        Ok((refs, rebuild))
    }

    /// Count an L1 table, its L2 tables and their clusters. `active` also gathers the
    /// allocation statistics.
    async fn count_l1(
        &self,
        refs: &mut Refs,
        rep: &mut CheckReport,
        l1_offset: u64,
        l1: &[L1Entry],
        active: bool,
    ) -> Result<()> {
        let cs = self.layout.cs();
        self.inc_refs(refs, rep, l1_offset, l1.len() as u64 * 8);
        for &e in l1 {
            let l2 = e.l2_offset().bytes();
            if l2 == 0 {
                continue;
            }
            self.inc_refs(refs, rep, l2, cs);
            if !l2.is_multiple_of(cs) {
                rep.error(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                rep.corruptions += 1;
            }
            let table = match self.read_meta(l2, cs).await {
                Ok(t) => t,
                Err(e) => {
                    rep.error("ERROR: I/O error in check_refcounts_l2".to_string());
                    rep.check_errors += 1;
                    return Err(e);
                }
            };
            self.count_l2(refs, rep, &table, active);
        }
        Ok(())
    }

    fn count_l2(&self, refs: &mut Refs, rep: &mut CheckReport, table: &[u8], active: bool) {
        let cs = self.layout.cs();
        let mut next_contiguous = 0u64;
        let ext = self.layout.ext_l2;
        for (i, c) in table
            .chunks_exact(self.layout.l2_entry_bytes() as usize)
            .enumerate()
        {
            let entry = L2Entry::from_raw(get_u64(c, 0));
            // The subcluster bitmap of an extended entry (bit s allocated, 32 + s zero).
            let bitmap = if ext { get_u64(c, 1) } else { 0 };
            if let Some((offset, len)) = entry.compressed(self.layout.cluster_bits) {
                let offset = offset.bytes();
                if entry.is_copied() {
                    rep.error(format!(
                        "ERROR: coffset={offset:#x}: copied flag must never be set for \
                         compressed clusters"
                    ));
                    rep.corruptions += 1;
                }
                if bitmap != 0 {
                    // Not counted: its clusters then show as leaked, as in QEMU.
                    rep.error(format!(
                        "ERROR compressed cluster {i} with non-zero subcluster allocation \
                         bitmap, entry={:#x}",
                        entry.raw()
                    ));
                    rep.corruptions += 1;
                    continue;
                }
                self.inc_refs(refs, rep, offset, len);
                if active {
                    rep.allocated_clusters += 1;
                    rep.compressed_clusters += 1;
                    rep.fragmented_clusters += 1;
                }
                continue;
            }
            // The walk counts raw byte ranges (a misaligned offset still counts).
            let host = entry.host_offset().bytes();
            // Offset 0 is guest cluster 0's place in an external data file (COPIED set).
            if host == 0 && !(self.has_data_file() && entry.is_copied()) {
                if bitmap & 0xffff_ffff != 0 {
                    rep.error(
                        "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                            .to_string(),
                    );
                    rep.corruptions += 1;
                }
                continue;
            }
            if (bitmap >> 32) & bitmap != 0 {
                rep.error(format!(
                    "ERROR offset={host:x}: Allocated cluster has corrupted subcluster \
                     allocation bitmap"
                ));
                rep.corruptions += 1;
            }
            // A normal cluster, or a preallocated zero cluster (ZERO flag with a host offset).
            if active {
                rep.allocated_clusters += 1;
                if next_contiguous != 0 && host != next_contiguous {
                    rep.fragmented_clusters += 1;
                }
                next_contiguous = host + cs;
            }
            if !host.is_multiple_of(cs) {
                // Counted as corrupt, and its (misaligned) range still counts as used.
                // (Extended entries have no zero flag: their zeroes are in the bitmap.)
                let what = if entry.zero_bit() && !ext {
                    "Preallocated"
                } else {
                    "Data"
                };
                rep.error(format!(
                    "ERROR offset={host:x}: {what} cluster is not properly aligned; \
                     L2 entry corrupted."
                ));
                rep.corruptions += 1;
            }
            // Clusters of an external data file are not refcounted.
            if !self.has_data_file() {
                self.inc_refs(refs, rep, host, cs);
            }
        }
    }

    /// References of the persistent dirty bitmaps alone, per host cluster (for the refcount
    /// rebuild, which must not drop them). A broken bitmap directory is an error here: the
    /// rebuild cannot know which clusters it owns.
    pub(super) async fn bitmap_refs(&self) -> Result<Vec<u64>> {
        let h = self.read_header().await?;
        let mut refs = Refs {
            dense: cluster_counts(self.file.len(), self.layout.cs())?,
            beyond: BTreeMap::new(),
            max: u64::MAX,
        };
        let mut rep = CheckReport::default();
        self.count_bitmaps(&mut refs, &mut rep, &h).await?;
        if rep.corruptions != 0 || !refs.beyond.is_empty() {
            return Err(crate::error::Error::generic(
                "qcow2: cannot rebuild the refcounts: the bitmap directory is corrupt",
            ));
        }
        Ok(refs.dense)
    }

    /// Count the persistent dirty bitmaps (when the bitmaps autoclear bit is set): the bitmap
    /// directory, each bitmap table and its data clusters.
    async fn count_bitmaps(
        &self,
        refs: &mut Refs,
        rep: &mut CheckReport,
        h: &Header,
    ) -> Result<()> {
        if h.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return Ok(());
        }
        let Some(ext) = h.unknown_exts.iter().find(|e| e.magic == EXT_BITMAPS) else {
            return Ok(());
        };
        if ext.data.len() < 24 {
            return Ok(());
        }
        let be64 = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8"));
        let nb = u32::from_be_bytes(ext.data[0..4].try_into().expect("4 bytes"));
        let (dir_size, dir_off) = (be64(&ext.data, 8), be64(&ext.data, 16));
        if nb == 0 {
            return Ok(());
        }
        self.inc_refs(refs, rep, dir_off, dir_size);
        // Nothing is read past the end of the file (see the snapshot tables).
        let file_len = self.file.len();
        if dir_size > 64 << 20 || dir_off.checked_add(dir_size).is_none_or(|e| e > file_len) {
            rep.corruptions += 1;
            return Ok(());
        }
        let dir = self.read_meta(dir_off, dir_size).await?;
        let mut pos = 0usize;
        let cs = self.layout.cs();
        for _ in 0..nb {
            if pos + 24 > dir.len() {
                rep.corruptions += 1;
                return Ok(());
            }
            let table_off = be64(&dir, pos);
            let table_size = u32::from_be_bytes(dir[pos + 8..pos + 12].try_into().expect("4"));
            let name_size = u16::from_be_bytes(dir[pos + 18..pos + 20].try_into().expect("2"));
            let extra = u32::from_be_bytes(dir[pos + 20..pos + 24].try_into().expect("4"));
            pos += (24 + name_size as usize + extra as usize).next_multiple_of(8);
            let bytes = table_size as u64 * 8;
            self.inc_refs(refs, rep, table_off, bytes);
            if bytes > MAX_L1_ENTRIES * 8
                || !table_off.is_multiple_of(cs)
                || table_off.checked_add(bytes).is_none_or(|e| e > file_len)
            {
                rep.corruptions += 1;
                continue;
            }
            let table = self.read_meta(table_off, bytes).await?;
            for c in table.chunks_exact(8) {
                let entry = u64::from_be_bytes(c.try_into().expect("8 bytes"));
                let off = entry & OFFSET_MASK;
                let bad = entry & BITMAP_ENTRY_RESERVED != 0
                    || !off.is_multiple_of(cs)
                    || (entry & 1 != 0 && off != 0);
                if bad {
                    rep.corruptions += 1;
                    continue;
                }
                if off != 0 {
                    self.inc_refs(refs, rep, off, cs);
                }
            }
        }
        Ok(())
    }

    /// Each snapshot's L1 table (as loaded at open) and the snapshot table's size in bytes.
    fn snapshot_l1s(&self) -> (Vec<SnapL1>, u64) {
        let snaps = self
            .snaps
            .borrow()
            .iter()
            .map(|s| SnapL1 {
                id: s.id_str(),
                name: s.name_str(),
                offset: s.l1_offset,
                size: s.l1_size,
            })
            .collect();
        (snaps, self.snap_table.get().1)
    }
}
