//! I/O throttling (QEMU's throttle groups): the limits and their validation ([`config`]), the
//! leaky-bucket arithmetic on the env clock ([`bucket`]), and groups whose members share one
//! budget and queue requests until the buckets allow them ([`group`]). No real time: every
//! wait is a timer of the env.

pub mod bucket;
pub mod config;
pub mod group;

pub use bucket::{Direction, ThrottleState};
pub use config::{BucketConfig, ThrottleConfig, take_config};
pub use group::ThrottleGroup;
