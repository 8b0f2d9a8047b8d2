//! `qemu-img amend -o compat=0.10`: v3 -> v2, with QEMU's refusals in QEMU's order (refcount
//! width, data file, snapshots of another size or with VM state, incompatible features), the
//! dirty bit cleared first, and the v3 zero clusters turned into what v2 can say:
//!
//! * a zero cluster with its own host cluster: the host cluster is zeroed, then the flag goes;
//! * a zero cluster without one: simply unallocated when nothing is below the image, else a
//!   new cluster of zeroes (referenced as many times as the L2 table is);
//!
//! in every L2 table of the active L1 and of the snapshots', each once. Zeroes and refcounts
//! are durable before the L2 table that relies on them. A compression type other than
//! deflate stays refused while compressed clusters use it. The header switches last, in one
//! write (`amend.rs`). Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::collections::BTreeSet;

use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::amend::Progress;
use super::cache::{get_u64, set_u64};
use super::cluster::Kind;
use super::entry::{COPIED, L1Entry, L2Entry, ZERO};
use super::header::{INCOMPAT_COMPRESSION, INCOMPAT_DIRTY};
use super::lock::MetaGuard;
use super::units::{HostCluster, HostOffset};

fn refused(msg: impl Into<String>) -> Error {
    Error::io_msg(Errno::ENOTSUP, msg)
}

/// The L2 tables `l1s` reach, each once, in offset order.
fn l2_tables(l1s: &[Vec<L1Entry>]) -> BTreeSet<u64> {
    l1s.iter()
        .flatten()
        .map(|e| e.l2_offset().bytes())
        .filter(|&o| o != 0)
        .collect()
}

impl Qcow2 {
    /// The downgrade itself (v3 on entry).
    pub(super) async fn downgrade(&self, progress: &Progress<'_>) -> Result<()> {
        self.check_downgrade()?;
        if self.layout.incompat.get() & INCOMPAT_DIRTY != 0 {
            self.write_back_and_mark_clean().await?;
        }
        let left = self.layout.incompat.get() & !INCOMPAT_COMPRESSION;
        if left != 0 {
            return Err(refused(format!(
                "Cannot downgrade an image with incompatible features {left:#x} set"
            )));
        }
        // Compatible bits go (lazy refcounts included: the image is clean).
        self.lazy.set(false);
        self.expand_zero_clusters(progress).await?;
        if self.layout.incompat.get() & INCOMPAT_COMPRESSION != 0 && self.has_compressed().await? {
            return Err(refused(
                "Cannot downgrade an image with zstd compression type and existing \
                 compressed clusters",
            ));
        }
        self.rewrite_header(|h| {
            h.version = 2;
            h.header_length = 72;
            (h.incompat, h.compat, h.autoclear) = (0, 0, 0);
            h.compression_type = 0;
        })
        .await?;
        self.layout.version.set(2);
        self.layout.incompat.set(0);
        self.layout.autoclear.set(0);
        Ok(())
    }

    /// QEMU's refusals before anything changes.
    fn check_downgrade(&self) -> Result<()> {
        if self.layout.refcount_order.get() != 4 {
            return Err(refused("compat=0.10 requires refcount_bits=16"));
        }
        if self.has_data_file() {
            return Err(refused("Cannot downgrade an image with a data file"));
        }
        let size = self.layout.size.get();
        let differs = self
            .snaps
            .borrow()
            .iter()
            .any(|s| s.vm_state_size != 0 || s.disk_size.is_some_and(|d| d != size));
        if differs {
            return Err(refused("Internal snapshots prevent downgrade of image"));
        }
        Ok(())
    }

    /// Every L1 table: the active one, then the snapshots'.
    async fn all_l1_tables(&self) -> Result<Vec<Vec<L1Entry>>> {
        let mut l1s = vec![self.l2.snapshot()];
        let snaps = self.snaps.borrow().clone();
        for sn in &snaps {
            l1s.push(self.read_snapshot_l1(sn).await?);
        }
        Ok(l1s)
    }

    /// Turn every zero cluster into data or unallocated space (see the module doc).
    async fn expand_zero_clusters(&self, progress: &Progress<'_>) -> Result<()> {
        let held = &self.meta.lock().await;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        let tables = l2_tables(&self.all_l1_tables().await?);
        let n = tables.len().max(1) as f64;
        for (i, l2) in tables.into_iter().enumerate() {
            self.expand_in_l2(held, HostOffset::new(l2)).await?;
            progress.at((i + 1) as f64 / n);
        }
        // The tables changed under the cache.
        self.l2.cache.clear();
        Ok(())
    }

    /// Expand the zero clusters of the L2 table at `l2`.
    async fn expand_in_l2(&self, held: &MetaGuard<'_>, l2: HostOffset) -> Result<()> {
        let cs = self.layout.cs();
        let (buf, r) = self
            .file
            .read(l2.bytes(), IoBuf::new(cs as usize), ReqFlags::NONE)
            .await;
        r?;
        let mut table = buf.as_slice().to_vec();
        let l2_refs = self
            .refcount(held, self.layout.cluster_of(l2))
            .await?
            .max(1);
        let step = (self.layout.l2_entry_bytes() / 8) as usize;
        let mut dropped = Vec::new();
        let mut changed = false;
        for slot in (0..table.len() / 8).step_by(step) {
            let raw = get_u64(&table, slot);
            let Kind::Zero { host } = self.classify(L2Entry::from_raw(raw))? else {
                continue;
            };
            let new = match host {
                Some(h) if self.refcount(held, self.layout.cluster_of(h)).await? == l2_refs => {
                    self.zero_host_cluster(h).await?;
                    raw & !ZERO
                }
                None if self.backing().is_none() => 0,
                _ => {
                    dropped.extend(host);
                    let c = self.alloc_clusters(held, 1).await?;
                    self.update_refcount(held, c, l2_refs as i64 - 1).await?;
                    let at = self.layout.cluster_offset(c);
                    self.zero_host_cluster(at).await?;
                    at.bytes() | if l2_refs == 1 { COPIED } else { 0 }
                }
            };
            set_u64(&mut table, slot, new);
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        self.write_back_refblocks(held).await?;
        self.file.flush().await?;
        self.write_flushed(l2.bytes(), &table).await?;
        for h in dropped {
            let c: HostCluster = self.layout.cluster_of(h);
            self.update_refcount(held, c, -(l2_refs as i64)).await?;
        }
        self.write_back_refblocks(held).await?;
        self.file.flush().await
    }

    /// Write a cluster of zeroes at `host` in the image file.
    async fn zero_host_cluster(&self, host: HostOffset) -> Result<()> {
        let cs = self.layout.cs() as usize;
        self.file
            .write(
                host.bytes(),
                IoBuf::from_slice(&vec![0u8; cs]),
                ReqFlags::NONE,
            )
            .await
            .1
    }

    /// True when a compressed cluster is mapped by the active L1 table (what QEMU looks at).
    async fn has_compressed(&self) -> Result<bool> {
        let cs = self.layout.cs();
        for l2 in l2_tables(&[self.l2.snapshot()]) {
            let (buf, r) = self
                .file
                .read(l2, IoBuf::new(cs as usize), ReqFlags::NONE)
                .await;
            r?;
            let step = (self.layout.l2_entry_bytes() / 8) as usize;
            let t = buf.as_slice();
            for slot in (0..t.len() / 8).step_by(step) {
                let e = L2Entry::from_raw(get_u64(t, slot));
                if matches!(self.classify(e)?, Kind::Compressed { .. }) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
