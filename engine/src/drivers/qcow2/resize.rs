//! qcow2 resize: growing the virtual size (moving to a larger L1 table, switched in by one
//! header write once it is durable) and shrinking over an unallocated tail. A growing resize
//! may preallocate the new clusters (`metadata`: mapped to host clusters that read as zeroes;
//! `falloc`/`full`: the file space reserved or zero-filled as well).
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, ReqFlags};

use crate::driver::Prealloc;

use super::cluster::Kind;
use super::header::{MAX_L1_BYTES, OFF_L1, OFF_SIZE};
use super::{COPIED, Qcow2};

impl Qcow2 {
    pub(crate) async fn do_truncate(&self, len: u64, prealloc: Prealloc) -> Result<()> {
        if !len.is_multiple_of(512) {
            return Err(Error::generic(
                "qcow2: the image size must be a multiple of 512 bytes",
            ));
        }
        if self.has_data_file() {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                "qcow2: resizing an image with an external data file is not supported",
            ));
        }
        let _g = self.meta.lock().await;
        let cs = self.cs();
        let old = self.size.get();
        let per_l1 = cs * self.l2_entries();
        if len < old && prealloc != Prealloc::Off {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                "qcow2: preallocation can't be used for shrinking an image",
            ));
        }
        if len < old {
            let first = len.div_ceil(cs);
            let end = old.div_ceil(cs);
            let mut gc = first;
            while gc < end {
                let l1i = (gc / self.l2_entries()) as usize;
                if self.l1.borrow()[l1i] == 0 {
                    gc = (l1i as u64 + 1) * self.l2_entries();
                    continue;
                }
                let kind = self.classify(self.l2_entry(gc).await?)?;
                if !matches!(kind, Kind::Unallocated | Kind::Zero { host: None }) {
                    return Err(Error::io_msg(
                        Errno::ENOTSUP,
                        "qcow2: cannot shrink the image: the area to cut off is allocated",
                    ));
                }
                gc += 1;
            }
        } else {
            let need = len.div_ceil(per_l1);
            if need > self.l1.borrow().len() as u64 {
                self.grow_l1(need).await?;
            }
            if prealloc != Prealloc::Off {
                self.preallocate(old, len, prealloc).await?;
            }
        }
        self.file
            .write(
                OFF_SIZE,
                IoBuf::from_slice(&len.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.size.set(len);
        Ok(())
    }

    /// Map every unallocated guest cluster wholly inside `[old, len)` to a new host cluster
    /// that reads as zeroes (metadata lock held). Clusters reused from inside the file are
    /// zero-filled; `Full` zero-fills everything, `Falloc` reserves the file's new tail.
    async fn preallocate(&self, old: u64, len: u64, mode: Prealloc) -> Result<()> {
        let cs = self.cs();
        let file_end = self.file.len();
        let (mut gc, end) = (old.div_ceil(cs), len.div_ceil(cs));
        let mut host_end = file_end;
        while gc < end {
            if self.classify(self.l2_entry(gc).await?)? != Kind::Unallocated {
                gc += 1;
                continue;
            }
            self.ensure_l2(gc).await?;
            let table_end = (gc / self.l2_entries() + 1) * self.l2_entries();
            let mut n = 1;
            while gc + n < end.min(table_end)
                && self.classify(self.l2_entry(gc + n).await?)? == Kind::Unallocated
            {
                n += 1;
            }
            let (host, got) = self.alloc_some(n).await?;
            let bytes = got * cs;
            // Fresh clusters past the end of the file read as zeroes; reused ones are zeroed.
            let zero_from = host;
            let zero_to = if mode == Prealloc::Full {
                host + bytes
            } else {
                (host + bytes).min(file_end)
            };
            if zero_to > zero_from {
                self.pre_write_check(0, zero_from, zero_to - zero_from)
                    .await?;
                self.file
                    .write(
                        zero_from,
                        IoBuf::new((zero_to - zero_from) as usize),
                        ReqFlags::NONE,
                    )
                    .await
                    .1?;
            }
            for i in 0..got {
                self.set_l2_entry(gc + i, (host + i * cs) | COPIED).await?;
            }
            host_end = host_end.max(host + bytes);
            gc += got;
        }
        if host_end > self.file.len() {
            let file_mode = if mode == Prealloc::Metadata {
                Prealloc::Off
            } else {
                mode
            };
            self.file.truncate(host_end, false, file_mode).await?;
        }
        self.flush_metadata().await?;
        self.file.flush().await
    }

    /// Replace the L1 table by a larger one (`entries`), switched in by one header write.
    async fn grow_l1(&self, entries: u64) -> Result<()> {
        let cs = self.cs();
        let bytes = entries * 8;
        if bytes > MAX_L1_BYTES {
            return Err(Error::io_msg(
                Errno::EFBIG,
                "qcow2: L1 table would be too large",
            ));
        }
        let clusters = bytes.div_ceil(cs);
        self.file.debug_event(DebugEvent::L1GrowAllocTable).await;
        let host = self.alloc_clusters(clusters).await?;
        self.write_back_refblocks().await?;
        let mut table = vec![0u8; (clusters * cs) as usize];
        for (i, e) in self.l1.borrow().iter().enumerate() {
            table[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file.debug_event(DebugEvent::L1GrowWriteTable).await;
        self.file
            .write(host, IoBuf::from_slice(&table), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        self.file.debug_event(DebugEvent::L1GrowActivateTable).await;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&(entries as u32).to_be_bytes());
        hdr.extend_from_slice(&host.to_be_bytes());
        self.file
            .write(OFF_L1, IoBuf::from_slice(&hdr), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await?;
        let old_off = self.l1_offset.get();
        let old_clusters = (self.l1.borrow().len() as u64 * 8).div_ceil(cs);
        self.l1_offset.set(host);
        self.l1.borrow_mut().resize(entries as usize, 0);
        if old_off != 0 && old_clusters > 0 {
            self.free_unreferenced(old_off, old_clusters).await?;
        }
        Ok(())
    }
}
