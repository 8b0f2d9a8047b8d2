//! `raw`: the image is the bytes of its `file` child, optionally a window of it (`offset`,
//! `size`). Without a window it is a pure filter of its child.

use serde_json::json;

use crate::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use crate::types::ChildRole;
use crate::util::Options;

const CAPS: DriverCaps = DriverCaps {
    name: "raw",
    kind: DriverKind::Format,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::FUA.union(ReqFlags::MAY_UNMAP),
    reopen: true,
};

struct Raw {
    file: Child,
    offset: u64,
    /// Fixed size of the window, if one was given.
    size: Option<u64>,
    /// The format was guessed, not given (`x-probed`, set by the tools that probe): block 0
    /// must never be written so that it probes as another format.
    probed: bool,
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let offset = opts.take_u64("offset")?.unwrap_or(0);
        let size = opts.take_u64("size")?;
        let probed = opts.take_bool("x-probed")?.unwrap_or(false);
        let file_spec = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        opts.finish()?;
        if let Some(s) = size
            && s % 512 != 0
        {
            return Err(Error::generic(format!(
                "Specified size {s} is not a multiple of 512"
            )));
        }
        let windowed = offset != 0 || size.is_some();
        let role = if windowed {
            ChildRole::DATA | ChildRole::PRIMARY
        } else {
            ChildRole::DATA | ChildRole::PRIMARY | ChildRole::FILTERED
        };
        let file = ctx.open_child("file", role, file_spec).await?;
        let file_len = file.len();
        if offset > file_len {
            return Err(Error::generic(format!(
                "Offset {offset} cannot be greater than the size of the file ({file_len})"
            )));
        }
        if let Some(s) = size
            && offset + s > file_len
        {
            return Err(Error::generic(format!(
                "The sum of offset ({offset}) and size ({s}) has to be smaller or equal to the \
                     actual size of the containing file ({file_len})"
            )));
        }
        Ok(Box::new(Raw {
            file,
            offset,
            size,
            probed,
        }) as Box<dyn BlockDriver>)
    })
}

impl Raw {
    /// Refuse requests that leave a fixed window (a guest must not reach past it).
    fn check_window(&self, offset: u64, len: u64, is_write: bool) -> Result<()> {
        match self.size {
            Some(size) if offset > size || len > size - offset => Err(Error::io_msg(
                if is_write {
                    Errno::ENOSPC
                } else {
                    Errno::EINVAL
                },
                format!("Request at {offset}+{len} leaves the raw window of {size} bytes"),
            )),
            _ => Ok(()),
        }
    }
}

impl BlockDriver for Raw {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn reopen_prepare(&self, _read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        // No state depends on it: the permissions on the child follow the node by themselves.
        Box::pin(async { Ok(()) })
    }

    fn limits(&self) -> Limits {
        // raw is byte-granular: it passes requests through unchanged, and the node that really
        // needs alignment (file with O_DIRECT, blkdebug's `align`) pads them itself, where its
        // own read-modify-write is tracked and its debug events fire (as in QEMU).
        // A probed image is the exception: whole probe blocks, so that a write reaching block
        // 0 shows the driver everything block 0 will hold (QEMU does the same).
        let request_align = if self.probed {
            crate::probe::PROBE_BYTES as u32
        } else {
            1
        };
        Limits {
            request_align: request_align.max(1),
            ..self.file.node().limits()
        }
    }

    fn len(&self) -> u64 {
        self.size
            .unwrap_or_else(|| self.file.len().saturating_sub(self.offset))
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.check_window(offset, buf.len() as u64, false) {
                return (buf, Err(e));
            }
            self.file.debug_event(DebugEvent::ReadAio).await;
            self.file.read(offset + self.offset, buf, flags).await
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.check_window(offset, buf.len() as u64, true) {
                return (buf, Err(e));
            }
            if self.probed && crate::probe::write_would_change_format(offset, buf.as_slice()) {
                let msg = "Writing a format signature into block 0 of an image whose format was \
                           probed as raw";
                return (buf, Err(Error::io_msg(Errno::EPERM, msg)));
            }
            self.file.debug_event(DebugEvent::WriteAio).await;
            self.file.write(offset + self.offset, buf, flags).await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_window(offset, len, true)?;
            self.file
                .write_zeroes(offset + self.offset, len, flags)
                .await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_window(offset, len, true)?;
            self.file.discard(offset + self.offset, len).await
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // Nothing cached at this layer; the generic path flushes `file`.
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            let status = self.file.block_status(offset + self.offset, len).await?;
            // The file's allocation is the raw image's, at the same offsets (shifted).
            let mapping = match status.mapping {
                Mapping::Zero { .. } => Mapping::Zero {
                    host: Some(offset + self.offset),
                },
                _ => Mapping::Data {
                    host: Some(offset + self.offset),
                },
            };
            Ok(BlockStatus {
                len: status.len,
                mapping,
            })
        })
    }

    fn truncate(
        &self,
        len: u64,
        exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.offset != 0 || self.size.is_some() {
                return Err(Error::io_msg(
                    Errno::ENOTSUP,
                    "Cannot resize fixed-size raw disks",
                ));
            }
            self.file.truncate(len, exact, prealloc).await
        })
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn specific_info(&self) -> serde_json::Value {
        match (self.offset, self.size) {
            (0, None) => serde_json::Value::Null,
            (o, s) => json!({"offset": o, "size": s}),
        }
    }
}
