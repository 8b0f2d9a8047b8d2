//! Pass-through for filter drivers, whose one filtered child provides every byte (blkdebug,
//! the jobs' `commit_top` and `mirror_top`; raw's file name too): written once here instead of
//! in each filter.

use crate::driver::{DriverCaps, DriverKind, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::graph::Child;
use crate::io::{BlockStatus, Limits, Mapping, ReqFlags};

impl Child {
    /// The file name a node that is a view of this child shows (filters, raw).
    pub fn filename(&self) -> String {
        self.node().driver().filename()
    }
}

/// The limits of a filter over `child`: the child's, except that any byte alignment is taken
/// (the child's own request path pads what it needs).
pub fn filter_limits(child: &Child) -> Limits {
    Limits {
        request_align: 1,
        ..child.node().limits()
    }
}

/// Block status of a filter that allocates nothing itself: at most `len` bytes at `offset` of
/// a filter `filter_len` bytes long (at least one byte, so a walk always advances) are
/// unallocated here, so a chain walk continues into the filtered child.
pub fn unallocated_status(
    filter_len: u64,
    offset: u64,
    len: u64,
) -> LocalBoxFuture<'static, Result<BlockStatus>> {
    let len = len.min(filter_len.saturating_sub(offset)).max(1);
    Box::pin(async move {
        Ok(BlockStatus {
            len,
            mapping: Mapping::Unallocated,
        })
    })
}

/// A filter's resize: passed on to the filtered child.
pub fn truncate_filtered(
    child: &Child,
    len: u64,
    exact: bool,
    prealloc: Prealloc,
) -> LocalBoxFuture<'_, Result<()>> {
    Box::pin(child.truncate(len, exact, prealloc))
}

/// The capabilities of a filter that passes every request flag down unchanged (the child's
/// generic path emulates what its driver lacks) and cannot be reopened.
pub const fn passthrough_caps(name: &'static str) -> DriverCaps {
    DriverCaps {
        name,
        kind: DriverKind::Filter,
        supports_backing: false,
        write_flags: ReqFlags::FUA.union(ReqFlags::WRITE_UNCHANGED),
        zero_flags: ReqFlags::FUA
            .union(ReqFlags::MAY_UNMAP)
            .union(ReqFlags::NO_FALLBACK)
            .union(ReqFlags::WRITE_UNCHANGED),
        reopen: false,
    }
}
