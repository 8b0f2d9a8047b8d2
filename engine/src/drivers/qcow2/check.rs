//! qcow2 consistency check and repair (`qemu-img check`).
//!
//! `check_node` flushes the node's metadata, counts the references to every host cluster
//! (`check_walk`), compares them with the stored refcounts and reports QEMU's `ImageCheck`
//! numbers: corruptions (a refcount lower than the references, misaligned or overflowing
//! entries, refcount 0 for a used cluster, wrong COPIED flags), leaks (a refcount higher than
//! the references), internal errors, the image end offset and the allocation statistics of the
//! active L1 table.
//!
//! Repair follows QEMU: `Repair::Leaks` lowers the refcounts of leaked clusters; `Repair::All`
//! also raises refcounts that are too low, fixes COPIED flags, and rebuilds the whole refcount
//! structure when a used cluster has refcount 0 or a refcount block is broken. A successful
//! repair clears the dirty and corrupt bits. The caller keeps other requests away from the
//! node while it runs (the metadata lock is held throughout).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::rc::Rc;

use crate::driver::{CheckReport, Repair};
use crate::error::{Errno, Error, Result};
use crate::graph::Node;
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::cache::get_u64;
use super::check_walk::Refs;
use super::entry::L2Entry;
use super::header::{self, Header, OFF_INCOMPAT};
use super::lock::MetaGuard;
use super::units::{HostCluster, HostOffset};

/// Check (and optionally repair) the qcow2 image open as `node`, as `qemu-img check` does:
/// when a repair fixed something, the image is checked again and the second result is
/// returned with the first one's `corruptions_fixed`/`leaks_fixed` (and both passes'
/// diagnostics). A repair needs a read-write node.
pub async fn check_node(node: &Rc<Node>, repair: Option<Repair>) -> Result<CheckReport> {
    let q = node.driver().format_ops().ok_or_else(|| {
        Error::io_msg(
            Errno::ENOTSUP,
            format!("Node '{}' is not a qcow2 image", node.name()),
        )
    })?;
    let first = q.check(repair).await?;
    if first.failed.is_some() || (first.corruptions_fixed == 0 && first.leaks_fixed == 0) {
        return Ok(first);
    }
    let mut second = q.check(None).await?;
    second.corruptions_fixed = first.corruptions_fixed;
    second.leaks_fixed = first.leaks_fixed;
    let mut messages = first.messages;
    messages.append(&mut second.messages);
    second.messages = messages;
    Ok(second)
}

impl Qcow2 {
    /// The check proper, under the metadata lock.
    pub(crate) async fn check(&self, repair: Option<Repair>) -> Result<CheckReport> {
        if repair.is_some() && self.read_only.get() {
            return Err(Error::io_msg(
                Errno::EROFS,
                "qcow2: cannot repair a read-only image",
            ));
        }
        let held = &self.meta.lock().await;
        if !self.read_only.get() {
            self.flush_metadata(held).await?;
            self.file.flush().await?;
        }
        let mut rep = CheckReport {
            filename: self.file.node().driver().filename(),
            format: "qcow2".into(),
            total_clusters: self.layout.size.get().div_ceil(self.layout.cs()),
            ..CheckReport::default()
        };
        let h = self.read_header().await?;
        let (refs, mut rebuild) = self.count_refs(&h, &mut rep).await?;
        let pre = rep.clone();
        let mut highest = self
            .compare_refs(held, &mut rep, &refs, None, &mut rebuild)
            .await?;
        if rebuild && repair == Some(Repair::All) {
            highest = self.rebuild_and_recount(held, &mut rep).await?;
        } else if repair.is_some() {
            if rebuild {
                rep.error("ERROR need to rebuild refcount structures".into());
                rep.check_errors += 1;
                rep.failed = Some(Errno::EIO);
                return Ok(rep);
            }
            if rep.leaks != 0 || rep.corruptions != 0 {
                let messages = std::mem::take(&mut rep.messages);
                rep = pre;
                rep.messages = messages;
                highest = self
                    .compare_refs(held, &mut rep, &refs, repair, &mut rebuild)
                    .await?;
            }
        }
        // With `-r leaks`, COPIED flags are fixed too when the refcounts are now known good.
        let fix_copied = match repair {
            Some(Repair::All) => true,
            Some(Repair::Leaks) => rep.check_errors == 0 && rep.corruptions == 0 && rep.leaks == 0,
            None => false,
        };
        self.check_copied(held, &mut rep, fix_copied).await?;
        rep.image_end_offset = (highest + 1) * self.layout.cs();
        if repair.is_some() {
            self.write_back_refblocks(held).await?;
            self.file.flush().await?;
            if rep.check_errors == 0 && rep.corruptions == 0 {
                self.mark_clean_and_consistent().await?;
            }
        }
        Ok(rep)
    }

