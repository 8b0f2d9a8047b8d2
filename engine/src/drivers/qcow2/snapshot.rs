//! qcow2 internal snapshots: loading the snapshot table at open, and create / apply (revert) /
//! delete, crash-ordered the way QEMU orders them:
//!
//! - create: flush; copy the active L1 table to new clusters; add one reference to every L2
//!   table and cluster the active L1 reaches (clearing COPIED, the tables are shared now);
//!   refcounts durable, then the active L1; then the new snapshot table and the header. A
//!   crash before the header leaves only leaks.
//! - apply: add one reference to what the snapshot reaches; durable; write the snapshot's L1
//!   over the active one; durable; drop one reference from what the old active L1 reached;
//!   set COPIED where a refcount is one again. A crash in between leaves leaks.
//! - delete: the table without the entry and the header first (durable), then drop one
//!   reference from what the snapshot reached, free its L1 table, fix COPIED in the active
//!   tables. A crash after the header leaves leaks.
//!
//! Copy-on-write of L2 tables shared with a snapshot is in `l2_cow.rs`; the table's bytes in
//! `snapshot_table.rs`. Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::collections::BTreeMap;

use crate::driver::{NewSnapshot, SnapshotInfo};
use crate::error::{Errno, Error, Result};
use crate::graph::Child;
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::cache::{get_u64, set_u64};
use super::entry::{L1Entry, L2Entry, compressed_span};
use super::header::{self, Header};
use super::lock::MetaGuard;
use super::snapshot_table::{self, ReadMode, SnapshotEntry, TableError};
use super::units::{HostCluster, HostOffset};

/// Offset of `nb_snapshots` in the header (followed by `snapshots_offset`).
const OFF_NB_SNAPSHOTS: u64 = 60;
/// Largest L1 table QEMU accepts, in entries (32 MiB).
const MAX_SNAPSHOT_L1_ENTRIES: u64 = (32 << 20) / 8;

/// Read and decode the snapshot table the header `h` describes (strict: a hostile table
/// fails the open with what is wrong).
pub(super) async fn load_table(
    file: &Child,
    h: &Header,
    mode: ReadMode,
) -> Result<(Vec<SnapshotEntry>, u64)> {
    if h.nb_snapshots == 0 {
        return Ok((Vec::new(), 0));
    }
    let avail = file.len().saturating_sub(h.snapshots_offset);
    let mut want = (h.nb_snapshots as u64 * 48).min(avail);
    loop {
        let (buf, r) = file
            .read(
                h.snapshots_offset,
                IoBuf::new(want as usize),
                ReqFlags::NONE,
            )
            .await;
        r.map_err(|e| e.context("Failed to read snapshot table"))?;
        let mut notes = Vec::new();
        match snapshot_table::decode_table(buf.as_slice(), h.nb_snapshots, mode, &mut notes) {
            Ok(found) => return Ok(found),
            Err(TableError::Invalid(e)) => return Err(e),
            Err(TableError::Short(need)) => {
                if need > avail {
                    return Err(Error::generic(
                        "Failed to read snapshot table: the table lies beyond the end of the file",
                    ));
                }
                if need > snapshot_table::MAX_TABLE_BYTES + 64 * 1024 + 48 {
                    return Err(Error::generic("Snapshot table is too big"));
                }
                // Grow geometrically so a long table costs few reads.
                want = need.max(want * 2).min(avail);
            }
        }
    }
}

impl SnapshotEntry {
    /// The public view of this entry.
    pub(super) fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id_str(),
            name: self.name_str(),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount,
            disk_size: self.disk_size,
        }
    }
}

impl Qcow2 {
    /// The snapshots as listed (table order).
    pub(super) fn snapshot_infos(&self) -> Vec<SnapshotInfo> {
        self.snaps
            .borrow()
            .iter()
            .map(SnapshotEntry::info)
            .collect()
    }

