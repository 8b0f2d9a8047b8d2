//! `copy-on-read`: a filter whose reads first copy into `file` whatever `file` does not
//! allocate itself from its backing chain, so a guest reading through an overlay populates it.
//! The copy is the request path's `populate`, the same one the device option (`copy_on_read`
//! of a backend, qemu-io `-C`) and the stream job use. Everything else passes through.

use crate::driver::default_child_perms;
use crate::driver::{BlockDriver, ChildDesc, DriverCaps, ParentPerms, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::types::{ChildRole, Perms};
use crate::util::Options;

const CAPS: DriverCaps = filter::passthrough_caps("copy-on-read");

struct CopyOnRead {
    file: Child,
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let file_spec = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        opts.finish()?;
        let role = ChildRole::FILTERED | ChildRole::PRIMARY;
        let file = ctx.open_child("file", role, file_spec).await?;
        Ok(Box::new(CopyOnRead { file }) as Box<dyn BlockDriver>)
    })
}

impl BlockDriver for CopyOnRead {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        filter::filter_limits(&self.file)
    }

    fn len(&self) -> u64 {
        self.file.len()
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.file.populate(offset, buf.len() as u64).await {
                return (buf, Err(e));
            }
            self.file.read(offset, buf, flags).await
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(self.file.write(offset, buf, flags))
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.file.write_zeroes(offset, len, flags))
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.file.discard(offset, len))
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // Nothing cached here; the generic path flushes `file`.
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(self.file.block_status(offset, len))
    }

    fn truncate(
        &self,
        len: u64,
        exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        filter::truncate_filtered(&self.file, len, exact, prealloc)
    }

    fn child_perms(&self, child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        // Reads write what they copy (unchanged data) into the child.
        let (perm, shared) = default_child_perms(child, parent);
        if perm.contains(Perms::CONSISTENT_READ) {
            (perm | Perms::WRITE_UNCHANGED, shared)
        } else {
            (perm, shared)
        }
    }

    fn filename(&self) -> String {
        self.file.filename()
    }
}
