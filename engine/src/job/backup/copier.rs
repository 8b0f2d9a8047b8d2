//! The copy state a backup job and its copy-before-write filter share (QEMU's block-copy): which
//! clusters of the source the target still lacks, which are being copied now, and the copy of
//! one range itself.
//!
//! The rules that make the target a point-in-time copy of the source:
//!
//! * A cluster's bit in `todo` is set while the target lacks the source's data of the moment the
//!   copy state was made; it is cleared only once a copy of it *succeeded*.
//! * A copy takes its clusters `busy` first; nobody copies a busy cluster, and a guest write
//!   (through the filter) waits until the clusters it overwrites are neither busy nor to do, so
//!   it never overwrites data a copy has yet to read.
//! * Target writes are serialising: a read of the target (a fleecing export reading through the
//!   target's backing file, the source) that is in flight finishes before the copy lands, and so
//!   still reads the source from before the guest write that triggered the copy.
//!
//! The copy bitmap is an [`HBits`] at cluster granularity; [`CopyState::seed_from`] is the seam
//! through which a named dirty bitmap (sync=bitmap) chooses what to copy.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::bitmap::HBits;
use crate::error::{Error, Result};
use crate::graph::{Child, Node};
use crate::io::{IoBuf, ReqFlags};
use crate::util::Notify;

/// Largest single copy when `max-chunk` does not say (QEMU's block-copy buffer size).
pub const DEFAULT_MAX_CHUNK: u64 = 1 << 20;

/// A failed copy: the error, and whether it was the source read.
pub type CopyError = (Error, bool);

/// What is still to copy and what is being copied.
pub struct CopyState {
    cluster: u64,
    len: u64,
    todo: RefCell<HBits>,
    busy: RefCell<HBits>,
    /// Woken when a cluster stops being busy.
    released: Notify,
    /// sync=top: clusters not allocated above this node need no copy.
    skip_below: RefCell<Option<Rc<Node>>>,
    max_chunk: Cell<u64>,
    /// Bytes copied (or found not to need a copy) so far, by the job and by guest writes.
    done: Cell<u64>,
    /// Bytes to do when the state was seeded (the job's progress total).
    total: Cell<u64>,
    /// `compress`: data goes to the target as compressed writes, a whole cluster at a time.
    compress: Cell<bool>,
}

impl CopyState {
    /// Everything of a `len`-byte source is to copy, in clusters of `cluster` bytes.
    pub fn new(len: u64, cluster: u64) -> Rc<CopyState> {
        assert!(cluster.is_power_of_two());
        let n = len.div_ceil(cluster);
        let mut todo = HBits::new(n);
        todo.set_range(0, n);
        Rc::new(CopyState {
            cluster,
            len,
            todo: RefCell::new(todo),
            busy: RefCell::new(HBits::new(n)),
            released: Notify::new(),
            skip_below: RefCell::new(None),
            max_chunk: Cell::new(DEFAULT_MAX_CHUNK.max(cluster)),
            done: Cell::new(0),
            total: Cell::new(len),
            compress: Cell::new(false),
        })
    }

    /// The copy granularity.
    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    /// The source's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length source.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes copied so far and bytes there were to copy at the start.
    pub fn progress(&self) -> (u64, u64) {
        (self.done.get(), self.total.get())
    }

    /// Bytes still to copy.
    pub fn remaining(&self) -> u64 {
        self.todo.borrow().count() * self.cluster
    }

    /// A copy of what is still to copy (for the bitmap hook on failure).
    pub fn todo_bits(&self) -> HBits {
        self.todo.borrow().clone()
    }

    /// Largest single copy.
    pub fn max_chunk(&self) -> u64 {
        self.max_chunk.get()
    }

    /// Write data compressed (backup's `compress`).
    pub fn set_compress(&self, compress: bool) {
        self.compress.set(compress);
    }

