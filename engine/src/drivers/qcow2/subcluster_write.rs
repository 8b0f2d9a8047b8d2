//! Guest writes, write-zeroes and discards of qcow2 images with extended L2 entries (32
//! subclusters per cluster, each with an "allocated" and a "reads as zeroes" bit).
//!
//! The rules are QEMU's, so that the same requests leave the same L2 entries and bitmaps:
//! - A write into a cluster whose host cluster is ours (COPIED) goes in place; subclusters it
//!   touches become allocated, and those that were not (zero, or reading from the backing
//!   file) get the rest of their partial head / tail subcluster copied from the guest view.
//! - Any other write allocates new clusters and copies only what the new cluster must carry:
//!   the partial subclusters at the write's edges, or (when the old cluster had a host
//!   cluster) everything from its first to its last allocated subcluster, or the whole
//!   cluster for a compressed one. Untouched subclusters keep their bits: unallocated ones go
//!   on reading from the backing file, zero ones keep reading zeroes.
//! - Write-zeroes works per subcluster: whole clusters get the all-zeroes bitmap (freeing
//!   the host cluster with unmap), aligned subclusters the zero bit; a partial subcluster is
//!   made zero only when the rest of it already reads as zeroes, else zeroes are written.
//! - Discard stays cluster granular (as in QEMU): a discarded cluster loses its host cluster
//!   and reads as zeroes throughout (or is left alone when unallocated without a backing file).
//!
//! Crash safety is the normal write path's: data (and copied subclusters) reach the file
//! before the L2 entry pointing at them is written back by the metadata flush.
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, Mapping, ReqFlags};

use super::Qcow2;
use super::cluster::Kind;
use super::entry::L2Entry;
use super::io::MAX_ALLOC_BYTES;
use super::lock::MetaGuard;
use super::subcluster::SUBCLUSTERS;
use super::units::{GuestCluster, GuestOffset, HostOffset};

/// Every "reads as zeroes" bit of a bitmap.
const ALL_ZEROES: u64 = 0xffff_ffff_0000_0000;
/// Largest buffer of zeroes a write-zeroes falls back to writing at once.
const ZERO_BUF_MAX: u64 = 16 << 20;
/// Every "allocated" bit of a bitmap.
const ALL_ALLOC: u64 = 0x0000_0000_ffff_ffff;

/// The "allocated" bits of subclusters `[from, to)`.
fn alloc_bits(from: u64, to: u64) -> u64 {
    if to <= from {
        return 0;
    }
    ((1u64 << (to - from)) - 1) << from
}

/// The "reads as zeroes" bits of subclusters `[from, to)`.
fn zero_bits(from: u64, to: u64) -> u64 {
    alloc_bits(from, to) << 32
}

/// What one subcluster is (QEMU's subcluster types; `Alloc` ones lie in a host cluster).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sub {
    Compressed,
    Normal,
    ZeroAlloc,
    UnallocatedAlloc,
    ZeroPlain,
    UnallocatedPlain,
}

/// Whether `entry` names a host cluster. Offset 0 is one only with an external data file
/// (guest cluster 0 lives at 0 there), where such entries always carry COPIED, as in QEMU.
pub(super) fn has_host(entry: L2Entry, data_file: bool) -> bool {
    entry.host_offset().bytes() != 0 || (data_file && !entry.is_compressed() && entry.is_copied())
}

/// The type of subcluster `s` of a (validated) entry and bitmap.
fn sub_type(entry: L2Entry, bitmap: u64, s: u64, data_file: bool) -> Sub {
    let host = has_host(entry, data_file);
    let zero = bitmap >> (32 + s) & 1 != 0;
    let alloc = bitmap >> s & 1 != 0;
    match (entry.is_compressed(), host, zero, alloc) {
        (true, ..) => Sub::Compressed,
        (_, true, true, _) => Sub::ZeroAlloc,
        (_, true, _, true) => Sub::Normal,
        (_, true, ..) => Sub::UnallocatedAlloc,
        (_, false, true, _) => Sub::ZeroPlain,
        _ => Sub::UnallocatedPlain,
    }
}

/// True when a write into the cluster of `entry` goes in place (its host cluster is ours).
fn in_place(entry: L2Entry, data_file: bool) -> bool {
    !entry.is_compressed() && has_host(entry, data_file) && entry.is_copied()
}

/// One step of a write: clusters from `gc` at `host` (new ones unless `in_place`), their old
/// entries and bitmaps, the `n` guest bytes written from the step's offset, and the range
/// `[cow_from, cow_to)` (bytes from the start of `gc`) written to the host: the data plus
/// the copy-on-write around it.
struct Step {
    gc: GuestCluster,
    host: HostOffset,
    olds: Vec<(L2Entry, u64)>,
    in_place: bool,
    n: u64,
    cow_from: u64,
    cow_to: u64,
}

