//! `null-co` / `null-aio`: a protocol driver with no storage. Writes vanish; reads return zeroes
//! with `read-zeroes=on` and leave the buffer alone otherwise; `latency-ns` delays every request
//! on the env clock. The baseline for measuring the request path's own cost.

use std::cell::Cell;
use std::rc::Rc;

use serde_json::json;

use crate::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use crate::env::{Env, LocalBoxFuture};
use crate::error::Result;
use crate::graph::OpenCtx;
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use crate::util::Options;

const CAPS: DriverCaps = DriverCaps {
    name: "null-co",
    kind: DriverKind::Protocol,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::FUA.union(ReqFlags::MAY_UNMAP),
    reopen: true,
};

struct Null {
    env: Rc<dyn Env>,
    size: Cell<u64>,
    read_zeroes: bool,
    latency_ns: u64,
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let size = opts.take_u64("size")?.unwrap_or(1 << 30);
        let read_zeroes = opts.take_bool("read-zeroes")?.unwrap_or(false);
        let latency_ns = opts.take_u64("latency-ns")?.unwrap_or(0);
        opts.finish()?;
        Ok(Box::new(Null {
            env: ctx.env(),
            size: Cell::new(size),
            read_zeroes,
            latency_ns,
        }) as Box<dyn BlockDriver>)
    })
}

impl Null {
    async fn delay(&self) {
        if self.latency_ns > 0 {
            self.env
                .sleep_until(self.env.now_ns() + self.latency_ns)
                .await;
        }
    }
}

impl BlockDriver for Null {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn reopen_prepare(&self, _read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        // No state depends on it: the permissions on the child follow the node by themselves.
        Box::pin(async { Ok(()) })
    }

    fn limits(&self) -> Limits {
        Limits::default()
    }

    fn len(&self) -> u64 {
        self.size.get()
    }

    fn read(
        &self,
        _offset: u64,
        mut buf: IoBuf,
        _flags: ReqFlags,
    ) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            self.delay().await;
            if self.read_zeroes {
                buf.as_mut_slice().fill(0);
            }
            (buf, Ok(()))
        })
    }

    fn write(&self, _offset: u64, buf: IoBuf, _flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            self.delay().await;
            (buf, Ok(()))
        })
    }

    fn write_zeroes(
        &self,
        _offset: u64,
        _len: u64,
        _flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.delay().await;
            Ok(())
        })
    }

    fn discard(&self, _offset: u64, _len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.delay().await;
            Ok(())
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        let mapping = if self.read_zeroes {
            Mapping::Zero { host: Some(offset) }
        } else {
            Mapping::Data { host: Some(offset) }
        };
        Box::pin(async move { Ok(BlockStatus { len, mapping }) })
    }

    fn truncate(
        &self,
        len: u64,
        _exact: bool,
        _prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        self.size.set(len);
        Box::pin(async { Ok(()) })
    }

    fn filename(&self) -> String {
        "null-co://".to_string()
    }

    fn specific_info(&self) -> serde_json::Value {
        json!({"read-zeroes": self.read_zeroes, "latency-ns": self.latency_ns})
    }
}