    /// Largest single copy (`x-perf.max-chunk`, 0: the default).
    pub fn set_max_chunk(&self, max_chunk: u64) {
        let m = if max_chunk == 0 {
            DEFAULT_MAX_CHUNK
        } else {
            max_chunk
        };
        self.max_chunk
            .set(m.max(self.cluster) / self.cluster * self.cluster);
    }

    /// sync=top: clusters the source's chain provides only from `base` or below are left out.
    pub fn skip_unallocated_below(&self, base: Option<Rc<Node>>) {
        *self.skip_below.borrow_mut() = base;
    }

    /// Copy nothing more: what is left to copy is dropped (sync=none ended, a broken snapshot).
    pub fn drop_todo(&self) {
        self.todo.borrow_mut().clear();
    }

    /// The seam for sync=bitmap: copy exactly the byte ranges `bits` marks at `granularity`
    /// (a named dirty bitmap of the source), nothing else.
    pub fn seed_from(&self, bits: &HBits, granularity: u64) {
        let n = self.len.div_ceil(self.cluster);
        let mut todo = HBits::new(n);
        for (start, count) in bits.runs() {
            let from = (start * granularity).min(self.len) / self.cluster;
            let to = ((start + count) * granularity)
                .min(self.len)
                .div_ceil(self.cluster);
            todo.set_range(from, to);
        }
        self.total.set(todo.count() * self.cluster);
        *self.todo.borrow_mut() = todo;
    }

    fn clusters(&self, offset: u64, bytes: u64) -> (u64, u64) {
        let end = (offset + bytes).min(self.len);
        (offset / self.cluster, end.div_ceil(self.cluster))
    }

    /// True when some cluster of the range is still to copy.
    pub fn needs_copy(&self, offset: u64, bytes: u64) -> bool {
        let (first, end) = self.clusters(offset, bytes);
        self.todo.borrow().next_set(first).is_some_and(|c| c < end)
    }

    /// Take the next run of clusters in `[first, end)` that is to do and free, at most
    /// `max_chunk` long, waiting for busy ones to be released. `None` once nothing in the
    /// range is to do.
    async fn take_run(&self, first: u64, end: u64) -> Option<(u64, u64)> {
        loop {
            let start = self.todo.borrow().next_set(first).filter(|&c| c < end)?;
            if self.busy.borrow().get(start) {
                self.released.wait().await;
                continue;
            }
            let max = self.max_chunk.get() / self.cluster;
            let mut stop = start + 1;
            while stop < end
                && stop - start < max
                && self.todo.borrow().get(stop)
                && !self.busy.borrow().get(stop)
            {
                stop += 1;
            }
            self.busy.borrow_mut().set_range(start, stop);
            return Some((start, stop));
        }
    }

    fn finish_run(&self, start: u64, stop: u64, ok: bool) {
        self.busy.borrow_mut().reset_range(start, stop);
        if ok {
            self.todo.borrow_mut().reset_range(start, stop);
            let bytes = (stop * self.cluster).min(self.len) - start * self.cluster;
            self.done.set(self.done.get() + bytes);
        }
        self.released.notify_all();
    }

    /// Copy to the target every cluster of `[offset, offset+bytes)` that is still to do; returns
    /// the bytes written to the target, data or zeroes (counted against a job's speed). Clusters another copy holds are waited
    /// for, not copied twice. On error the clusters of the failed run stay to do.
    pub async fn copy(
        &self,
        source: &Child,
        target: &Child,
        offset: u64,
        bytes: u64,
    ) -> std::result::Result<u64, CopyError> {
        let (first, end) = self.clusters(offset, bytes);
        let mut copied = 0;
        while let Some((start, stop)) = self.take_run(first, end).await {
            let from = start * self.cluster;
            let to = (stop * self.cluster).min(self.len);
            let r = self.copy_run(source, target, from, to).await;
            self.finish_run(start, stop, r.is_ok());
            copied += r?;
        }
        Ok(copied)
    }

