//! `file`: a protocol driver on a host file, through the env's `HostFs` (io_uring or a worker
//! pool in production, the virtual disk in the simulator).
//!
//! Cache modes come as QEMU defines them: `cache.direct` opens with `O_DIRECT` (and the node's
//! alignment becomes the device's), `cache.no-flush` is handled by the generic flush path, and
//! writeback vs writethrough is the BlockBackend's business. Holes are reported by the host's
//! allocation query, so `map` shows sparse files as zeroes.
//!
//! Reads and writes go through `file_io.rs`, which completes short transfers and retries
//! transient errors. A failed flush of a file that goes through the host page cache poisons the
//! handle (as QEMU's file-posix does): the kernel may have dropped the dirty pages or marked them
//! clean without writing them ("fsync-gate"), so no later flush may claim they are durable; every
//! later flush fails with the same error until the node is opened again (a reopen keeps it, as
//! QEMU keeps it across reopens).
//!
//! Image locks (`file_lock.rs`) follow the node's permissions through `perm_prepare`/`commit`/
//! `abort`, as QEMU's file-posix locks follow its permissions; `locking=off` turns them off.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::file_io::{read_full, write_full};
use super::file_lock::ImageLocks;
use crate::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use crate::env::{Allocation, HostFile, LocalBoxFuture, OpenOptions};
use crate::error::{Errno, Error, Result};
use crate::graph::OpenCtx;
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use crate::util::Options;

const CAPS: DriverCaps = DriverCaps {
    name: "file",
    kind: DriverKind::Protocol,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::FUA.union(ReqFlags::MAY_UNMAP),
    reopen: true,
};

/// Largest zero buffer written when preallocating with `full`.
const FULL_PREALLOC_CHUNK: u64 = 1 << 20;

struct File {
    path: String,
    /// The host handle. A reopen swaps it for one opened with the new access mode; requests
    /// clone the `Rc` and so keep the handle they started with alive until they end.
    file: RefCell<Rc<dyn HostFile>>,
    /// The handle `reopen_prepare` opened, installed by `reopen_commit`.
    staged: RefCell<Option<Rc<dyn HostFile>>>,
    /// `cache.direct`: a reopened handle bypasses the page cache too.
    direct: bool,
    env: Rc<dyn crate::env::Env>,
    /// Cached length: updated by writes past the end and by truncate.
    size: Cell<u64>,
    align: u32,
    /// The error of a failed flush through the page cache: every later flush fails with it.
    flush_poisoned: Cell<Option<Errno>>,
    /// QEMU's image locks on the host file.
    locks: ImageLocks,
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let path = opts.require_str("filename")?;
        // The host I/O mechanism is decided by the environment; its options are accepted (and
        // validated) so that QEMU command lines work unchanged.
        if let Some(aio) = opts.take_str("aio")?
            && !matches!(aio.as_str(), "threads" | "native" | "io_uring")
        {
            return Err(Error::param_invalid(
                "aio",
                format!("does not accept value '{aio}' (expected threads, native or io_uring)"),
            ));
        }
        let locking = opts.take_str("locking")?;
        if let Some(locking) = &locking
            && !matches!(locking.as_str(), "auto" | "on" | "off")
        {
            return Err(Error::param_invalid(
                "locking",
                format!("does not accept value '{locking}' (expected auto, on or off)"),
            ));
        }
        let _ = opts.take_u64("aio-max-batch")?;
        let _ = opts.take_bool("drop-cache")?;
        opts.finish()?;
        let node = ctx.options();
        let open_opts = OpenOptions {
            write: !node.read_only,
            direct: node.direct,
            ..Default::default()
        };
        let env = ctx.env();
        let file = env
            .fs()
            .open(&path, open_opts)
            // The host file is the node's `filename` option (a parent names it "file.filename").
            .map_err(|e| e.could_not_open(&path).option("filename"))?;
        let size = file.len()?;
        let locks = ImageLocks::open(&*env, &path, locking.as_deref())
            .map_err(|e| e.could_not_open(&path).option("filename"))?;
        let align = if node.direct {
            file.direct_align().max(1)
        } else {
            1
        };
        Ok(Box::new(File {
            path,
            file: RefCell::new(file),
            staged: RefCell::new(None),
            direct: node.direct,
            env: env.clone(),
            size: Cell::new(size),
            align,
            flush_poisoned: Cell::new(None),
            locks,
        }) as Box<dyn BlockDriver>)
    })
}

impl File {
    /// The current host handle (cloned so that no borrow is held across an await).
    fn host(&self) -> Rc<dyn HostFile> {
        self.file.borrow().clone()
    }

    fn grew_to(&self, end: u64) {
        if end > self.size.get() {
            self.size.set(end);
        }
    }

