//! qcow2 guest I/O: reads (backing, zeroes, data, compressed), writes (in place, or allocating
//! with copy-on-write of the untouched parts of new clusters), write-zeroes, discard,
//! and block status.
//!
//! Guest ranges are locked (reads shared, the rest exclusive) for the whole request; the
//! metadata lock is taken only around lookups and updates, never across guest data I/O.
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{BlockStatus, BufResult, IoBuf, Mapping, ReqFlags};
use crate::util::planted;

use super::cluster::Kind;
use super::entry::{L2Entry, compressed_span};
use super::lock::MetaGuard;
use super::overlap::c_hex;
use super::units::{GuestCluster, GuestOffset, HostOffset};
use super::{Qcow2, compress};

enum Plan {
    /// Write in place at `host`, `n` bytes.
    Rewrite { host: HostOffset, n: u64 },
    /// New clusters at `host` for guest clusters from `gc`; `olds` are their old entries.
    /// With `reuse`, `host` is the cluster a zero-flagged entry already owns (written whole,
    /// zeroes around the data, and kept): nothing is allocated or freed.
    Alloc {
        gc: GuestCluster,
        host: HostOffset,
        olds: Vec<L2Entry>,
        n: u64,
        reuse: bool,
    },
}

/// Most clusters one allocating step covers (2 MiB worth, at least one).
pub(super) const MAX_ALLOC_BYTES: u64 = 2 << 20;

/// Where an allocating write puts its data: new clusters at `host` for the guest clusters from
/// `gc`, whose old entries are `olds` (`reuse`: as in `Plan::Alloc`).
#[derive(Clone, Copy)]
struct NewClusters<'a> {
    gc: GuestCluster,
    host: HostOffset,
    olds: &'a [L2Entry],
    reuse: bool,
}

impl Qcow2 {
    fn cluster_span(&self, offset: u64, len: u64) -> (u64, u64) {
        let cs = self.layout.cs();
        (offset / cs, (offset + len).div_ceil(cs))
    }

    /// The kind of the cluster at `off` and how many bytes from `off` (at most `max`) share it.
    pub(super) async fn run_at(
        &self,
        held: &MetaGuard<'_>,
        off: GuestOffset,
        max: u64,
    ) -> Result<(Kind, u64)> {
        if self.layout.ext_l2 {
            return self.run_at_ext(held, off, max).await;
        }
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let gc = off.cluster(bits);
        let kind = self.kind_at(held, gc).await?;
        let mut n = (cs - off.in_cluster(bits)).min(max);
        if matches!(kind, Kind::Compressed { .. }) {
            return Ok((kind, n));
        }
        let mut next = gc + 1;
        let mut ahead = 1;
        while n < max {
            let k = self.kind_at(held, next).await?;
            let same = match (kind, k) {
                (Kind::Unallocated, Kind::Unallocated) => true,
                (Kind::Zero { host: None }, Kind::Zero { host: None }) => true,
                (
                    Kind::Normal {
                        host: a,
                        copied: ca,
                    },
                    Kind::Normal {
                        host: b,
                        copied: cb,
                    },
                ) => ca == cb && b == a + ahead * cs,
                _ => false,
            };
            if !same {
                break;
            }
            n = (n + cs).min(max);
            next += 1;
            ahead += 1;
        }
        Ok((kind, n))
    }

    /// Read `[off, off+out.len())` of the compressed cluster into `out`.
    async fn read_compressed(
        &self,
        offset: HostOffset,
        len: u64,
        in_off: u64,
        out: &mut [u8],
    ) -> Result<()> {
        if self.has_data_file() {
            return Err(Error::io_msg(
                Errno::EIO,
                format!(
                    "qcow2: compressed cluster at {offset:#x} in an image with an external data \
                     file (compressed clusters cannot be used there)"
                ),
            ));
        }
        let file_len = self.file.len();
        if offset.bytes() >= file_len {
            return Err(Error::io_msg(
                Errno::EIO,
                format!("qcow2: compressed cluster at {offset:#x} lies beyond the end of the file"),
            ));
        }
        let len = len.min(file_len - offset.bytes());
        self.file.debug_event(DebugEvent::ReadCompressed).await;
        let (buf, r) = self
            .file
            .read(offset.bytes(), IoBuf::new(len as usize), ReqFlags::NONE)
            .await;
        r?;
        let data = compress::decompress_cluster(
            self.layout.compression_type,
            buf.as_slice(),
            self.layout.cs() as usize,
        )
        .map_err(|e| e.host_offset(offset.bytes()))?;
        out.copy_from_slice(&data[in_off as usize..in_off as usize + out.len()]);
        Ok(())
    }

