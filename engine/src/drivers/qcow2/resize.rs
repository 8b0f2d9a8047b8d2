//! qcow2 resize: growing the virtual size (moving to a larger L1 table, switched in by one
//! header write once it is durable) and shrinking over an unallocated tail.
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::cluster::Kind;
use super::header::{MAX_L1_BYTES, OFF_L1, OFF_SIZE};

impl Qcow2 {
    pub(crate) async fn do_truncate(&self, len: u64) -> Result<()> {
        if !len.is_multiple_of(512) {
            return Err(Error::generic(
                "qcow2: the image size must be a multiple of 512 bytes",
            ));
        }
        let _g = self.meta.lock().await;
        let cs = self.cs();
        let old = self.size.get();
        let per_l1 = cs * self.l2_entries();
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