impl Qcow2 {
    /// Subcluster size in bytes.
    fn sc_size(&self) -> u64 {
        self.layout.cs() / SUBCLUSTERS
    }

    /// The L2 entry and subcluster bitmap of `gc`, as they are.
    async fn ext_raw(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<(L2Entry, u64)> {
        Ok((
            self.l2_entry(held, gc).await?,
            self.l2_bitmap(held, gc).await?,
        ))
    }

    /// The L2 entry and bitmap of `gc`, refused as QEMU refuses an inconsistent one (both
    /// bits of a subcluster, allocated subclusters without a host cluster): a corruption
    /// event and EIO.
    async fn ext_state(&self, held: &MetaGuard<'_>, gc: GuestCluster) -> Result<(L2Entry, u64)> {
        let (entry, bitmap) = self.ext_raw(held, gc).await?;
        let host = has_host(entry, self.has_data_file());
        // (Bit 0 of the entry, the zero flag of plain entries, means nothing here.)
        let invalid = !entry.is_compressed()
            && ((host && (bitmap >> 32) & bitmap != 0) || (!host && bitmap & ALL_ALLOC != 0));
        if invalid {
            return Err(self.invalid_entry(gc).await);
        }
        if host && !entry.is_compressed() {
            // Reports a misaligned host cluster as corruption.
            self.kind_at(held, gc).await?;
        }
        Ok((entry, bitmap))
    }

    /// Where the copy-on-write before the data starts, for a write starting `in_off` bytes
    /// into a cluster whose old state is `old` (QEMU's rules, see the module doc).
    fn cow_start(&self, old: (L2Entry, u64), in_off: u64, keep: bool) -> u64 {
        let sc = self.sc_size();
        let s = in_off / sc;
        match sub_type(old.0, old.1, s, self.has_data_file()) {
            Sub::Normal if keep => in_off,
            Sub::Compressed => 0,
            Sub::Normal | Sub::ZeroAlloc | Sub::UnallocatedAlloc if !keep => {
                let first_alloc = u64::from((old.1 as u32).trailing_zeros());
                s.min(first_alloc) * sc
            }
            _ => s * sc,
        }
    }

    /// Where the copy-on-write after the data ends, for a write ending `end_in` bytes into a
    /// cluster (`0 < end_in <= cs`) whose old state is `old`.
    fn cow_end(&self, old: (L2Entry, u64), end_in: u64, keep: bool) -> u64 {
        let (cs, sc) = (self.layout.cs(), self.sc_size());
        let s = (end_in - 1) / sc;
        match sub_type(old.0, old.1, s, self.has_data_file()) {
            Sub::Normal if keep => end_in,
            Sub::Compressed => cs,
            Sub::Normal | Sub::ZeroAlloc | Sub::UnallocatedAlloc if !keep => {
                let last_alloc = u64::from((old.1 as u32).leading_zeros());
                cs - (SUBCLUSTERS - 1 - s).min(last_alloc) * sc
            }
            _ => end_in.next_multiple_of(sc),
        }
    }

    /// Plan the first step of a write at `off`, `remaining` bytes long (metadata lock held):
    /// in place over clusters we own with contiguous host clusters, or newly allocated ones.
    async fn plan_ext(
        &self,
        held: &MetaGuard<'_>,
        off: GuestOffset,
        remaining: u64,
    ) -> Result<Step> {
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let gc = off.cluster(bits);
        let in_off = off.in_cluster(bits);
        let first = self.ext_state(held, gc).await?;
        let keep = in_place(first.0, self.has_data_file());
        let last = (off + (remaining - 1)).cluster(bits);
        let max = if keep {
            u64::MAX
        } else {
            (MAX_ALLOC_BYTES / cs).max(1)
        };
        let per = self.layout.l2_entries();
        let mut olds = vec![first];
        let mut c = gc + 1;
        while c <= last && (olds.len() as u64) < max && !c.index().is_multiple_of(per) {
            let st = self.ext_state(held, c).await?;
            let contiguous = st.0.host_offset() == first.0.host_offset() + olds.len() as u64 * cs;
            if in_place(st.0, self.has_data_file()) != keep || (keep && !contiguous) {
                break;
            }
            olds.push(st);
            c += 1;
        }
        let host = if keep {
            first.0.host_offset()
        } else {
            self.ensure_l2(held, gc).await?;
            if self.has_data_file() {
                gc.identity_host(bits)
            } else {
                // One contiguous run for the whole step, and the search goes on after it
                // (skipping smaller holes), as QEMU allocates: the same requests then give
                // the same host offsets.
                let k = olds.len() as u64;
                let h = self.alloc_clusters(held, k).await?;
                self.alloc.set_hint(held, h + k);
                self.layout.cluster_offset(h)
            }
        };
        let k = olds.len() as u64;
        let n = remaining.min(k * cs - in_off);
        let end_in = in_off + n - (k - 1) * cs;
        Ok(Step {
            gc,
            host,
            in_place: keep,
            n,
            cow_from: self.cow_start(first, in_off, keep),
            cow_to: (k - 1) * cs + self.cow_end(olds[k as usize - 1], end_in, keep),
            olds,
        })
    }

    /// `write_from` for images with extended L2 entries (exclusive range lock held).
    pub(super) async fn ext_write_from(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut pos = 0u64;
        let len = data.len() as u64;
        while pos < len {
            let at = GuestOffset::new(offset + pos);
            let step = {
                let held = &self.meta.lock().await;
                self.plan_ext(held, at, len - pos).await?
            };
            let chunk = &data[pos as usize..(pos + step.n) as usize];
            let written = self.ext_fill(&step, at, chunk).await;
            self.ext_link(&step, written).await?;
            pos += step.n;
        }
        Ok(())
    }

    /// Write `data` (at guest `at`) and the copy-on-write around it to the step's host range.
    async fn ext_fill(&self, step: &Step, at: GuestOffset, data: &[u8]) -> Result<()> {
        let bits = self.layout.cluster_bits;
        let start = step.gc.offset(bits).bytes();
        let in_off = at.in_cluster(bits);
        let end_in = in_off + data.len() as u64;
        let (from, to) = (step.cow_from, step.cow_to);
        self.pre_data_write_check(step.host + from, to - from)
            .await?;
        if from < in_off || end_in < to {
            let head = (start + from, in_off - from);
            let tail = (start + end_in, to - end_in);
            if self.reads_zero_fast(head.0, head.1).await?
                && self.reads_zero_fast(tail.0, tail.1).await?
            {
                // QEMU's shortcut: zero the range in the file, then write only the data.
                self.file.debug_event(DebugEvent::ClusterAllocSpace).await;
                let z = self
                    .data_child()
                    .write_zeroes((step.host + from).bytes(), to - from, ReqFlags::NO_FALLBACK)
                    .await;
                match z {
                    Ok(()) => return self.ext_write_data(step.host + in_off, data).await,
                    Err(e) if matches!(e.errno(), Some(Errno::ENOTSUP | Errno::EAGAIN)) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut buf = IoBuf::new((to - from) as usize);
            let b = buf.as_mut_slice();
            let (h, d) = ((in_off - from) as usize, data.len());
            self.file.debug_event(DebugEvent::CowRead).await;
            self.read_guest(head.0, &mut b[..h]).await?;
            self.read_guest(tail.0, &mut b[h + d..]).await?;
            b[h..h + d].copy_from_slice(data);
            self.file.debug_event(DebugEvent::CowWrite).await;
            self.file.debug_event(DebugEvent::WriteAio).await;
            return self
                .data_child()
                .write((step.host + from).bytes(), buf, ReqFlags::NONE)
                .await
                .1;
        }
        self.ext_write_data(step.host + in_off, data).await
    }

    async fn ext_write_data(&self, host: HostOffset, data: &[u8]) -> Result<()> {
        self.file.debug_event(DebugEvent::WriteAio).await;
        self.data_child()
            .write(host.bytes(), IoBuf::from_slice(data), ReqFlags::NONE)
            .await
            .1
    }

    /// Read the guest view of `[at, at + out.len())` as it is now (range lock held).
    async fn read_guest(&self, at: u64, out: &mut [u8]) -> Result<()> {
        let mut pos = 0usize;
        while pos < out.len() {
            let off = GuestOffset::new(at + pos as u64);
            let (kind, n) = {
                let held = &self.meta.lock().await;
                self.run_at(held, off, (out.len() - pos) as u64).await?
            };
            let n = n as usize;
            self.read_kind(kind, off, &mut out[pos..pos + n]).await?;
            pos += n;
        }
        Ok(())
    }

    /// True when `[at, at + len)` reads as zeroes without looking at data: zero subclusters,
    /// or unallocated down the whole chain (QEMU's fast zero test).
    async fn reads_zero_fast(&self, at: u64, len: u64) -> Result<bool> {
        let mut pos = 0;
        while pos < len {
            let off = GuestOffset::new(at + pos);
            let (kind, n) = {
                let held = &self.meta.lock().await;
                self.run_at(held, off, len - pos).await?
            };
            let zero = match kind {
                Kind::Zero { .. } => true,
                Kind::Unallocated => match self.backing() {
                    None => true,
                    Some(b) => {
                        let st = b.chain_status(off.bytes(), n, None).await?;
                        st.len >= n
                            && (st.node.is_none() || matches!(st.mapping, Mapping::Zero { .. }))
                    }
                },
                _ => false,
            };
            if !zero {
                return Ok(false);
            }
            pos += n;
        }
        Ok(true)
    }

    /// After the step's data went down (`written`): point the entries at it, with the
    /// written subclusters allocated and no longer zero, and release what new clusters
    /// replaced. A failed write of new clusters frees them.
    async fn ext_link(&self, step: &Step, written: Result<()>) -> Result<()> {
        let (cs, sc) = (self.layout.cs(), self.sc_size());
        let k = step.olds.len() as u64;
        let held = &self.meta.lock().await;
        if let Err(e) = written {
            if !step.in_place && !self.has_data_file() {
                self.free_unreferenced(held, self.layout.cluster_of(step.host), k)
                    .await?;
            }
            return Err(e);
        }
        for (i, &(old, old_bm)) in step.olds.iter().enumerate() {
            let i = i as u64;
            let from = step.cow_from.max(i * cs) - i * cs;
            let to = step.cow_to.min((i + 1) * cs) - i * cs;
            let (s0, s1) = (from / sc, (to - 1) / sc + 1);
            let base = if old.is_compressed() { 0 } else { old_bm };
            let bitmap = (base | alloc_bits(s0, s1)) & !zero_bits(s0, s1);
            if step.in_place {
                if bitmap != old_bm {
                    self.set_l2_ext(held, step.gc + i, old, bitmap).await?;
                }
                continue;
            }
            let entry = L2Entry::normal(step.host + i * cs);
            self.set_l2_ext(held, step.gc + i, entry, bitmap).await?;
            self.release_reporting(held, old, self.pass_discard_other())
                .await?;
        }
        Ok(())
    }

    /// `do_write_zeroes` for images with extended L2 entries: split as QEMU's block layer
    /// splits it for a subcluster alignment (an unaligned head up to the next subcluster, the
    /// aligned bulk, the unaligned tail); a piece that cannot be zeroed in the metadata is
    /// written as zeroes.
    pub(super) async fn ext_write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> Result<()> {
        let cs = self.layout.cs();
        let sc = self.sc_size();
        let _range = self
            .ranges
            .lock(offset / cs, (offset + len).div_ceil(cs), true)
            .await;
        let end = offset + len;
        let max = (i32::MAX as u64) / sc * sc;
        let mut pos = offset;
        while pos < end {
            let mut num = (end - pos).min(max);
            if !pos.is_multiple_of(sc) {
                num = num.min(sc - pos % sc);
            } else if !end.is_multiple_of(sc) && num > sc {
                num -= end % sc;
            }
            match self.ext_zero_piece(pos, num, flags).await {
                Err(e) if e.errno() == Some(Errno::ENOTSUP) => {
                    // Written as zeroes, a bounded buffer at a time.
                    let mut at = pos;
                    while at < pos + num {
                        let n = (pos + num - at).min(ZERO_BUF_MAX);
                        self.ext_write_from(at, &vec![0u8; n as usize]).await?;
                        at += n;
                    }
                }
                r => r?,
            }
            pos += num;
        }
        Ok(())
    }

    /// Zero one piece of a write-zeroes in the metadata, or ENOTSUP when it cannot be.
    async fn ext_zero_piece(&self, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
        let sc = self.sc_size();
        let end = offset + len;
        let head = offset % sc;
        let tail = if end >= self.layout.size.get() {
            0
        } else {
            end.next_multiple_of(sc) - end
        };
        if head == 0 && tail == 0 {
            return self.ext_zeroize(offset, len, flags).await;
        }
        // Within one subcluster: it becomes a zero subcluster only if the rest of it reads
        // as zeroes already and it holds no data.
        let start = offset - head;
        if !(self.reads_zero_fast(start, head).await? && self.reads_zero_fast(end, tail).await?) {
            return Err(Error::io(Errno::ENOTSUP));
        }
        {
            let held = &self.meta.lock().await;
            let gc = GuestOffset::new(start).cluster(self.layout.cluster_bits);
            let (entry, bitmap) = self.ext_state(held, gc).await?;
            let s = GuestOffset::new(start).in_cluster(self.layout.cluster_bits) / sc;
            if matches!(
                sub_type(entry, bitmap, s, self.has_data_file()),
                Sub::Normal | Sub::Compressed
            ) {
                return Err(Error::io(Errno::ENOTSUP));
            }
        }
        self.ext_zeroize(start, sc, flags).await
    }

    /// Zero `[offset, offset + len)` (subcluster aligned, but for the end of the image) in
    /// the metadata: partial clusters at either end get zero subclusters, whole clusters the
    /// all-zeroes bitmap.
    async fn ext_zeroize(&self, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
        let (cs, sc) = (self.layout.cs(), self.sc_size());
        self.zero_raw_data_file(offset, len, flags).await?;
        let end = offset + len;
        let head = end.min(offset.next_multiple_of(cs)) - offset;
        let mid = offset + head;
        let tail = if end >= self.layout.size.get() {
            0
        } else {
            end - mid.max(end / cs * cs)
        };
        let mid_end = end - tail;
        let held = &self.meta.lock().await;
        if head > 0 {
            self.zero_subclusters(held, offset, head.div_ceil(sc))
                .await?;
        }
        let per = self.layout.l2_entries();
        let first = mid / cs;
        // (Empty when the head reaches the end.)
        let last = if mid < mid_end {
            mid_end.div_ceil(cs)
        } else {
            first
        };
        for gc in GuestCluster::new(first).to(GuestCluster::new(last)) {
            if gc.index() == first || gc.index().is_multiple_of(per) {
                // QEMU reaches each L2 table through the lookup that allocates it.
                self.ensure_l2(held, gc).await?;
            }
            self.zero_cluster(held, gc, flags.contains(ReqFlags::MAY_UNMAP))
                .await?;
        }
        if tail > 0 {
            self.zero_subclusters(held, mid_end, tail.div_ceil(sc))
                .await?;
        }
        Ok(())
    }

    /// Give `nb` subclusters from guest `offset` (within one cluster) the zero bit, clearing
    /// their allocated bit. A compressed cluster cannot be zeroed in part: ENOTSUP.
    async fn zero_subclusters(&self, held: &MetaGuard<'_>, offset: u64, nb: u64) -> Result<()> {
        let at = GuestOffset::new(offset);
        let gc = at.cluster(self.layout.cluster_bits);
        let s = at.in_cluster(self.layout.cluster_bits) / self.sc_size();
        self.ensure_l2(held, gc).await?;
        let entry = self.l2_entry(held, gc).await?;
        if entry.is_compressed() {
            return Err(Error::io(Errno::ENOTSUP));
        }
        let old = self.l2_bitmap(held, gc).await?;
        let new = (old | zero_bits(s, s + nb)) & !alloc_bits(s, s + nb);
        if new != old {
            self.set_l2_ext(held, gc, entry, new).await?;
        }
        Ok(())
    }

    /// Make the whole cluster `gc` read as zeroes; its host cluster is freed with `unmap`
    /// (always for a compressed one).
    async fn zero_cluster(
        &self,
        held: &MetaGuard<'_>,
        gc: GuestCluster,
        unmap: bool,
    ) -> Result<()> {
        let (old, old_bm) = self.ext_raw(held, gc).await?;
        let compressed = old.is_compressed();
        let unmap = compressed || (unmap && has_host(old, self.has_data_file()));
        let new = if unmap { L2Entry::UNALLOCATED } else { old };
        if new == old && old_bm == ALL_ZEROES {
            return Ok(());
        }
        self.set_l2_ext(held, gc, new, ALL_ZEROES).await?;
        if unmap {
            self.release_reporting(held, old, self.pass_discard_request())
                .await?;
        }
        Ok(())
    }

    /// Discard the whole cluster `gc` of an image with extended L2 entries: `full` leaves it
    /// unallocated (the backing file shows through); otherwise, when it had a host cluster or
    /// a backing file lies below, it loses the host cluster and reads as zeroes.
    pub(super) async fn discard_ext(
        &self,
        held: &MetaGuard<'_>,
        gc: GuestCluster,
        full: bool,
    ) -> Result<()> {
        let (old, old_bm) = self.ext_raw(held, gc).await?;
        let allocated = old.is_compressed() || has_host(old, self.has_data_file());
        let new_bm = if full {
            0
        } else if self.backing().is_some() || allocated {
            ALL_ZEROES
        } else {
            old_bm
        };
        let new = if full || self.backing().is_some() || allocated {
            L2Entry::UNALLOCATED
        } else {
            old
        };
        if new == old && new_bm == old_bm {
            return Ok(());
        }
        self.set_l2_ext(held, gc, new, new_bm).await?;
        self.release_reporting(held, old, self.pass_discard_request())
            .await
    }
}
