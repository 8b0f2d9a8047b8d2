//! The mirror-top filter: a job-private node inserted above the mirror's source (QEMU's
//! `mirror_top`). Guest I/O passes through it to the source; every write, write-zeroes and
//! discard marks the dirty bitmap once it completed on the source, and in write-blocking mode a
//! write or write-zeroes reaches the target too before the guest sees it complete.
//!
//! Its filtered child is named "backing" so chain walks (block status through the backing
//! chain) pass through it. In write-blocking mode it also has an edge "target" to the target
//! that takes no permission: it makes the filter a parent of the target, so a drained target
//! quiesces the guest device above the filter and no synchronous copy reaches a drained target.
//! The synchronous writes themselves go through the job's target edge.
//!
//! Part of `job/`: never names a concrete driver.

use std::rc::Rc;

use crate::driver::{BlockDriver, ChildDesc, DriverCaps, DriverKind, ParentPerms, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::graph::Child;
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::types::Perms;

use super::state::{CopyMode, MirrorState};

/// The driver name shown in `query-named-block-nodes`.
pub const FILTER_DRIVER: &str = "mirror_top";

const CAPS: DriverCaps = DriverCaps {
    name: FILTER_DRIVER,
    kind: DriverKind::Filter,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::FUA.union(ReqFlags::MAY_UNMAP),
    reopen: false,
};

pub(super) struct MirrorTop {
    pub(super) child: Child,
    pub(super) state: Rc<MirrorState>,
}

impl MirrorTop {
    fn write_blocking(&self) -> Option<Child> {
        if self.state.copy_mode == CopyMode::WriteBlocking {
            self.state.target.borrow().clone()
        } else {
            None
        }
    }

    /// Run `source_op` on the source, then (write-blocking) `target_op` on the target, keeping
    /// the granules busy for both so overlapping copies and guest writes stay ordered.
    async fn mirrored<T>(
        &self,
        offset: u64,
        bytes: u64,
        source_op: impl AsyncFnOnce() -> (T, Result<()>),
        target_op: impl AsyncFnOnce(T, Child) -> (T, Result<()>),
    ) -> (T, Result<()>) {
        let Some(target) = self.write_blocking() else {
            let (t, r) = source_op().await;
            // Marked after the source has the data: a copy that read it too early is followed
            // by another one. Failed writes are marked as well: part of them may have landed.
            if !crate::util::planted::on(crate::util::planted::Bug::MirrorForgetsDirty) {
                self.state.mark_dirty(offset, bytes);
            }
            return (t, r);
        };
        let st = &self.state;
        st.acquire(offset, bytes).await;
        let (t, r) = source_op().await;
        if r.is_err() {
            st.mark_dirty(offset, bytes);
            st.release(offset, bytes);
            return (t, r);
        }
        let (t, tr) = target_op(t, target).await;
        if tr.is_ok() {
            st.clear_covered(offset, bytes);
        } else {
            // The guest's write succeeded on the source; the copy loop retries the target and
            // applies on-target-error there.
            st.mark_dirty(offset, bytes);
        }
        st.release(offset, bytes);
        (t, r)
    }
}

impl BlockDriver for MirrorTop {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        crate::request::filter::filter_limits(&self.child)
    }

    fn len(&self) -> u64 {
        self.child.len()
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { self.child.read(offset, buf, flags).await })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let bytes = buf.len() as u64;
            self.mirrored(
                offset,
                bytes,
                async move || self.child.write(offset, buf, flags).await,
                async |buf, target: Child| target.write(offset, buf, flags).await,
            )
            .await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.mirrored(
                offset,
                len,
                async || ((), self.child.write_zeroes(offset, len, flags).await),
                async |(), target: Child| ((), target.write_zeroes(offset, len, flags).await),
            )
            .await
            .1
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // A discard may or may not zero the source: the copy loop looks at what the source
            // reads as afterwards.
            let r = self.child.discard(offset, len).await;
            self.state.mark_dirty(offset, len);
            r
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        // Nothing is allocated in the filter itself: the filtered ("backing") child provides
        // every byte.
        filter::unallocated_status(self.len(), offset, len)
    }

    fn truncate(
        &self,
        len: u64,
        exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        filter::truncate_filtered(&self.child, len, exact, prealloc)
    }

    fn child_perms(&self, child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        if child.name == "target" {
            // Only there for drain propagation.
            return (Perms::NONE, Perms::ALL);
        }
        // Forward what the guest needs and share everything: the job decides what else may use
        // the source (as QEMU's filter does, so an active commit may write below it).
        let pass = Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED;
        (parent.perm & pass, Perms::ALL)
    }

    fn filename(&self) -> String {
        self.child.filename()
    }
}
