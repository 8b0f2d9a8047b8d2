//! Pure single-threaded helpers: wait queues, one-shot channels, a yield point, range math.
//!
//! Leaf module: imports nothing from the engine but `error`.

pub mod getopt;
mod notify;
mod oneshot;
mod options;
pub mod planted;
mod race;
mod ratelimit;
mod size;
mod tracked;

pub use notify::{Notify, yield_now};
pub use oneshot::{OneshotReceiver, OneshotSender, oneshot};
pub use options::{Options, parse_on_off, split_options};
pub use race::{Either, join, race};
pub use ratelimit::{RateLimit, SLICE_NS};
pub use size::{NumError, is_c_space, parse_size, strtosz};
pub use tracked::{Tracked, TrackedRanges};

/// True when `[a, a+alen)` and `[b, b+blen)` overlap.
pub fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// Round `x` down to a multiple of `align` (a power of two).
pub fn align_down(x: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    x & !(align - 1)
}

/// Round `x` up to a multiple of `align` (a power of two).
pub fn align_up(x: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (x + align - 1) & !(align - 1)
}

/// True when `x` is a multiple of `align` (a power of two).
pub fn is_aligned(x: u64, align: u64) -> bool {
    x & (align - 1) == 0
}