    /// Fill `out` with the bytes of `kind` at guest offset `off` (within one run).
    pub(super) async fn read_kind(
        &self,
        kind: Kind,
        off: GuestOffset,
        out: &mut [u8],
    ) -> Result<()> {
        let in_off = off.in_cluster(self.layout.cluster_bits);
        match kind {
            Kind::Unallocated => match &self.backing() {
                Some(b) => {
                    self.file.debug_event(DebugEvent::ReadBackingAio).await;
                    let (buf, r) = b
                        .read(off.bytes(), IoBuf::new(out.len()), ReqFlags::NONE)
                        .await;
                    r?;
                    out.copy_from_slice(buf.as_slice());
                }
                None => out.fill(0),
            },
            Kind::Zero { .. } => out.fill(0),
            Kind::Normal { host, .. } => {
                self.file.debug_event(DebugEvent::ReadAio).await;
                let (buf, r) = self
                    .data_child()
                    .read(
                        (host + in_off).bytes(),
                        IoBuf::new(out.len()),
                        ReqFlags::NONE,
                    )
                    .await;
                r?;
                out.copy_from_slice(buf.as_slice());
                self.decrypt_data((host + in_off).bytes(), off.bytes(), out)?;
            }
            Kind::Compressed { offset, len } => {
                self.read_compressed(offset, len, in_off, out).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn do_read(&self, offset: u64, mut buf: IoBuf) -> BufResult {
        let len = buf.len() as u64;
        if len == 0 {
            return (buf, Ok(()));
        }
        let (s, e) = self.cluster_span(offset, len);
        let _range = self.ranges.lock(s, e, false).await;
        let at = GuestOffset::new(offset);
        let first = {
            let held = &self.meta.lock().await;
            self.run_at(held, at, len).await
        };
        // One contiguous run of data (or of the backing file): the caller's buffer goes down
        // as it is, with no bounce buffer and no copy.
        match first {
            Err(e) => return (buf, Err(e)),
            Ok((Kind::Normal { host, .. }, n)) if n == len => {
                self.file.debug_event(DebugEvent::ReadAio).await;
                let in_off = at.in_cluster(self.layout.cluster_bits);
                let host = (host + in_off).bytes();
                let (mut buf, r) = self.data_child().read(host, buf, ReqFlags::NONE).await;
                let r = r.and_then(|()| self.decrypt_data(host, offset, buf.as_mut_slice()));
                return (buf, r);
            }
            Ok((Kind::Unallocated, n)) if n == len => {
                if let Some(b) = &self.backing() {
                    self.file.debug_event(DebugEvent::ReadBackingAio).await;
                    return b.read(offset, buf, ReqFlags::NONE).await;
                }
            }
            Ok(_) => {}
        }
        let out = buf.as_mut_slice();
        let mut pos = 0u64;
        while pos < len {
            let at = GuestOffset::new(offset + pos);
            let run = {
                let held = &self.meta.lock().await;
                self.run_at(held, at, len - pos).await
            };
            let (kind, n) = match run {
                Ok(r) => r,
                Err(e) => return (buf, Err(e)),
            };
            let slice = &mut out[pos as usize..(pos + n) as usize];
            if let Err(e) = self.read_kind(kind, at, slice).await {
                return (buf, Err(e));
            }
            pos += n;
        }
        (buf, Ok(()))
    }

    pub(crate) async fn do_write(&self, offset: u64, buf: IoBuf) -> BufResult {
        let len = buf.len() as u64;
        if len == 0 {
            return (buf, Ok(()));
        }
        let (s, e) = self.cluster_span(offset, len);
        let _range = self.ranges.lock(s, e, true).await;
        let r = self.write_from(offset, buf.as_slice()).await;
        (buf, r)
    }

    /// Decide how the first part of a write at `off` is done (metadata lock held).
    async fn plan_write(
        &self,
        held: &MetaGuard<'_>,
        off: GuestOffset,
        remaining: u64,
    ) -> Result<Plan> {
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let gc = off.cluster(bits);
        let in_off = off.in_cluster(bits);
        let entry = self.l2_entry(held, gc).await?;
        if entry.is_copied() && self.classify(entry).is_err() {
            // QEMU's wording for a cluster it would rewrite in place.
            let what = if entry.zero_bit() {
                "Preallocated zero"
            } else {
                "Data"
            };
            let msg = format!(
                "{what} cluster offset {:#x} unaligned (guest offset: {})",
                entry.host_offset(),
                c_hex(off.bytes())
            );
            let full = self.signal_corruption(true, None, None, &msg).await;
            return Err(Error::io_msg(Errno::EIO, full));
        }
        if let (Kind::Normal { host, copied: true }, n) = self.run_at(held, off, remaining).await? {
            debug_assert!(entry.is_copied());
            return Ok(Plan::Rewrite {
                host: host + in_off,
                n,
            });
        }
        if let Kind::Zero { host: Some(host) } = self.kind_at(held, gc).await?
            && entry.is_copied()
        {
            // A preallocated zero cluster is written in place, as QEMU does (no new cluster).
            self.ensure_l2(held, gc).await?;
            let n = remaining.min(cs - in_off);
            return Ok(Plan::Alloc {
                gc,
                host,
                olds: vec![entry],
                n,
                reuse: true,
            });
        }
        let last = (off + (remaining - 1)).cluster(bits);
        let max = (MAX_ALLOC_BYTES / cs).max(1);
        let mut olds = vec![entry];
        let mut c = gc + 1;
        let per = self.layout.l2_entries();
        while c <= last && (olds.len() as u64) < max && !c.index().is_multiple_of(per) {
            let e = self.l2_entry(held, c).await?;
            if matches!(
                self.kind_at(held, c).await?,
                Kind::Normal { copied: true, .. }
            ) {
                break;
            }
            olds.push(e);
            c += 1;
        }
        self.ensure_l2(held, gc).await?;
        let (host, got) = if self.has_data_file() {
            // External data file: each guest cluster has its own place, not refcounted.
            (gc.identity_host(bits), olds.len() as u64)
        } else {
            let (first, got) = self.alloc_some(held, olds.len() as u64).await?;
            (self.layout.cluster_offset(first), got)
        };
        olds.truncate(got as usize);
        let n = remaining.min(olds.len() as u64 * cs - in_off);
        Ok(Plan::Alloc {
            gc,
            host,
            olds,
            n,
            reuse: false,
        })
    }

    /// Write `data` at `off`; the caller holds the exclusive range lock.
    pub(super) async fn write_from(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.layout.ext_l2 {
            return self.ext_write_from(offset, data).await;
        }
        let mut pos = 0u64;
        let len = data.len() as u64;
        while pos < len {
            let plan = {
                let held = &self.meta.lock().await;
                self.plan_write(held, GuestOffset::new(offset + pos), len - pos)
                    .await?
            };
            match plan {
                Plan::Rewrite { host, n } => {
                    self.pre_data_write_check(host, n).await?;
                    self.file.debug_event(DebugEvent::WriteAio).await;
                    let chunk = IoBuf::from_slice(&data[pos as usize..(pos + n) as usize]);
                    let chunk = self.encrypt_data(host.bytes(), offset + pos, chunk)?;
                    self.data_child()
                        .write(host.bytes(), chunk, ReqFlags::NONE)
                        .await
                        .1?;
                    pos += n;
                }
                Plan::Alloc {
                    gc,
                    host,
                    olds,
                    n,
                    reuse,
                } => {
                    let chunk = &data[pos as usize..(pos + n) as usize];
                    let at = GuestOffset::new(offset + pos);
                    let new = NewClusters {
                        gc,
                        host,
                        olds: &olds,
                        reuse,
                    };
                    self.write_alloc(at, chunk, &new).await?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// Fill new clusters with `data` plus the old contents around it, write them, then point
    /// the L2 entries at them and queue the old clusters for freeing.
    async fn write_alloc(
        &self,
        off: GuestOffset,
        data: &[u8],
        new: &NewClusters<'_>,
    ) -> Result<()> {
        let written = self.fill_new_clusters(off, data, new).await;
        let (host, reuse, k) = (new.host, new.reuse, new.olds.len() as u64);
        let held = &self.meta.lock().await;
        if let Err(e) = written {
            if !self.has_data_file() && !reuse {
                self.free_unreferenced(held, self.layout.cluster_of(host), k)
                    .await?;
            }
            return Err(e);
        }
        let cs = self.layout.cs();
        for (i, old) in new.olds.iter().enumerate() {
            let i = i as u64;
            self.set_l2_entry(held, new.gc + i, L2Entry::normal(host + i * cs))
                .await?;
            if !reuse {
                self.release(held, *old, self.pass_discard_other())?;
            }
        }
        Ok(())
    }

    /// Write the new clusters at `host`: `data` at its place, and around it the old contents
    /// (copy-on-write) — or, where those read as zeroes from nowhere, zero the clusters first
    /// and write only `data`.
    async fn fill_new_clusters(
        &self,
        off: GuestOffset,
        data: &[u8],
        new: &NewClusters<'_>,
    ) -> Result<()> {
        let (host, olds, cs) = (new.host, new.olds, self.layout.cs());
        let k = olds.len() as u64;
        let in_off = off.in_cluster(self.layout.cluster_bits);
        let start = new.gc.offset(self.layout.cluster_bits);
        let end_in = in_off + data.len() as u64;
        self.pre_data_write_check(host, k * cs).await?;
        let cow = [
            (olds[0], start, in_off),
            (olds[k as usize - 1], start + end_in, k * cs - end_in),
        ];
        if !self.encrypted()
            && self
                .zero_whole_allocation(host, k * cs, new.reuse, cow)
                .await?
        {
            self.file.debug_event(DebugEvent::WriteAio).await;
            let piece = IoBuf::from_slice(data);
            return self
                .data_child()
                .write(host.bytes() + in_off, piece, ReqFlags::NONE)
                .await
                .1;
        }
        if in_off == 0 && end_in == k * cs {
            // Whole clusters: nothing to copy on write.
            self.file.debug_event(DebugEvent::WriteAio).await;
            let buf = self.encrypt_data(host.bytes(), off.bytes(), IoBuf::from_slice(data))?;
            return self
                .data_child()
                .write(host.bytes(), buf, ReqFlags::NONE)
                .await
                .1;
        }
        let mut buf = IoBuf::new((k * cs) as usize);
        let b = buf.as_mut_slice();
        if in_off > 0 {
            self.file.debug_event(DebugEvent::CowRead).await;
            let kind = self.classify(olds[0])?;
            self.read_kind(kind, start, &mut b[..in_off as usize])
                .await?;
        }
        if end_in < k * cs {
            self.file.debug_event(DebugEvent::CowRead).await;
            let kind = self.classify(olds[k as usize - 1])?;
            self.read_kind(kind, start + end_in, &mut b[end_in as usize..])
                .await?;
        }
        b[in_off as usize..end_in as usize].copy_from_slice(data);
        let buf = self.encrypt_data(host.bytes(), start.bytes(), buf)?;
        self.file.debug_event(DebugEvent::CowWrite).await;
        self.file.debug_event(DebugEvent::WriteAio).await;
        self.data_child()
            .write(host.bytes(), buf, ReqFlags::NONE)
            .await
            .1
    }

    /// QEMU's shortcut for a new allocation whose copy-on-write parts would be zeroes because
    /// no layer of the chain allocates them: zero the new clusters in the file at once (no buffer
    /// of zeroes goes through), so that only the guest's data is written after. `cow` holds
    /// the old entry, guest offset and length of the head and tail parts. False when it does
    /// not apply, or the file cannot zero without writing zeroes (the caller writes them).
    async fn zero_whole_allocation(
        &self,
        host: HostOffset,
        len: u64,
        reuse: bool,
        cow: [(L2Entry, GuestOffset, u64); 2],
    ) -> Result<bool> {
        if reuse || cow.iter().all(|(_, _, n)| *n == 0) {
            return Ok(false);
        }
        for (old, at, n) in cow {
            if n > 0 && !self.unallocated_in_chain(old, at, n).await? {
                return Ok(false);
            }
        }
        self.file.debug_event(DebugEvent::ClusterAllocSpace).await;
        match self
            .data_child()
            .write_zeroes(host.bytes(), len, ReqFlags::NO_FALLBACK)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(Errno::ENOTSUP | Errno::EAGAIN)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when neither this image (entry `old`) nor any backing layer allocates the `len`
    /// bytes at guest offset `at` (they read as zeroes from nowhere).
    async fn unallocated_in_chain(&self, old: L2Entry, at: GuestOffset, len: u64) -> Result<bool> {
        if self.classify(old)? != Kind::Unallocated {
            return Ok(false);
        }
        let Some(backing) = self.backing() else {
            return Ok(true);
        };
        let st = backing
            .chain_status_want_zero(at.bytes(), len, None)
            .await?;
        Ok(st.node.is_none() && st.len >= len)
    }

    /// Queue whatever host space the old entry `old` referenced for freeing (nothing for
    /// clusters of an external data file: they are not refcounted); `discard`: clusters that
    /// become free are discarded in the file (the `pass-discard-*` option of the cause).
    fn release(&self, held: &MetaGuard<'_>, old: L2Entry, discard: bool) -> Result<()> {
        let kind = self.classify(old)?;
        if self.has_data_file() {
            return Ok(());
        }
        match kind {
            Kind::Normal { host, .. } | Kind::Zero { host: Some(host) } => {
                self.free_later(held, host, self.layout.cs(), discard)
            }
            Kind::Compressed { offset, len } => {
                let (start, len) = compressed_span(offset, len);
                self.free_later(held, start, len, discard)
            }
            _ => {}
        }
        Ok(())
    }

    /// `release`, except that an unaligned host offset in `old` is reported (not fatal, as
    /// QEMU does) and its cluster leaked instead of failing the request.
    pub(crate) async fn release_reporting(
        &self,
        held: &MetaGuard<'_>,
        old: L2Entry,
        discard: bool,
    ) -> Result<()> {
        if self.release(held, old, discard).is_err() {
            let msg = format!("Cannot free unaligned cluster {:#x}", old.host_offset());
            self.signal_corruption(false, None, None, &msg).await;
        }
        Ok(())
    }

    /// True when the cluster of `kind` reads as zeroes.
    fn reads_zero(&self, kind: Kind) -> bool {
        match kind {
            Kind::Zero { .. } => true,
            Kind::Unallocated => self.backing().is_none(),
            _ => false,
        }
    }

    pub(crate) async fn do_write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> Result<()> {
        // A v2 image has no zero flag: over a backing file the generic layer writes zeroes;
        // without one, whole clusters are deallocated (they then read as zeroes), as QEMU does.
        if self.layout.version.get() < 3 && self.backing().is_some() {
            return Err(Error::io(Errno::ENOTSUP));
        }
        if len == 0 {
            return Ok(());
        }
        if self.layout.ext_l2 {
            return self.ext_write_zeroes(offset, len, flags).await;
        }
        let cs = self.layout.cs();
        let (s, e) = self.cluster_span(offset, len);
        let _range = self.ranges.lock(s, e, true).await;
        let end = offset + len;
        let first_full = offset.div_ceil(cs);
        let last_full = end / cs;
        if first_full >= last_full {
            // No whole cluster inside: part of one cluster, or the tail of one and the head of
            // the next. `zero_partial` looks at one cluster only, so split at the boundary
            // (otherwise a head that already reads as zeroes would skip the next cluster's part).
            let boundary = (offset / cs + 1) * cs;
            if end <= boundary {
                return self.zero_partial(offset, len).await;
            }
            self.zero_partial(offset, boundary - offset).await?;
            return self.zero_partial(boundary, end - boundary).await;
        }
        if !offset.is_multiple_of(cs) {
            self.zero_partial(offset, first_full * cs - offset).await?;
        }
        // A raw data file must read as the guest disk does: zero it first.
        self.zero_raw_data_file(first_full * cs, (last_full - first_full) * cs, flags)
            .await?;
        {
            let held = &self.meta.lock().await;
            let unmap = flags.contains(ReqFlags::MAY_UNMAP);
            for gc in GuestCluster::new(first_full).to(GuestCluster::new(last_full)) {
                let old = self.l2_entry(held, gc).await?;
                // An unaligned offset is not used here: the cluster is freed (reported, and
                // leaked) as QEMU does.
                let kind = self.classify(old).ok();
                if matches!(kind, Some(Kind::Zero { .. })) {
                    continue;
                }
                // An unallocated cluster gets the zero flag too, backing file or not, as QEMU
                // does (its map then shows the range as present zeroes).
                let v3 = self.layout.version.get() >= 3;
                let new = match kind {
                    Some(Kind::Normal { host, copied: true }) if !unmap && v3 => {
                        L2Entry::zero_at(host)
                    }
                    _ if v3 => L2Entry::ZERO,
                    _ => L2Entry::UNALLOCATED,
                };
                if new == old {
                    continue;
                }
                if new.host_offset().bytes() == 0 {
                    self.release_reporting(held, old, self.pass_discard_request())
                        .await?;
                }
                self.set_l2_entry(held, gc, new).await?;
            }
        }
        if !end.is_multiple_of(cs) {
            self.zero_partial(last_full * cs, end - last_full * cs)
                .await?;
        }
        Ok(())
    }

    /// Zero part of one cluster (`[offset, offset+len)` must not cross a cluster boundary):
    /// a cluster that reads as zeroes throughout is left so, or (unallocated, without a
    /// backing file) given the zero flag as QEMU does; any other is written zeroes.
    async fn zero_partial(&self, offset: u64, len: u64) -> Result<()> {
        let guard = self.meta.lock().await;
        let held = &guard;
        let gc = GuestOffset::new(offset).cluster(self.layout.cluster_bits);
        let kind = self.kind_at(held, gc).await?;
        if !self.reads_zero(kind) {
            drop(guard);
            return self.write_from(offset, &vec![0u8; len as usize]).await;
        }
        if kind == Kind::Unallocated && self.layout.version.get() >= 3 {
            self.ensure_l2(held, gc).await?;
            self.set_l2_entry(held, gc, L2Entry::ZERO).await?;
        }
        Ok(())
    }

    pub(crate) async fn do_discard(&self, offset: u64, len: u64) -> Result<()> {
        // A v2 image cannot mark a cluster as reading zeroes: deallocating it would let the
        // backing file's older data show through. Keep the data, as QEMU does.
        if self.layout.version.get() < 3 && self.backing().is_some() {
            return Ok(());
        }
        self.discard_clusters(offset, len, false).await
    }

    /// The whole clusters `[first, last)` a discard of `[offset, offset + len)` may drop:
    /// partial clusters are left alone, except the last cluster of an image whose size is not
    /// cluster aligned when the discard runs to the end of the image (nothing else can be in
    /// that cluster).
    fn discard_span(&self, offset: u64, len: u64) -> (u64, u64) {
        let cs = self.layout.cs();
        let end = offset + len;
        let last = if end >= self.layout.size.get() {
            end.div_ceil(cs)
        } else {
            end / cs
        };
        (offset.div_ceil(cs), last)
    }

    /// Discard whole clusters. A plain discard of a v3 image leaves zero clusters where the
    /// cluster was allocated or a backing file lies below (neither the old data nor the
    /// backing's may show through); `full` deallocates outright.
    pub(super) async fn discard_clusters(&self, offset: u64, len: u64, full: bool) -> Result<()> {
        let cs = self.layout.cs();
        let (first, last) = self.discard_span(offset, len);
        if first >= last {
            return Ok(());
        }
        let _range = self.ranges.lock(first, last, true).await;
        // The data file holds the guest disk up to the virtual size, not a whole last cluster.
        let data_len = (last * cs).min(self.layout.size.get()) - first * cs;
        match &self.data {
            // A raw data file must keep reading as the guest disk: zero what is discarded.
            Some(_) if self.data_raw => {
                self.zero_raw_data_file(first * cs, data_len, ReqFlags::MAY_UNMAP)
                    .await?
            }
            Some(d) => d.discard(first * cs, data_len).await?,
            None => {}
        }
        let held = &self.meta.lock().await;
        let per = self.layout.l2_entries();
        let backing = self.backing().is_some();
        for gc in GuestCluster::new(first).to(GuestCluster::new(last)) {
            if gc.index() == first || gc.index().is_multiple_of(per) {
                // QEMU reaches each L2 table of the range, one after the other, through the
                // lookup that allocates a missing one, so a discard of clusters never written
                // leaves an (empty) L2 table behind; so does blk, in the same order (clusters
                // freed in one table are reused for the next), and the image comes out as
                // QEMU's, file length included.
                self.ensure_l2(held, gc).await?;
            }
            if self.layout.ext_l2 {
                self.discard_ext(held, gc, full).await?;
                continue;
            }
            let old = self.l2_entry(held, gc).await?;
            // An unaligned offset counts as allocated; freeing it reports it (not fatal).
            let allocated = !matches!(
                self.classify(old),
                Ok(Kind::Unallocated | Kind::Zero { host: None })
            );
            // (The planted bug deallocates over a backing file, exposing its older data.)
            let planted = backing && planted::on(planted::Bug::DiscardOverBacking);
            let new = if full || planted {
                L2Entry::UNALLOCATED
            } else if backing || allocated {
                // v2 has no zero flag: only reached without a backing file, where an
                // unallocated cluster reads as zeroes.
                if self.layout.version.get() >= 3 {
                    L2Entry::ZERO
                } else {
                    L2Entry::UNALLOCATED
                }
            } else {
                old
            };
            if old == new {
                continue;
            }
            self.release_reporting(held, old, self.pass_discard_request())
                .await?;
            self.set_l2_entry(held, gc, new).await?;
        }
        Ok(())
    }

    /// Zero `[off, off + len)` of a raw external data file (no-op otherwise).
    pub(super) async fn zero_raw_data_file(
        &self,
        off: u64,
        len: u64,
        flags: ReqFlags,
    ) -> Result<()> {
        match &self.data {
            Some(d) if self.data_raw && len > 0 => {
                d.write_zeroes(off, len, flags & ReqFlags::MAY_UNMAP).await
            }
            _ => Ok(()),
        }
    }

    /// The overlap check before guest data is written at `host`: data in an external data
    /// file cannot meet the image's metadata (only the corrupt state is checked).
    pub(super) async fn pre_data_write_check(&self, host: HostOffset, len: u64) -> Result<()> {
        if self.has_data_file() {
            return self.pre_write_check(u32::MAX, host.bytes(), len).await;
        }
        self.pre_write_check(0, host.bytes(), len).await
    }

    pub(crate) async fn do_block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let held = &self.meta.lock().await;
        let offset = GuestOffset::new(offset);
        let (kind, n) = self.run_at(held, offset, len.max(1)).await?;
        let in_off = offset.in_cluster(self.layout.cluster_bits);
        // The host bytes of an encrypted image are no use to a reader: QEMU gives no offset.
        let at = |h: HostOffset| (!self.encrypted()).then(|| (h + in_off).bytes());
        let mapping = match kind {
            Kind::Unallocated if self.layout.ext_l2 => {
                match self.reserved_at(held, offset).await? {
                    Some(h) => Mapping::UnallocatedAt { host: h.bytes() },
                    None => Mapping::Unallocated,
                }
            }
            Kind::Unallocated => Mapping::Unallocated,
            Kind::Zero { host } => Mapping::Zero {
                host: host.and_then(at),
            },
            Kind::Normal { host, .. } => Mapping::Data { host: at(host) },
            Kind::Compressed { .. } => Mapping::Data { host: None },
        };
        Ok(BlockStatus { len: n, mapping })
    }
}