    /// Index of the snapshot whose id is `id` (when given) and name is `name` (when given).
    fn find_snapshot(&self, id: Option<&str>, name: Option<&str>) -> Option<usize> {
        self.snaps.borrow().iter().position(|s| {
            id.is_none_or(|i| s.id == i.as_bytes()) && name.is_none_or(|n| s.name == n.as_bytes())
        })
    }

    /// The snapshot `key` names: by id first, then by name (QEMU's lookup for apply).
    pub(super) fn find_snapshot_by_id_or_name(&self, key: &str) -> Option<usize> {
        self.find_snapshot(Some(key), None)
            .or_else(|| self.find_snapshot(None, Some(key)))
    }

    /// Refuse a snapshot operation where the image cannot take one.
    async fn snapshot_writable(&self) -> Result<()> {
        if self.has_data_file() {
            return Err(Error::io(Errno::ENOTSUP));
        }
        self.check_writable().await
    }

    /// Create snapshot `spec` (a free id is chosen when `spec.id` is `None`).
    pub(super) async fn create_snapshot(&self, spec: NewSnapshot) -> Result<SnapshotInfo> {
        self.snapshot_writable().await?;
        let held = &self.meta.lock().await;
        let id = match spec.id {
            Some(id) => id,
            None => self.next_snapshot_id(),
        };
        if self.find_snapshot(Some(&id), None).is_some() {
            return Err(Error::io(Errno::EEXIST));
        }
        snapshot_table::check_lengths(id.as_bytes(), spec.name.as_bytes())?;
        self.flush_metadata(held).await?;
        let l1 = self.l2.snapshot();
        self.check_refcount_room(held, &l1).await?;
        // Every table and cluster gains the snapshot's reference; COPIED goes.
        let shared = self.adjust_refs(held, &l1, 1, true).await?;
        let l1_offset = self.store_l1_copy(held, &shared).await?;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        self.write_active_l1(&shared).await?;
        let entry = SnapshotEntry {
            l1_offset: l1_offset.bytes(),
            l1_size: l1.len() as u32,
            id: id.into_bytes(),
            name: spec.name.into_bytes(),
            date_sec: spec.date_sec,
            date_nsec: spec.date_nsec,
            vm_clock_nsec: spec.vm_clock_nsec,
            vm_state_size: 0,
            disk_size: Some(self.layout.size.get()),
            icount: spec.icount,
            unknown_extra: Vec::new(),
            extra_len: snapshot_table::KNOWN_EXTRA,
        };
        let info = entry.info();
        let mut table = self.snaps.borrow().clone();
        table.push(entry);
        self.write_snapshot_table(held, table).await?;
        Ok(info)
    }

