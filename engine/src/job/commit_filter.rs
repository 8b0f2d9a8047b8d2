//! The commit job's filter node (`commit_top`), inserted above the top image while an
//! intermediate commit runs, as QEMU 5.x does.
//!
//! Its one child is named "backing" so that chain walks (block status, the backing file shown
//! by `query-named-block-nodes`) pass through it. Why it exists: the overlay above the top only
//! reads its backing file and does not let others write it; below the filter the chain must
//! accept the job's writes into the base. The filter reads for the overlay and shares every
//! permission on the top, so the images between the top and the base may be written (the base)
//! and resized while the job runs. Nothing writes through it.
//!
//! Job-private: created with `graph::open_internal_node`, not openable by `blockdev-add`.

use crate::driver::{BlockDriver, ChildDesc, DriverCaps, DriverKind, ParentPerms, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::types::{ChildRole, Perms};

/// The driver name QMP shows for the filter.
pub const DRIVER: &str = "commit_top";

const CAPS: DriverCaps = DriverCaps {
    name: DRIVER,
    kind: DriverKind::Filter,
    supports_backing: true,
    write_flags: ReqFlags::NONE,
    zero_flags: ReqFlags::NONE,
    reopen: false,
};

struct CommitTop {
    child: Child,
}

/// Open the filter on the node named `top`.
pub(crate) fn build(
    ctx: OpenCtx,
    top: String,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let child = ctx
            .open_child(
                "backing",
                ChildRole::COW | ChildRole::FILTERED | ChildRole::PRIMARY,
                serde_json::Value::String(top),
            )
            .await?;
        Ok(Box::new(CommitTop { child }) as Box<dyn BlockDriver>)
    })
}

fn refuse(what: &str) -> Error {
    Error::io_msg(
        Errno::EPERM,
        format!("The commit filter does not accept {what} requests"),
    )
}

impl BlockDriver for CommitTop {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        self.child.node().limits()
    }

    fn len(&self) -> u64 {
        self.child.len()
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(self.child.read(offset, buf, flags))
    }

    fn write(&self, _offset: u64, buf: IoBuf, _flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { (buf, Err(refuse("write"))) })
    }

    fn write_zeroes(
        &self,
        _offset: u64,
        _len: u64,
        _flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Err(refuse("write-zeroes")) })
    }

    fn discard(&self, _offset: u64, _len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Err(refuse("discard")) })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // The generic path flushes the child afterwards.
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        // Nothing is allocated here: chain walks continue into the top image.
        filter::unallocated_status(self.len(), offset, len)
    }

    fn truncate(
        &self,
        _len: u64,
        _exact: bool,
        _prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Err(refuse("resize")) })
    }

    fn child_perms(&self, _child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        // Read for the overlay; let the job write below.
        (parent.perm & Perms::CONSISTENT_READ, Perms::ALL)
    }

    fn filename(&self) -> String {
        self.child.filename()
    }
}
