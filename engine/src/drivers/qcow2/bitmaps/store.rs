//! The persistent bitmap verbs on an open image: list, load, store, remove, mark in use, and
//! the check at open.
//!
//! A change never edits the directory in place (but for the in-use flags, see
//! [`Qcow2::mark_in_use`]): the new bitmap data, tables and directory go
//! to fresh clusters (their refcounts durable first), then one header write switches the
//! extension to the new directory, then the old directory and the replaced bitmaps' clusters
//! are freed. A crash at any point leaves the old bitmaps or the new ones, plus at worst leaked
//! clusters, never a header pointing at half-written structures.

use crate::bitmap::HBits;
use crate::driver::{BitmapToStore, StoredBitmap};
use crate::error::{Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::super::Qcow2;
use super::super::header::Header;
use super::super::lock::MetaGuard;
use super::super::overlap::OL_BITMAP_DIRECTORY;
use super::super::units::HostOffset;
use super::dir::{self, FLAG_AUTO, FLAG_IN_USE};
use super::table::{self, ALL_ONES, bit_count, bits_per_cluster, table_entries};
use super::{
    BitmapExt, DirEntry, ExtState, MAX_BITMAPS, MAX_DIR_SIZE, MAX_GRANULARITY_BITS, MAX_NAME,
    MAX_PHYS_SIZE, MAX_TABLE_SIZE, MIN_GRANULARITY_BITS, einval,
};

impl Qcow2 {
    /// The valid bitmaps extension (if any) and its directory, read from the image.
    pub(crate) async fn bitmap_dir(&self) -> Result<(Option<BitmapExt>, Vec<DirEntry>)> {
        self.bitmap_dir_of(&self.read_header().await?).await
    }

    /// The valid bitmaps extension of header `h` (if any) and its directory.
    async fn bitmap_dir_of(&self, h: &Header) -> Result<(Option<BitmapExt>, Vec<DirEntry>)> {
        let Some(ext) = ExtState::of(h)?.valid() else {
            return Ok((None, Vec::new()));
        };
        let raw = self.read_meta(ext.dir_offset, ext.dir_size).await?;
        let entries = dir::parse(
            &raw,
            ext.nb_bitmaps,
            self.layout.cs(),
            self.layout.size.get(),
        )?;
        Ok((Some(ext), entries))
    }

    /// The checked table of bitmap `e`, which must have exactly the entries the current disk
    /// size needs.
    async fn bitmap_table(&self, e: &DirEntry) -> Result<Vec<u64>> {
        let cs = self.layout.cs();
        let raw = self
            .read_meta(e.table_offset, e.table_size as u64 * 8)
            .await?;
        let tab = table::parse(&raw, cs, &e.name)?;
        let bits = bit_count(self.layout.size.get(), e.granularity());
        if tab.len() as u64 != table_entries(bits, cs) {
            return Err(einval(format!(
                "Could not read bitmap '{}' from image",
                e.name
            )));
        }
        Ok(tab)
    }

    /// What QEMU checks when it loads the bitmaps at open (`h`: the header just read): the
    /// extension, the directory and the table of every bitmap not in use. An image without
    /// bitmaps costs no I/O here.
    pub(crate) async fn check_bitmaps_at_open(&self, h: &Header) -> Result<()> {
        let (ext, entries) = self.bitmap_dir_of(h).await?;
        self.bitmap_dir_at
            .set(ext.map_or((0, 0), |e| (e.dir_offset, e.dir_size)));
        for e in entries.iter().filter(|e| !e.in_use()) {
            self.bitmap_table(e).await?;
        }
        Ok(())
    }

    /// `FormatOps::stored_bitmaps`.
    pub(crate) async fn list_bitmaps(&self) -> Result<Vec<StoredBitmap>> {
        let (_, entries) = self.bitmap_dir().await?;
        Ok(entries
            .iter()
            .map(|e| StoredBitmap {
                name: e.name.clone(),
                granularity: e.granularity(),
                in_use: e.in_use(),
                auto: e.auto(),
            })
            .collect())
    }

    /// `FormatOps::load_bitmap`.
    pub(crate) async fn load_stored_bitmap(&self, name: &str) -> Result<HBits> {
        let (_, entries) = self.bitmap_dir().await?;
        let e = entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::generic(format!("Dirty bitmap '{name}' not found")))?;
        if e.in_use() {
            return Err(Error::generic(format!(
                "Bitmap '{name}' is inconsistent and cannot be used"
            )));
        }
        let tab = self.bitmap_table(e).await?;
        let cs = self.layout.cs();
        let n = bit_count(self.layout.size.get(), e.granularity());
        let mut bits = HBits::new(n);
        let per = bits_per_cluster(cs);
        for (i, &entry) in tab.iter().enumerate() {
            let start = i as u64 * per;
            let off = entry & table::OFFSET;
            if off != 0 {
                bits.deserialize(start, &self.read_meta(off, cs).await?);
            } else if entry & ALL_ONES != 0 {
                bits.set_range(start, (start + per).min(n));
            }
        }
        Ok(bits)
    }

    /// `FormatOps::store_bitmaps`.
    pub(crate) async fn store_stored_bitmaps(&self, set: &[BitmapToStore<'_>]) -> Result<()> {
        // A node that signalled fatal corruption has no driver left in QEMU: it stores nothing
        // and says nothing (its bitmaps stay in use in the image, inconsistent next time).
        if self.check_not_ejected().is_err() {
            return Ok(());
        }
        for (i, b) in set.iter().enumerate() {
            self.check_constraints(b)?;
            if set[..i].iter().any(|o| o.name == b.name) {
                return Err(Error::generic(format!("Bitmap already exists: {}", b.name)));
            }
        }
        self.check_writable().await?;
        let guard = self.meta.lock().await;
        let held = &guard;
        let (ext, mut entries) = self.bitmap_dir().await?;
        let mut new_clusters = Vec::new();
        let mut replaced = Vec::new();
        for b in set {
            let written = self.write_bitmap(held, b, &mut new_clusters).await;
            let (table_offset, table_size) = match written {
                Ok(t) => t,
                Err(e) => return Err(self.undo_allocations(held, new_clusters, e).await),
            };
            let new = DirEntry {
                table_offset,
                table_size,
                flags: if b.enabled { FLAG_AUTO } else { 0 },
                granularity_bits: b.granularity.trailing_zeros() as u8,
                name: b.name.to_string(),
            };
            match entries.iter_mut().find(|e| e.name == b.name) {
                Some(old) => replaced.push(std::mem::replace(old, new)),
                None => entries.push(new),
            }
        }
        self.switch_directory(held, ext, &entries, replaced, new_clusters)
            .await
    }

    /// `FormatOps::remove_bitmap`.
    pub(crate) async fn remove_stored_bitmap(&self, name: &str) -> Result<bool> {
        self.check_writable().await?;
        let guard = self.meta.lock().await;
        let held = &guard;
        let (ext, mut entries) = self.bitmap_dir().await?;
        let Some(at) = entries.iter().position(|e| e.name == name) else {
            return Ok(false);
        };
        let gone = entries.remove(at);
        self.switch_directory(held, ext, &entries, vec![gone], Vec::new())
            .await?;
        Ok(true)
    }

    /// `FormatOps::mark_bitmaps_in_use`.
    pub(crate) async fn mark_all_bitmaps_in_use(&self) -> Result<()> {
        self.check_writable().await?;
        let guard = self.meta.lock().await;
        let held = &guard;
        self.mark_in_use(held).await
    }

    /// Set the in-use flag of every bitmap not in use yet, in place. Metadata lock held.
    ///
    /// The one exception to copy-on-write, as in QEMU: only one bit of each entry's flags
    /// changes, so a torn write leaves every entry old or new, and either is consistent
    /// (no guest write lands before this returns flushed). Writing in place also means an
    /// open allocates nothing: an image whose refcounts are broken still opens for repair,
    /// and the file keeps the layout QEMU would give it.
    pub(super) async fn mark_in_use(&self, _held: &MetaGuard<'_>) -> Result<()> {
        let (ext, mut entries) = self.bitmap_dir().await?;
        let Some(ext) = ext else {
            return Ok(());
        };
        let mut changed = false;
        for e in entries.iter_mut() {
            if !e.in_use() {
                e.flags |= FLAG_IN_USE;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let raw = dir::serialize(&entries);
        debug_assert_eq!(
            raw.len() as u64,
            ext.dir_size,
            "flags do not change the size"
        );
        self.pre_write_check(OL_BITMAP_DIRECTORY, ext.dir_offset, raw.len() as u64)
            .await?;
        self.file
            .write(ext.dir_offset, IoBuf::from_slice(&raw), ReqFlags::NONE)
            .await
            .1?;
        // Durable before any guest write can be: a crash must never find the flag clear
        // under bits that missed a write.
        self.file.flush().await
    }

    /// What stops a bitmap `name` of `granularity` from being stored in this image, in QEMU's
    /// words (without the prefix, which depends on who asks), if anything.
    pub(crate) fn bitmap_problem(&self, name: &str, granularity: u64) -> Option<String> {
        if self.layout.version.get() < 3 {
            return Some("Cannot store dirty bitmaps in qcow2 v2 files".into());
        }
        if !granularity.is_power_of_two() {
            return Some(format!("Granularity {granularity} is not a power of two"));
        }
        let bits = granularity.trailing_zeros();
        if bits > MAX_GRANULARITY_BITS as u32 {
            return Some(format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << MAX_GRANULARITY_BITS
            ));
        }
        if bits < MIN_GRANULARITY_BITS as u32 {
            return Some(format!(
                "Granularity is under minimum ({} bytes)",
                1u64 << MIN_GRANULARITY_BITS
            ));
        }
        let n = bit_count(self.layout.size.get(), granularity);
        if n.div_ceil(8) > MAX_PHYS_SIZE || table_entries(n, self.layout.cs()) > MAX_TABLE_SIZE {
            return Some(
                "Too much space will be occupied by the bitmap. Use larger granularity".into(),
            );
        }
        if name.len() > MAX_NAME {
            return Some(format!(
                "Name length exceeds maximum ({MAX_NAME} characters)"
            ));
        }
        (n == 0).then(|| "The disk is empty".into())
    }

    /// QEMU's constraints on a bitmap to store, with its messages (prefixed as QEMU prefixes
    /// them when it stores), and bits that cover the disk.
    pub(crate) fn check_constraints(&self, b: &BitmapToStore<'_>) -> Result<()> {
        if b.name.is_empty() {
            return Err(Error::generic("Bitmap name cannot be empty"));
        }
        if let Some(why) = self.bitmap_problem(b.name, b.granularity) {
            return Err(Error::generic(format!(
                "Bitmap '{}' doesn't satisfy the constraints: {why}",
                b.name
            )));
        }
        let (disk, n) = (
            self.layout.size.get(),
            bit_count(self.layout.size.get(), b.granularity),
        );
        if b.bits.len() != n {
            return Err(Error::generic(format!(
                "Bitmap '{}' has {} bits, but a disk of {disk} bytes at granularity {} has {n}",
                b.name,
                b.bits.len(),
                b.granularity
            )));
        }
        Ok(())
    }

    /// Write the data clusters and the table of `b` to fresh clusters (each allocation
    /// recorded in `allocated`); returns the table's offset and entry count.
    async fn write_bitmap(
        &self,
        held: &MetaGuard<'_>,
        b: &BitmapToStore<'_>,
        allocated: &mut Vec<(u64, u64)>,
    ) -> Result<(u64, u32)> {
        let cs = self.layout.cs();
        let n = b.bits.len();
        let per = bits_per_cluster(cs);
        let mut tab = vec![0u64; table_entries(n, cs) as usize];
        for (i, slot) in tab.iter_mut().enumerate() {
            let start = i as u64 * per;
            // Only stretches with a set bit get a data cluster; the others read as zeroes.
            if b.bits.next_set(start).is_some_and(|s| s < start + per) {
                let mut data = vec![0u8; cs as usize];
                b.bits.serialize(start, &mut data);
                *slot = self.write_fresh(held, &data, allocated).await?;
            }
        }
        let off = self
            .write_fresh(held, &table::serialize(&tab), allocated)
            .await?;
        Ok((off, tab.len() as u32))
    }

    /// Write `data` to newly allocated clusters (zero padded to whole clusters); the
    /// allocation is recorded in `allocated` before anything is written.
    async fn write_fresh(
        &self,
        held: &MetaGuard<'_>,
        data: &[u8],
        allocated: &mut Vec<(u64, u64)>,
    ) -> Result<u64> {
        let cs = self.layout.cs();
        let n = (data.len() as u64).div_ceil(cs).max(1);
        let first = self.alloc_clusters(held, n).await?;
        let off = self.layout.cluster_offset(first).bytes();
        allocated.push((off, n));
        let mut buf = data.to_vec();
        buf.resize((n * cs) as usize, 0);
        self.pre_write_check(0, off, n * cs).await?;
        self.file
            .write(off, IoBuf::from_slice(&buf), ReqFlags::NONE)
            .await
            .1?;
        Ok(off)
    }

    /// Give back the clusters of a store that failed before the header switched; returns the
    /// store's error (a failure to free only leaks).
    async fn undo_allocations(
        &self,
        held: &MetaGuard<'_>,
        allocated: Vec<(u64, u64)>,
        err: Error,
    ) -> Error {
        for (off, n) in allocated {
            if self.free_at(held, off, n).await.is_err() {
                break;
            }
        }
        err
    }

    /// Write the directory of `entries` (none: no bitmaps) to fresh clusters, make every
    /// refcount durable, switch the header to it, then free the old directory and the
    /// clusters of `dropped` bitmaps. `allocated`: clusters this change already wrote (freed
    /// again if the switch fails).
    async fn switch_directory(
        &self,
        held: &MetaGuard<'_>,
        old: Option<BitmapExt>,
        entries: &[DirEntry],
        dropped: Vec<DirEntry>,
        mut allocated: Vec<(u64, u64)>,
    ) -> Result<()> {
        let ext = match self.write_directory(held, entries, &mut allocated).await {
            Ok(ext) => ext,
            Err(e) => return Err(self.undo_allocations(held, allocated, e).await),
        };
        let switched = async {
            self.flush_metadata(held).await?;
            self.write_bitmaps_ext(ext).await
        };
        if let Err(e) = switched.await {
            return Err(self.undo_allocations(held, allocated, e).await);
        }
        if let Some(o) = old {
            let cs = self.layout.cs();
            self.free_at(held, o.dir_offset, o.dir_size.div_ceil(cs))
                .await?;
        }
        for e in &dropped {
            self.free_bitmap_clusters(held, e).await?;
        }
        self.flush_metadata(held).await
    }

    /// The new directory for `entries` in fresh clusters, as its extension (`None` for no
    /// bitmaps).
    async fn write_directory(
        &self,
        held: &MetaGuard<'_>,
        entries: &[DirEntry],
        allocated: &mut Vec<(u64, u64)>,
    ) -> Result<Option<BitmapExt>> {
        if entries.is_empty() {
            return Ok(None);
        }
        if entries.len() > MAX_BITMAPS as usize {
            return Err(Error::generic("Too many persistent bitmaps"));
        }
        let raw = dir::serialize(entries);
        if raw.len() as u64 > MAX_DIR_SIZE {
            return Err(Error::generic("Bitmap directory is too large"));
        }
        let dir_offset = self.write_fresh(held, &raw, allocated).await?;
        Ok(Some(BitmapExt {
            nb_bitmaps: entries.len() as u32,
            dir_size: raw.len() as u64,
            dir_offset,
        }))
    }

    /// Free the table and data clusters of a bitmap no directory refers to any more. A table
    /// that does not parse is left alone (its clusters leak, as in QEMU: freeing what a
    /// corrupt table names could free clusters something else owns).
    async fn free_bitmap_clusters(&self, held: &MetaGuard<'_>, e: &DirEntry) -> Result<()> {
        let cs = self.layout.cs();
        let raw = self
            .read_meta(e.table_offset, e.table_size as u64 * 8)
            .await?;
        let Ok(tab) = table::parse(&raw, cs, &e.name) else {
            return Ok(());
        };
        for entry in tab {
            let off = entry & table::OFFSET;
            if off != 0 {
                self.free_at(held, off, 1).await?;
            }
        }
        let table_clusters = (e.table_size as u64 * 8).div_ceil(cs);
        self.free_at(held, e.table_offset, table_clusters).await
    }

    /// Drop the refcount of the `n` clusters from host offset `off` (nothing refers to them).
    async fn free_at(&self, held: &MetaGuard<'_>, off: u64, n: u64) -> Result<()> {
        let first = self.layout.cluster_of(HostOffset::new(off));
        self.free_unreferenced(held, first, n).await
    }
}