    /// Flush the host file, unless an earlier flush failure poisoned it (see the module doc).
    async fn flush_host(&self, file: &dyn HostFile) -> Result<()> {
        if let Some(errno) = self.flush_poisoned.get() {
            // The caller sees what QEMU's guest sees: the errno of the failure, again.
            return Err(Error::io(errno));
        }
        let r = file.flush().await;
        if let Err(e) = &r
            && !self.direct
        {
            self.flush_poisoned
                .set(Some(e.errno().unwrap_or(Errno::EIO)));
        }
        r
    }
}

impl BlockDriver for File {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        Limits {
            request_align: self.align,
            min_mem_align: self.align,
            ..Limits::default()
        }
    }

    fn len(&self) -> u64 {
        // As QEMU does, a file's length is counted in whole 512-byte sectors: the tail of a
        // file whose size is not a multiple of 512 reads as zeroes (a 320-byte raw image is a
        // 512-byte disk; writing there grows the file).
        self.size.get().next_multiple_of(512)
    }

    fn read(&self, offset: u64, buf: IoBuf, _flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        let file = self.host();
        Box::pin(async move { read_full(&*file, buf, offset).await })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let end = offset + buf.len() as u64;
            let file = self.host();
            let (buf, r) = write_full(&*file, buf, offset, flags.contains(ReqFlags::FUA)).await;
            if r.is_ok() {
                self.grew_to(end);
            }
            (buf, r)
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let file = self.host();
            file.write_zeroes(offset, len, flags.contains(ReqFlags::MAY_UNMAP))
                .await?;
            self.grew_to(offset + len);
            if flags.contains(ReqFlags::FUA) {
                self.flush_host(&*file).await?;
            }
            Ok(())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        // Never punch past the end: that would not change the size but is pointless work.
        let len = len.min(self.size.get().saturating_sub(offset));
        Box::pin(async move {
            if len == 0 {
                Ok(())
            } else {
                self.host().discard(offset, len).await
            }
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        let file = self.host();
        Box::pin(async move { self.flush_host(&*file).await })
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.host().allocated_bytes()
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            let eof = self.size.get();
            if offset >= eof {
                // The sector-rounded tail past the host file's end reads as zeroes.
                return Ok(BlockStatus {
                    len,
                    mapping: Mapping::Zero { host: Some(offset) },
                });
            }
            let len = len.min(eof - offset);
            let (alloc, n) = self.host().allocation(offset, len).await?;
            let mapping = match alloc {
                Allocation::Data => Mapping::Data { host: Some(offset) },
                Allocation::Hole => Mapping::Zero { host: Some(offset) },
            };
            Ok(BlockStatus {
                len: n.clamp(1, len),
                mapping,
            })
        })
    }

    fn truncate(
        &self,
        len: u64,
        _exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let old = self.size.get();
            let file = self.host();
            match prealloc {
                Prealloc::Off => file.set_len(len).await?,
                Prealloc::Falloc => {
                    file.set_len(len).await?;
                    if len > old {
                        file.preallocate(old, len - old).await?;
                    }
                }
                Prealloc::Full => {
                    file.set_len(len).await?;
                    let mut pos = old;
                    while pos < len {
                        let n = FULL_PREALLOC_CHUNK.min(len - pos);
                        let (_, r) = write_full(&*file, IoBuf::new(n as usize), pos, false).await;
                        r?;
                        pos += n;
                    }
                }
                Prealloc::Metadata => {
                    return Err(Error::generic("Unsupported preallocation mode: metadata"));
                }
            }
            self.size.set(len);
            Ok(())
        })
    }

    fn perm_prepare(&self, perm: crate::types::Perms, shared: crate::types::Perms) -> Result<()> {
        self.locks.prepare(perm, shared)
    }

    fn perm_commit(&self) {
        self.locks.commit();
    }

    fn perm_abort(&self) {
        self.locks.abort();
    }

    fn reopen_prepare(&self, read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // A second handle with the new access mode; the old one serves until commit, so an
            // abort only drops the new one. Opening for writing is where a host file that may
            // not be written fails the reopen.
            let opts = OpenOptions {
                write: !read_only,
                direct: self.direct,
                ..Default::default()
            };
            let file = self
                .env
                .fs()
                .open(&self.path, opts)
                .map_err(|e| e.could_not_open(&self.path))?;
            *self.staged.borrow_mut() = Some(file);
            Ok(())
        })
    }

    fn reopen_commit(&self) {
        if let Some(file) = self.staged.borrow_mut().take() {
            *self.file.borrow_mut() = file;
        }
    }

    fn reopen_abort(&self) {
        self.staged.borrow_mut().take();
    }

    fn filename(&self) -> String {
        self.path.clone()
    }
}