    /// One more than the largest numeric id (QEMU's numbering).
    fn next_snapshot_id(&self) -> String {
        let max = self
            .snaps
            .borrow()
            .iter()
            .filter_map(|s| std::str::from_utf8(&s.id).ok()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        (max + 1).to_string()
    }

    /// Write `l1` (a snapshot's copy of the active table) to new clusters; its offset.
    async fn store_l1_copy(&self, held: &MetaGuard<'_>, l1: &[L1Entry]) -> Result<HostOffset> {
        if l1.is_empty() {
            return Ok(HostOffset::new(0));
        }
        let bytes = l1.len() as u64 * 8;
        let clusters = bytes.div_ceil(self.layout.cs());
        let at = self
            .layout
            .cluster_offset(self.alloc_clusters(held, clusters).await?);
        self.pre_write_check(0, at.bytes(), bytes).await?;
        self.file
            .write(
                at.bytes(),
                IoBuf::from_slice(&encode_l1(l1)),
                ReqFlags::NONE,
            )
            .await
            .1?;
        Ok(at)
    }

    /// Write the whole active L1 table as `l1` (durable when this returns) and keep it.
    async fn write_active_l1(&self, l1: &[L1Entry]) -> Result<()> {
        let at = self.l2.l1_offset().bytes();
        let mut raw = encode_l1(l1);
        raw.resize(self.l2.l1_bytes() as usize, 0);
        if raw.is_empty() {
            return Ok(());
        }
        self.pre_write_check(super::overlap::OL_ACTIVE_L1, at, raw.len() as u64)
            .await?;
        self.file
            .debug_event(crate::event::DebugEvent::L1Update)
            .await;
        self.file
            .write(at, IoBuf::from_slice(&raw), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        for i in 0..self.l2.l1_len() {
            self.l2
                .set(i, l1.get(i).copied().unwrap_or(L1Entry::UNALLOCATED));
        }
        Ok(())
    }

    /// Add `delta` (1, -1 or 0) to the refcount of every L2 table and cluster `l1` reaches.
    /// With `fix_copied`, COPIED is set in the L2 entries (through the cache) exactly where the
    /// refcount is one. Returns `l1` with COPIED recomputed the same way. L2 tables that lose
    /// their last reference leave the cache.
    async fn adjust_refs(
        &self,
        held: &MetaGuard<'_>,
        l1: &[L1Entry],
        delta: i64,
        fix_copied: bool,
    ) -> Result<Vec<L1Entry>> {
        let cs = self.layout.cs();
        let mut out = Vec::with_capacity(l1.len());
        for (i, e) in l1.iter().enumerate() {
            let off = e.l2_offset();
            if off.bytes() == 0 {
                out.push(*e);
                continue;
            }
            if !off.is_cluster_aligned(self.layout.cluster_bits) {
                return Err(Error::io_msg(
                    Errno::EIO,
                    format!("qcow2: L2 table offset {off:#x} unaligned (L1 index: {i:#x})"),
                ));
            }
            self.adjust_l2_refs(held, off, delta, fix_copied).await?;
            let c = self.layout.cluster_of(off);
            if delta != 0 {
                self.update_refcount(held, c, delta).await?;
            }
            let n = self.refcount(held, c).await?;
            if n == 0 {
                self.l2.cache.remove(off.bytes());
            }
            out.push(e.with_copied(n == 1));
        }
        debug_assert!(cs > 0);
        Ok(out)
    }

    /// Refuse, before anything changes, a new reference to everything `l1` reaches that would
    /// overflow a refcount (EINVAL for one-bit refcounts, as QEMU; ERANGE otherwise).
    async fn check_refcount_room(&self, held: &MetaGuard<'_>, l1: &[L1Entry]) -> Result<()> {
        let max = self.layout.max_refcount();
        if max < 2 {
            return Err(Error::io(Errno::EINVAL));
        }
        let mut adds: BTreeMap<u64, u64> = BTreeMap::new();
        for e in l1 {
            let off = e.l2_offset();
            if off.bytes() == 0 {
                continue;
            }
            *adds.entry(self.layout.cluster_of(off).index()).or_default() += 1;
            for c in self.clusters_mapped_by(held, off).await? {
                *adds.entry(c.index()).or_default() += 1;
            }
        }
        for (c, n) in adds {
            if self.refcount(held, HostCluster::new(c)).await? + n > max {
                return Err(Error::io(Errno::ERANGE));
            }
        }
        Ok(())
    }

    /// Every host cluster the entries of the L2 table at `off` reference, once per reference.
    async fn clusters_mapped_by(
        &self,
        held: &MetaGuard<'_>,
        off: HostOffset,
    ) -> Result<Vec<HostCluster>> {
        let table = self.l2_table_copy(held, off).await?;
        let mut out = Vec::new();
        let stride = self.layout.l2_entry_bytes() as usize / 8;
        for j in 0..self.layout.l2_entries() as usize {
            match self.classify(L2Entry::from_raw(get_u64(&table, j * stride)))? {
                super::cluster::Kind::Normal { host, .. }
                | super::cluster::Kind::Zero { host: Some(host) } => {
                    out.push(self.layout.cluster_of(host))
                }
                super::cluster::Kind::Compressed { offset, len } => {
                    let (start, len) = compressed_span(offset, len);
                    let first = self.layout.cluster_of(start);
                    let last = self.layout.cluster_of(start + (len - 1));
                    out.extend(first.to(last + 1));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A copy of the L2 table at `off` (loaded through the cache).
    pub(super) async fn l2_table_copy(
        &self,
        held: &MetaGuard<'_>,
        off: HostOffset,
    ) -> Result<Vec<u8>> {
        self.load_l2(held, off).await?;
        Ok(self
            .l2
            .cache
            .with(off.bytes(), false, |t| t.to_vec())
            .expect("just loaded"))
    }

    /// `adjust_refs` for the entries of the L2 table at `off`.
    async fn adjust_l2_refs(
        &self,
        held: &MetaGuard<'_>,
        off: HostOffset,
        delta: i64,
        fix_copied: bool,
    ) -> Result<()> {
        let table = self.l2_table_copy(held, off).await?;
        let per = self.layout.l2_entries() as usize;
        // 8-byte words per entry (extended entries carry their bitmap in the second).
        let stride = self.layout.l2_entry_bytes() as usize / 8;
        for j in 0..per {
            let entry = L2Entry::from_raw(get_u64(&table, j * stride));
            let refs = match self.classify(entry)? {
                super::cluster::Kind::Normal { host, .. }
                | super::cluster::Kind::Zero { host: Some(host) } => {
                    let c = self.layout.cluster_of(host);
                    if delta != 0 {
                        self.update_refcount(held, c, delta).await?;
                    }
                    self.refcount(held, c).await?
                }
                super::cluster::Kind::Compressed { offset, len } => {
                    if delta != 0 {
                        let (start, len) = compressed_span(offset, len);
                        let first = self.layout.cluster_of(start);
                        let last = self.layout.cluster_of(start + (len - 1));
                        for c in first.to(last + 1) {
                            self.update_refcount(held, c, delta).await?;
                        }
                    }
                    // Compressed clusters never carry COPIED.
                    continue;
                }
                _ => continue,
            };
            let fixed = entry.with_copied(refs == 1);
            if fix_copied && fixed != entry {
                self.l2
                    .cache
                    .with(off.bytes(), true, |t| set_u64(t, j * stride, fixed.raw()))
                    .expect("still cached");
            }
        }
        Ok(())
    }

    /// Replace the snapshot table with `table`: new clusters, written and durable, then the
    /// header (count and offset) durable, then the old table's clusters freed.
    async fn write_snapshot_table(
        &self,
        held: &MetaGuard<'_>,
        table: Vec<SnapshotEntry>,
    ) -> Result<()> {
        let raw = snapshot_table::encode_table(&table, self.layout.size.get());
        if raw.len() as u64 > snapshot_table::MAX_TABLE_BYTES {
            return Err(Error::generic("Snapshot table is too big"));
        }
        let at = if raw.is_empty() {
            HostOffset::new(0)
        } else {
            let clusters = (raw.len() as u64).div_ceil(self.layout.cs());
            let at = self
                .layout
                .cluster_offset(self.alloc_clusters(held, clusters).await?);
            self.pre_write_check(0, at.bytes(), raw.len() as u64)
                .await?;
            self.file
                .write(at.bytes(), IoBuf::from_slice(&raw), ReqFlags::NONE)
                .await
                .1?;
            at
        };
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&(table.len() as u32).to_be_bytes());
        hdr.extend_from_slice(&at.bytes().to_be_bytes());
        self.file
            .write(OFF_NB_SNAPSHOTS, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let (old_at, old_len) = self.snap_table.replace((at.bytes(), raw.len() as u64));
        *self.snaps.borrow_mut() = table;
        if old_len > 0 {
            let first = self.layout.cluster_of(HostOffset::new(old_at));
            self.free_unreferenced(held, first, old_len.div_ceil(self.layout.cs()))
                .await?;
        }
        self.flush_metadata(held).await
    }

    /// Revert the active disk to snapshot `key` (id, else name).
    pub(super) async fn apply_snapshot(&self, key: &str) -> Result<()> {
        self.snapshot_writable().await?;
        let held = &self.meta.lock().await;
        let Some(idx) = self.find_snapshot_by_id_or_name(key) else {
            return Err(Error::io(Errno::ENOENT));
        };
        let sn = self.snaps.borrow()[idx].clone();
        if sn.disk_size.is_some_and(|d| d != self.layout.size.get()) {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                "qcow2: applying a snapshot of another disk size is not supported",
            ));
        }
        let sn_l1 = self.read_snapshot_l1(&sn).await?;
        if sn_l1.len() > self.l2.l1_len() {
            self.grow_l1(held, sn_l1.len() as u64).await?;
        }
        self.flush_metadata(held).await?;
        self.check_refcount_room(held, &sn_l1).await?;
        self.adjust_refs(held, &sn_l1, 1, false).await?;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        let old = self.l2.snapshot();
        let cleared: Vec<L1Entry> = sn_l1.iter().map(|e| e.with_copied(false)).collect();
        self.write_active_l1(&cleared).await?;
        // Every cached table is clean (flushed): the old active ones may be freed below.
        self.l2.cache.clear();
        self.adjust_refs(held, &old, -1, false).await?;
        let fixed = self.adjust_refs(held, &self.l2.snapshot(), 0, true).await?;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        self.write_active_l1(&fixed).await
    }

    /// Delete the snapshot with `id` and/or `name` (the first that matches both given).
    pub(super) async fn delete_snapshot(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SnapshotInfo> {
        self.snapshot_writable().await?;
        let held = &self.meta.lock().await;
        let Some(idx) = self.find_snapshot(id, name) else {
            return Err(Error::io_msg(Errno::ENOENT, "snapshot not found"));
        };
        let sn = self.snaps.borrow()[idx].clone();
        let sn_l1 = self.read_snapshot_l1(&sn).await?;
        self.flush_metadata(held).await?;
        let mut table = self.snaps.borrow().clone();
        table.remove(idx);
        self.write_snapshot_table(held, table).await?;
        self.adjust_refs(held, &sn_l1, -1, false).await?;
        if sn.l1_size > 0 {
            let first = self.layout.cluster_of(HostOffset::new(sn.l1_offset));
            let n = (sn.l1_size as u64 * 8).div_ceil(self.layout.cs());
            self.free_unreferenced(held, first, n).await?;
        }
        let fixed = self.adjust_refs(held, &self.l2.snapshot(), 0, true).await?;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        self.write_active_l1(&fixed).await?;
        Ok(sn.info())
    }

    /// The L1 table of snapshot `sn`, validated (aligned, in range, inside the file).
    pub(super) async fn read_snapshot_l1(&self, sn: &SnapshotEntry) -> Result<Vec<L1Entry>> {
        if sn.l1_size as u64 > MAX_SNAPSHOT_L1_ENTRIES {
            return Err(Error::generic("Snapshot L1 table too large"));
        }
        let bytes = sn.l1_size as u64 * 8;
        let in_file = sn
            .l1_offset
            .checked_add(bytes)
            .is_some_and(|e| e <= self.file.len());
        if !sn.l1_offset.is_multiple_of(self.layout.cs())
            || !in_file
            || (sn.l1_offset == 0 && bytes > 0)
        {
            return Err(Error::generic("Snapshot L1 table offset invalid"));
        }
        let (buf, r) = self
            .file
            .read(sn.l1_offset, IoBuf::new(bytes as usize), ReqFlags::NONE)
            .await;
        r?;
        Ok(buf
            .as_slice()
            .chunks_exact(8)
            .map(|c| L1Entry::from_raw(u64::from_be_bytes(c.try_into().expect("8 bytes"))))
            .collect())
    }
}

/// `l1` as stored (big-endian entries).
fn encode_l1(l1: &[L1Entry]) -> Vec<u8> {
    l1.iter().flat_map(|e| e.raw().to_be_bytes()).collect()
}

/// Header fields this module rewrites (checked against the header's layout).
const _: () = assert!(OFF_NB_SNAPSHOTS + 4 == 64 && header::SNAPSHOT_ENTRY_MIN == 40);