    /// `check -r all` found the refcounts beyond repair: rebuild them, count again and free
    /// the leaks the rebuild left (the old structures); fold both passes into `rep` as QEMU
    /// reports them. Returns the highest cluster in use.
    async fn rebuild_and_recount(
        &self,
        held: &MetaGuard<'_>,
        rep: &mut CheckReport,
    ) -> Result<u64> {
        rep.error("Rebuilding refcount structure".into());
        let old = rep.clone();
        self.rebuild_refcounts(held, true).await?;
        let h = self.read_header().await?;
        let mut fresh = CheckReport {
            messages: std::mem::take(&mut rep.messages),
            ..CheckReport::default()
        };
        let (refs, _) = self.count_refs(&h, &mut fresh).await?;
        let mut again = false;
        let mut leak_pass = CheckReport {
            messages: std::mem::take(&mut fresh.messages),
            ..CheckReport::default()
        };
        let highest = self
            .compare_refs(held, &mut leak_pass, &refs, Some(Repair::Leaks), &mut again)
            .await?;
        if again {
            leak_pass.error("ERROR rebuilt refcount structure is still broken".into());
        }
        rep.messages = leak_pass.messages;
        rep.corruptions = fresh.corruptions;
        rep.leaks = fresh.leaks;
        rep.check_errors += fresh.check_errors;
        rep.corruptions_fixed += old.corruptions.saturating_sub(rep.corruptions);
        rep.leaks_fixed += old.leaks.saturating_sub(rep.leaks);
        rep.leaks += leak_pass.leaks;
        Ok(highest)
    }

    pub(super) async fn read_header(&self) -> Result<Header> {
        let len = self.file.len().min(self.layout.cs());
        let (buf, r) = self
            .file
            .read(0, IoBuf::new(len as usize), ReqFlags::NONE)
            .await;
        r?;
        Header::parse(buf.as_slice(), self.file.len())
    }

    /// Compare the stored refcounts with the references (QEMU's `compare_refcounts`),
    /// repairing what `fix` allows. Returns the highest cluster in use.
    async fn compare_refs(
        &self,
        held: &MetaGuard<'_>,
        rep: &mut CheckReport,
        refs: &Refs,
        fix: Option<Repair>,
        rebuild: &mut bool,
    ) -> Result<u64> {
        let mut highest = 0;
        let beyond: Vec<u64> = refs.beyond.keys().copied().collect();
        let clusters = (0..refs.dense.len() as u64).chain(beyond);
        for i in clusters {
            let c = HostCluster::new(i);
            let stored = match self.refcount(held, c).await {
                Ok(n) => n,
                Err(e) => {
                    rep.error(format!("Can't get refcount for cluster {i}: {e}"));
                    rep.check_errors += 1;
                    continue;
                }
            };
            let wanted = refs.get(i);
            if stored > 0 || wanted > 0 {
                highest = i;
            }
            if stored == wanted {
                continue;
            }
            let fixing = if stored == 0 {
                *rebuild = true;
                false
            } else if stored > wanted {
                fix.is_some()
            } else {
                fix == Some(Repair::All)
            };
            let what = if fixing {
                "Repairing"
            } else if stored < wanted {
                "ERROR"
            } else {
                "Leaked"
            };
            rep.error(format!(
                "{what} cluster {i} refcount={stored} reference={wanted}"
            ));
            if fixing {
                let delta = wanted as i64 - stored as i64;
                if self.update_refcount(held, c, delta).await.is_ok() {
                    if stored > wanted {
                        rep.leaks_fixed += 1;
                    } else {
                        rep.corruptions_fixed += 1;
                    }
                    continue;
                }
            }
            if stored < wanted {
                rep.corruptions += 1;
            } else {
                rep.leaks += 1;
            }
        }
        Ok(highest)
    }

