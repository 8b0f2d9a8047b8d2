//! qcow2 compressed writes (`ReqFlags::WRITE_COMPRESSED`: qemu-io `write -c`, convert `-c`):
//! each whole guest cluster, or the image's last partial one padded with zeroes, is
//! compressed and packed into host clusters shared with other compressed clusters
//! (`alloc_bytes`: a host cluster holds one reference per compressed cluster in it). A cluster
//! that does not shrink below a cluster is written normally. Only a cluster without host data
//! (unallocated, or zero-flagged without a preallocated cluster) may be written compressed;
//! anything else is an I/O error, as in QEMU. An external data file refuses compression.
//!
//! The order differs from QEMU's on purpose: the compressed bytes are written before the L2
//! entry points at them. QEMU sets the cached entry first, so a metadata flush racing the data
//! write could make durable an entry pointing at bytes never written; here a crash leaves at
//! worst a leaked reference, which `check -r leaks` repairs.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::driver::Prealloc;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{BufResult, IoBuf, ReqFlags};

use super::entry::{L2Entry, OFFSET_MASK};
use super::overlap::c_hex;
use super::units::{GuestOffset, HostOffset};
use super::{Qcow2, compress};

impl Qcow2 {
    /// Write `buf` at `offset` compressed, cluster by cluster. A zero-length write pads the
    /// file to a whole sector (what qemu-img convert `-c` ends with, so that the last
    /// compressed cluster's last sector exists).
    pub(crate) async fn do_write_compressed(&self, offset: u64, buf: IoBuf) -> BufResult {
        let r = self.write_compressed_range(offset, buf.as_slice()).await;
        (buf, r)
    }

    async fn write_compressed_range(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.encrypted() {
            // QEMU fails a compressed write to an encrypted image with a bare EIO.
            return Err(Error::io(Errno::EIO));
        }
        if self.has_data_file() {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                "qcow2: compressed writes are not possible with an external data file",
            ));
        }
        let (cs, len) = (self.layout.cs(), data.len() as u64);
        if len == 0 {
            return self.pad_file_to_sector().await;
        }
        let ends_image = offset + len == self.layout.size.get();
        if !offset.is_multiple_of(cs) || (!len.is_multiple_of(cs) && !ends_image) {
            return Err(Error::io_msg(
                Errno::EINVAL,
                format!(
                    "qcow2: a compressed write must cover whole clusters of {cs} bytes (or end \
                     at the end of the image): offset {offset}, length {len}"
                ),
            ));
        }
        for (i, chunk) in data.chunks(cs as usize).enumerate() {
            self.write_compressed_cluster(offset + i as u64 * cs, chunk)
                .await?;
        }
        Ok(())
    }

    /// One guest cluster at `off` (cluster aligned), `chunk` its bytes (short only at the end of
    /// the image).
    async fn write_compressed_cluster(&self, off: u64, chunk: &[u8]) -> Result<()> {
        let (cs, bits) = (self.layout.cs(), self.layout.cluster_bits);
        let gc = GuestOffset::new(off).cluster(bits);
        let _range = self.ranges.lock(gc.index(), gc.index() + 1, true).await;
        let mut whole = chunk.to_vec();
        whole.resize(cs as usize, 0);
        // What needs a whole cluster (or more) gains nothing: QEMU's limit is one byte less.
        let packed =
            compress::compress_cluster(self.layout.compression_type, &whole, cs as usize - 1)?;
        let Some(packed) = packed else {
            return self.write_from(off, chunk).await;
        };
        let n = packed.len() as u64;
        let host = {
            let held = &self.meta.lock().await;
            let entry = self.l2_entry(held, gc).await?;
            if entry.raw() & OFFSET_MASK != 0 {
                return Err(Error::io_msg(
                    Errno::EIO,
                    format!(
                        "qcow2: compressed data cannot overwrite the allocated cluster at guest \
                         offset {}",
                        c_hex(off)
                    ),
                ));
            }
            self.ensure_l2(held, gc).await?;
            self.alloc_bytes(held, n).await?
        };
        let written = match self.pre_write_check(0, host.bytes(), n).await {
            Ok(()) => {
                self.file.debug_event(DebugEvent::WriteCompressed).await;
                self.file
                    .write(host.bytes(), IoBuf::from_slice(&packed), ReqFlags::NONE)
                    .await
                    .1
            }
            Err(e) => Err(e),
        };
        let held = &self.meta.lock().await;
        let first = host.cluster(bits);
        let clusters =
            HostOffset::new(host.bytes() + n - 1).cluster(bits).index() + 1 - first.index();
        if let Err(e) = written {
            self.free_unreferenced(held, first, clusters).await?;
            return Err(e);
        }
        let Some(entry) = L2Entry::compressed_at(host, n, bits) else {
            self.free_unreferenced(held, first, clusters).await?;
            return Err(Error::io_msg(
                Errno::ENOSPC,
                format!("qcow2: host offset {host:#x} is too large for a compressed cluster"),
            ));
        };
        self.file.debug_event(DebugEvent::L2UpdateCompressed).await;
        self.set_l2_entry(held, gc, entry).await
    }

    /// Grow the image file to a whole number of sectors.
    async fn pad_file_to_sector(&self) -> Result<()> {
        let len = self.file.len();
        if len.is_multiple_of(512) {
            return Ok(());
        }
        self.file
            .truncate(len.next_multiple_of(512), false, Prealloc::Off)
            .await
    }
}
