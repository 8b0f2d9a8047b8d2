//! qcow2 extended L2 entries (incompatible bit 4): each L2 entry is followed by a 64-bit
//! bitmap over the cluster's 32 subclusters (bit `s`: subcluster `s` is allocated in the
//! cluster; bit `32 + s`: it reads as zeroes). This module classifies guest ranges of such
//! images subcluster by subcluster for reads and block status; writes, write-zeroes and
//! discards of such images are `subcluster_write`'s.
//!
//! The kinds it returns keep the cluster's host offset (a subcluster's data sits at
//! `host + (offset within the cluster)`), so the read path and block status need no change.
//! Inconsistent entries (both bits of a subcluster set, an allocated subcluster without a
//! host cluster, a bitmap on a compressed cluster) are corruption, reported as QEMU does.
//!
//! Runs with the metadata lock held. Must not import `job`, `qmp`, `engine`, `backend` or
//! other drivers.

use crate::error::{Errno, Error, Result};

use super::Qcow2;
use super::cluster::Kind;
use super::lock::MetaGuard;
use super::subcluster_write::has_host;
use super::units::{GuestCluster, GuestOffset, HostOffset};

/// Subclusters per cluster.
pub(super) const SUBCLUSTERS: u64 = 32;

impl Qcow2 {
    /// QEMU's corruption report (fatal: the image is marked corrupt when writable) for the
    /// inconsistent extended entry of `gc`, and the EIO error that goes with it.
    pub(super) async fn invalid_entry(&self, gc: GuestCluster) -> Error {
        let (l1i, i) = self.l2_slot(gc);
        let l2 = self.l2.entry(l1i).l2_offset();
        let msg = format!("Invalid cluster entry found (L2 offset: {l2:#x}, L2 index: {i:#x})");
        let full = self.signal_corruption(true, None, None, &msg).await;
        Error::io_msg(Errno::EIO, full)
    }

    /// The kind of subcluster `s` of guest cluster `gc`.
    async fn sub_kind(&self, held: &MetaGuard<'_>, gc: GuestCluster, s: u64) -> Result<Kind> {
        let entry = self.l2_entry(held, gc).await?;
        let bitmap = self.l2_bitmap(held, gc).await?;
        let alloc = bitmap >> s & 1 != 0;
        let zero = bitmap >> (32 + s) & 1 != 0;
        let host = entry.host_offset();
        let compressed = entry.is_compressed();
        let mapped = has_host(entry, self.has_data_file());
        // Bit 0 of the descriptor (the zero flag of plain entries) is ignored here, as QEMU
        // ignores it: zeroes are in the bitmap.
        let invalid = (compressed && bitmap != 0) || (alloc && zero) || (alloc && !mapped);
        if invalid {
            return Err(self.invalid_entry(gc).await);
        }
        if compressed {
            return self.classify(entry);
        }
        if mapped {
            // Checks the alignment (and reports a misaligned cluster as corruption).
            self.kind_at(held, gc).await?;
        }
        Ok(if zero {
            Kind::Zero {
                host: mapped.then_some(host),
            }
        } else if alloc {
            Kind::Normal {
                host,
                copied: entry.is_copied(),
            }
        } else {
            Kind::Unallocated
        })
    }

    /// The host cluster of `gc` when its subcluster of kind `kind` is unallocated in an
    /// allocated cluster (it reads from the backing file, yet has its place reserved).
    async fn reserved_host(
        &self,
        held: &MetaGuard<'_>,
        gc: GuestCluster,
        kind: Kind,
    ) -> Result<Option<HostOffset>> {
        if kind != Kind::Unallocated {
            return Ok(None);
        }
        let entry = self.l2_entry(held, gc).await?;
        let host = entry.host_offset();
        Ok((!entry.is_compressed() && has_host(entry, self.has_data_file())).then_some(host))
    }

    /// Where the unallocated subcluster at guest `off` has its place reserved, if it has
    /// one (block status reports it, as QEMU does).
    pub(crate) async fn reserved_at(
        &self,
        held: &MetaGuard<'_>,
        off: GuestOffset,
    ) -> Result<Option<HostOffset>> {
        let bits = self.layout.cluster_bits;
        let gc = off.cluster(bits);
        let host = self.reserved_host(held, gc, Kind::Unallocated).await?;
        Ok(host.map(|h| h + off.in_cluster(bits)))
    }

    /// `run_at` for extended L2 entries: the kind at guest offset `off` and how many bytes
    /// from `off` (at most `max`) share it, walking subcluster by subcluster.
    pub(crate) async fn run_at_ext(
        &self,
        held: &MetaGuard<'_>,
        off: GuestOffset,
        max: u64,
    ) -> Result<(Kind, u64)> {
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let sc = cs / SUBCLUSTERS;
        let gc0 = off.cluster(bits);
        let in_off = off.in_cluster(bits);
        let kind = self.sub_kind(held, gc0, in_off / sc).await?;
        let reserved0 = self.reserved_host(held, gc0, kind).await?;
        if matches!(kind, Kind::Compressed { .. }) {
            return Ok((kind, (cs - in_off).min(max)));
        }
        let mut n = (sc - in_off % sc).min(max);
        // Subcluster index over the whole disk.
        let mut next = off.bytes() / sc + 1;
        while n < max {
            let gc = GuestCluster::new(next / SUBCLUSTERS);
            let k = self.sub_kind(held, gc, next % SUBCLUSTERS).await?;
            // Same kind, and for data the same place relative to the first cluster's.
            let shift = (gc.index() - gc0.index()) * cs;
            let same = match (kind, k) {
                (Kind::Unallocated, Kind::Unallocated) => {
                    let r = self.reserved_host(held, gc, k).await?;
                    r == reserved0.map(|h| h + shift)
                }
                (Kind::Zero { host: None }, Kind::Zero { host: None }) => true,
                (Kind::Zero { host: Some(a) }, Kind::Zero { host: Some(b) }) => b == a + shift,
                (
                    Kind::Normal {
                        host: a,
                        copied: ca,
                    },
                    Kind::Normal {
                        host: b,
                        copied: cb,
                    },
                ) => ca == cb && b == a + shift,
                _ => false,
            };
            if !same {
                break;
            }
            n = (n + sc).min(max);
            next += 1;
        }
        Ok((kind, n))
    }
}
