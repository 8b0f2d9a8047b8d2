//! The `copy-before-write` filter (QEMU 6.2+): a node above the source that, before a guest
//! write, write-zeroes or discard changes a cluster the target still lacks, copies that
//! cluster's old data to the target. Opened by `blockdev-add` (fleecing: the target is an image
//! backed by the source, read by an export while the guest keeps writing) or inserted above the
//! source by a backup job, which shares the filter's [`CopyState`].
//!
//! Options: `file` (the source) and `target` (node references or inline), `on-cbw-error`
//! (`break-guest-write`, the default: the guest's request fails with the copy's error;
//! `break-snapshot`: the guest's request goes on and the snapshot is broken, nothing more is
//! copied), `cbw-timeout` (seconds a copy may take before it counts as failed; 0: no limit),
//! `min-cluster-size`, and `bitmap` (copy only what a named dirty bitmap marks: accepted by the
//! parser, refused at lookup until named bitmaps exist).
//!
//! The filtered child's edge is named "backing" (its option is `file`, as QEMU's) so chain walks
//! pass through the filter, as they do through mirror's. Part of `job/`: never names a concrete
//! driver.

use std::cell::Cell;
use std::rc::Rc;

use crate::driver::{BlockDriver, ChildDesc, DriverCaps, DriverKind, ParentPerms, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::types::{ChildRole, Perms};
use crate::util::{Either, Options, oneshot, race};

use super::copier::{self, CopyState};

/// The driver name (`blockdev-add`'s `driver`, `query-named-block-nodes`' `drv`).
pub const DRIVER: &str = "copy-before-write";

const CAPS: DriverCaps = DriverCaps {
    name: DRIVER,
    kind: DriverKind::Filter,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::FUA.union(ReqFlags::MAY_UNMAP),
    reopen: false,
};

/// What a failed copy does (`on-cbw-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCbwError {
    /// The guest's request fails with the copy's error.
    BreakGuestWrite,
    /// The guest's request goes on; the snapshot (the target) is given up.
    BreakSnapshot,
}

/// The filter's settings.
#[derive(Clone, Copy, Debug)]
pub struct CbwOptions {
    /// `on-cbw-error`.
    pub on_error: OnCbwError,
    /// `cbw-timeout` in seconds (0: none).
    pub timeout_s: u64,
}

impl Default for CbwOptions {
    fn default() -> CbwOptions {
        CbwOptions {
            on_error: OnCbwError::BreakGuestWrite,
            timeout_s: 0,
        }
    }
}

/// The filter node's driver.
pub(super) struct Cbw {
    pub(super) file: Child,
    pub(super) target: Child,
    pub(super) state: Rc<CopyState>,
    opts: CbwOptions,
    broken: Cell<bool>,
}

impl Cbw {
    /// Open the source (`file`) and target children of a filter being opened.
    pub(super) async fn open_children(
        ctx: &OpenCtx,
        file: serde_json::Value,
        target: serde_json::Value,
    ) -> Result<(Child, Child)> {
        let file = ctx
            .open_child("backing", ChildRole::FILTERED | ChildRole::PRIMARY, file)
            .await?;
        let target = ctx.open_child("target", ChildRole::DATA, target).await?;
        Ok((file, target))
    }

    /// A filter over `file` copying into `target` by `state`.
    pub(super) fn new(file: Child, target: Child, state: Rc<CopyState>, opts: CbwOptions) -> Cbw {
        Cbw {
            file,
            target,
            state,
            opts,
            broken: Cell::new(false),
        }
    }

    /// Copy what the target still lacks of `[offset, offset+bytes)` before it is overwritten.
    async fn before_write(&self, offset: u64, bytes: u64) -> Result<()> {
        if self.broken.get() || !self.state.needs_copy(offset, bytes) {
            return Ok(());
        }
        let r = if self.opts.timeout_s == 0 {
            self.state
                .copy(&self.file, &self.target, offset, bytes)
                .await
                .map(drop)
                .map_err(|(e, _)| e)
        } else {
            self.copy_with_timeout(offset, bytes).await
        };
        match (r, self.opts.on_error) {
            (Ok(()), _) => Ok(()),
            (Err(e), OnCbwError::BreakGuestWrite) => Err(e),
            (Err(_), OnCbwError::BreakSnapshot) => {
                self.broken.set(true);
                self.state.drop_todo();
                Ok(())
            }
        }
    }

