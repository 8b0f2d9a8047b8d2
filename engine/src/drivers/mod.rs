//! Drivers, one module each, registered by name.
//!
//! A driver implements only its own layer ([`BlockDriver`](crate::driver::BlockDriver)) and
//! reaches its children through the request path ([`Child`](crate::graph::Child)). Drivers never
//! import `job`, `qmp`, `engine` or one another.

mod blkdebug;
mod cor;
mod file;
mod file_io;
mod file_lock;
pub mod luks;
mod nbd;
mod null;
pub mod qcow2;
mod raw;
mod throttle;

pub use file_lock::create_host_file;

use crate::graph::GraphCtx;

/// Make every built-in driver openable by name.
pub fn register_all(ctx: &GraphCtx) {
    ctx.register_driver("file", file::open);
    ctx.register_driver("blkdebug", blkdebug::open);
    ctx.register_driver("raw", raw::open);
    ctx.register_driver("qcow2", qcow2::open);
    ctx.register_driver("luks", luks::open);
    ctx.register_driver("nbd", nbd::open);
    ctx.register_driver("null-co", null::open);
    ctx.register_driver("null-aio", null::open);
    ctx.register_driver("throttle", throttle::open);
    ctx.register_driver("copy-on-read", cor::open);
}
