//! `throttle`: a filter whose requests pass a throttle group (`throttle-group=ID`, an object
//! created before) before they reach `file`. Reads count in the read buckets; writes,
//! write-zeroes and discards in the write buckets (QEMU counts the latter two as writes of
//! their length). Queued requests are released by the group's timers, and at once when the node
//! is drained.

use std::rc::Rc;

use crate::driver::{BlockDriver, DriverCaps, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::throttle::{Direction, ThrottleGroup};
use crate::types::ChildRole;
use crate::util::Options;

const CAPS: DriverCaps = filter::passthrough_caps("throttle");

struct Throttle {
    file: Child,
    group: Rc<ThrottleGroup>,
    member: u64,
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let group_id = opts.require_str("throttle-group")?;
        let file_spec = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        opts.finish()?;
        let group =
            ctx.graph().objects.throttle_group(&group_id).map_err(|_| {
                Error::generic(format!("Throttle group '{group_id}' does not exist"))
            })?;
        let role = ChildRole::FILTERED | ChildRole::PRIMARY;
        let file = ctx.open_child("file", role, file_spec).await?;
        let member = group.join();
        Ok(Box::new(Throttle {
            file,
            group,
            member,
        }) as Box<dyn BlockDriver>)
    })
}

impl Throttle {
    async fn pass(&self, dir: Direction, bytes: u64) {
        self.group.intercept(self.member, dir, bytes).await;
    }
}

impl BlockDriver for Throttle {
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
            self.pass(Direction::Read, buf.len() as u64).await;
            self.file.read(offset, buf, flags).await
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            self.pass(Direction::Write, buf.len() as u64).await;
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
            self.pass(Direction::Write, len).await;
            self.file.write_zeroes(offset, len, flags).await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.pass(Direction::Write, len).await;
            self.file.discard(offset, len).await
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // Not throttled (as in QEMU); the generic path flushes `file`.
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

    fn drain_begin(&self) {
        self.group.drain_begin(self.member);
    }

    fn drain_end(&self) {
        self.group.drain_end(self.member);
    }

    fn close(&self) -> LocalBoxFuture<'_, Result<()>> {
        self.group.leave(self.member);
        Box::pin(async { Ok(()) })
    }

    fn filename(&self) -> String {
        self.file.filename()
    }
}