    /// Check that COPIED is set exactly on L1/L2 entries whose cluster has refcount 1
    /// (QEMU's `check_oflag_copied`), fixing the flags when `repair`.
    async fn check_copied(
        &self,
        held: &MetaGuard<'_>,
        rep: &mut CheckReport,
        repair: bool,
    ) -> Result<()> {
        let what = if repair { "Repairing" } else { "ERROR" };
        let l1 = self.l2.snapshot();
        for (i, &e) in l1.iter().enumerate() {
            let l2 = e.l2_offset();
            if l2.bytes() == 0 {
                continue;
            }
            let Ok(n) = self.refcount(held, self.layout.cluster_of(l2)).await else {
                continue;
            };
            if (n == 1) != e.is_copied() {
                rep.error(format!(
                    "{what} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={n}"
                ));
                if repair {
                    let fixed = e.with_copied(n == 1);
                    let r = self
                        .file
                        .write(
                            self.l2.entry_pos(i).bytes(),
                            IoBuf::from_slice(&fixed.raw().to_be_bytes()),
                            ReqFlags::NONE,
                        )
                        .await
                        .1;
                    if let Err(err) = r {
                        rep.check_errors += 1;
                        return Err(err);
                    }
                    self.l2.set(i, fixed);
                    rep.corruptions_fixed += 1;
                } else {
                    rep.corruptions += 1;
                }
            }
            self.check_copied_l2(held, rep, l2, repair).await?;
        }
        Ok(())
    }

    /// `check_copied` for the data clusters of the L2 table at `l2`.
    async fn check_copied_l2(
        &self,
        held: &MetaGuard<'_>,
        rep: &mut CheckReport,
        l2: HostOffset,
        repair: bool,
    ) -> Result<()> {
        let cs = self.layout.cs();
        let what = if repair { "Repairing" } else { "ERROR" };
        let l2 = l2.bytes();
        let mut table = match self.read_meta(l2, cs).await {
            Ok(t) => t,
            Err(err) => {
                rep.error(format!("ERROR: Could not read L2 table: {err}"));
                rep.check_errors += 1;
                return Err(err);
            }
        };
        let mut dirty = 0;
        let stride = self.layout.l2_entry_bytes() as usize;
        for j in 0..cs as usize / stride {
            let at = j * stride;
            let entry = L2Entry::from_raw(get_u64(&table[at..], 0));
            let host = entry.host_offset();
            if entry.is_compressed() || host.bytes() == 0 {
                continue;
            }
            // Data clusters of an external data file count as referenced once.
            let n = if self.has_data_file() {
                1
            } else {
                match self.refcount(held, self.layout.cluster_of(host)).await {
                    Ok(n) => n,
                    Err(_) => continue,
                }
            };
            if (n == 1) != entry.is_copied() {
                rep.error(format!(
                    "{what} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={n}"
                ));
                rep.corruptions += 1;
                if repair {
                    let fixed = entry.with_copied(n == 1);
                    table[at..at + 8].copy_from_slice(&fixed.raw().to_be_bytes());
                    dirty += 1;
                }
            }
        }
        if dirty > 0 {
            let r = self
                .file
                .write(l2, IoBuf::from_slice(&table), ReqFlags::NONE)
                .await
                .1;
            if let Err(err) = r {
                rep.error(format!("ERROR: Could not write L2 table: {err}"));
                rep.check_errors += 1;
                return Err(err);
            }
            self.l2.cache.remove(l2);
            rep.corruptions -= dirty;
            rep.corruptions_fixed += dirty;
        }
        Ok(())
    }

    /// Clear the dirty and corrupt bits after a successful repair.
    async fn mark_clean_and_consistent(&self) -> Result<()> {
        let bits = header::INCOMPAT_DIRTY | header::INCOMPAT_CORRUPT;
        let old = self.layout.incompat.get();
        if self.layout.version.get() < 3 || old & bits == 0 {
            return Ok(());
        }
        let new = old & !bits;
        self.file
            .write(
                OFF_INCOMPAT,
                IoBuf::from_slice(&new.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.layout.incompat.set(new);
        Ok(())
    }
}