    /// The copy runs as a task of its own, so a copy that outlives `cbw-timeout` keeps its
    /// clusters busy until it really ends while the guest's request gives up waiting.
    async fn copy_with_timeout(&self, offset: u64, bytes: u64) -> Result<()> {
        let (tx, rx) = oneshot();
        let (state, file, target) = (self.state.clone(), self.file.clone(), self.target.clone());
        let env = self.file.node().ctx().env().clone();
        env.spawn(
            "copy-before-write",
            Box::pin(async move {
                let r = state.copy(&file, &target, offset, bytes).await;
                tx.send(r.map(drop).map_err(|(e, _)| e));
            }),
        );
        let deadline = env
            .now_ns()
            .saturating_add(self.opts.timeout_s * 1_000_000_000);
        match race(rx, env.sleep_until(deadline)).await {
            Either::Left(Some(r)) => r,
            Either::Left(None) => Err(Error::io(Errno::EIO)),
            Either::Right(()) => Err(Error::io_msg(Errno::Other(110), "Connection timed out")),
        }
    }
}

/// `blockdev-add` with `driver: copy-before-write`.
pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let file = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        let target = opts
            .take("target")
            .ok_or_else(|| Error::param_missing("target"))?;
        let bitmap = opts.take_dict("bitmap")?;
        let on_error = match opts.take_str("on-cbw-error")?.as_deref() {
            None | Some("break-guest-write") => OnCbwError::BreakGuestWrite,
            Some("break-snapshot") => OnCbwError::BreakSnapshot,
            Some(other) => {
                return Err(Error::param_invalid(
                    "on-cbw-error",
                    format!("does not accept value '{other}'"),
                ));
            }
        };
        let timeout_s = match opts.take_i64("cbw-timeout")? {
            None => 0,
            Some(t) => u32::try_from(t)
                .map_err(|_| Error::param_invalid("cbw-timeout", "expects uint32_t"))?
                .into(),
        };
        let min_cluster = opts.take_u64("min-cluster-size")?.unwrap_or(0);
        opts.finish()?;
        let (file, target) = Cbw::open_children(&ctx, file, target).await?;
        let bitmap = match bitmap {
            Some(b) => Some(super::bitmap_seam::lookup_cbw_bitmap(ctx.graph(), b)?),
            None => None,
        };
        copier::check_cluster_size(min_cluster)?;
        let cluster = copier::cluster_size(&target.node(), min_cluster);
        let state = CopyState::new(file.len(), cluster);
        if let Some((bits, granularity)) = &bitmap {
            state.seed_from(bits, *granularity);
        }
        let cbw = Cbw::new(
            file,
            target,
            state,
            CbwOptions {
                on_error,
                timeout_s,
            },
        );
        Ok(Box::new(cbw) as Box<dyn BlockDriver>)
    })
}

impl BlockDriver for Cbw {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        crate::request::filter::filter_limits(&self.file)
    }

    fn len(&self) -> u64 {
        self.file.len()
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(self.file.read(offset, buf, flags))
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.before_write(offset, buf.len() as u64).await {
                return (buf, Err(e));
            }
            self.file.write(offset, buf, flags).await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.before_write(offset, len).await?;
            self.file.write_zeroes(offset, len, flags).await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.before_write(offset, len).await?;
            self.file.discard(offset, len).await
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // The generic path flushes the source afterwards; the target is the job's to flush.
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        filter::unallocated_status(self.len(), offset, len)
    }

    fn truncate(
        &self,
        _len: u64,
        _exact: bool,
        _prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        // The copy state covers the source's length at the start; nothing may resize it.
        Box::pin(async {
            Err(Error::io_msg(
                Errno::ENOTSUP,
                "Cannot resize a node under copy-before-write",
            ))
        })
    }

    fn child_perms(&self, child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        if child.name == "target" {
            // Written by the copies; readers (a fleecing export) and the job may share it.
            return (Perms::WRITE, Perms::ALL);
        }
        // Pass the guest's needs through, read for the copies, and let nobody resize the
        // source (the copy state covers its length at the start). WRITE stays shared: the
        // filter is opened while the device still writes the source directly, before it moves
        // onto the filter (mirror's filter shares it for the same reason).
        let pass = Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED;
        let perm = (parent.perm & pass) | Perms::CONSISTENT_READ;
        (perm, Perms::ALL & !Perms::RESIZE)
    }

    fn filename(&self) -> String {
        self.file.filename()
    }
}