    /// Copy `[from, to)` piece by piece as the source's chain provides it: data is read and
    /// written, zeroes are written as zeroes, and (sync=top) what only the base provides is
    /// left out.
    async fn copy_run(
        &self,
        source: &Child,
        target: &Child,
        from: u64,
        to: u64,
    ) -> std::result::Result<u64, CopyError> {
        let base = self.skip_below.borrow().clone();
        let mut pos = from;
        let mut copied = 0;
        while pos < to {
            let status = source
                .chain_status(pos, to - pos, base.as_deref())
                .await
                .map_err(|e| (e, true))?;
            let mut n = status.len.min(to - pos).max(1);
            // What the piece is: None (left out), Some(true) (zeroes), Some(false) (data).
            let mut zero = match (&status.node, status.mapping) {
                // Left out: counts against nothing (as in QEMU, only what is written does).
                (None, _) if base.is_some() => None,
                (None, _) => Some(true),
                (Some(_), m) => Some(m.is_zero()),
            };
            if self.compress.get() {
                // Compressed clusters are written whole: a shorter piece is copied as data with
                // its cluster, a longer one stops at a cluster boundary (as QEMU's block-copy).
                if n < self.cluster {
                    n = self.cluster.min(to - pos);
                    zero = Some(false);
                } else {
                    n -= n % self.cluster;
                }
            }
            match zero {
                None => {}
                Some(true) => {
                    zero_target(target, pos, n).await?;
                    copied += n;
                }
                Some(false) => {
                    let (buf, r) = source
                        .read(pos, IoBuf::new(n as usize), ReqFlags::NONE)
                        .await;
                    r.map_err(|e| (e, true))?;
                    let flags = match self.compress.get() {
                        true => ReqFlags::SERIALISING | ReqFlags::WRITE_COMPRESSED,
                        false => ReqFlags::SERIALISING,
                    };
                    let (_, r) = target.write(pos, buf, flags).await;
                    r.map_err(|e| (e, false))?;
                    copied += n;
                }
            }
            pos += n;
        }
        Ok(copied)
    }
}

async fn zero_target(target: &Child, pos: u64, n: u64) -> std::result::Result<(), CopyError> {
    target
        .write_zeroes(pos, n, ReqFlags::SERIALISING)
        .await
        .map_err(|e| (e, false))
}

/// Check a cluster size given by the user (`min-cluster-size`): a power of two.
pub fn check_cluster_size(size: u64) -> Result<()> {
    if size != 0 && !size.is_power_of_two() {
        return Err(Error::generic(
            "Cannot create block-copy-state: min-cluster-size needs to be a power of 2",
        ));
    }
    Ok(())
}

/// The copy granularity for a target: its cluster size (what it reports as its optimal
/// transfer size), at least 64 KiB and at least `min_cluster_size`, as QEMU's block-copy picks.
pub fn cluster_size(target: &Node, min_cluster_size: u64) -> u64 {
    let opt = u64::from(target.limits().opt_transfer);
    opt.max(65536).max(min_cluster_size).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_from_maps_granules_to_clusters() {
        let s = CopyState::new(10 * 65536 + 100, 65536);
        assert_eq!(s.remaining(), 11 * 65536);
        let mut bits = HBits::new(64);
        // 4 KiB granules 17..18 lie in cluster 1; 40..41 in cluster 2.
        bits.set_range(17, 18);
        bits.set_range(40, 41);
        s.seed_from(&bits, 4096);
        let t = s.todo_bits();
        assert!(!t.get(0) && t.get(1) && t.get(2) && !t.get(3));
        assert_eq!(s.progress(), (0, 2 * 65536));
    }

    #[test]
    fn max_chunk_is_whole_clusters() {
        let s = CopyState::new(1 << 20, 65536);
        s.set_max_chunk(100_000);
        assert_eq!(s.max_chunk.get(), 65536);
        s.set_max_chunk(0);
        assert_eq!(s.max_chunk.get(), DEFAULT_MAX_CHUNK);
    }
}
