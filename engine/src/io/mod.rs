//! I/O vocabulary shared by every layer: owned aligned buffers, request flags, limits, and the
//! block-status mapping a driver reports.
//!
//! Imports only `error`; everything in the engine may import it.

mod buf;
mod flags;
mod limits;
mod mapping;
mod pool;

pub use buf::{BufResult, DEFAULT_BUF_ALIGN, IoBuf, is_zero};
pub use flags::ReqFlags;
pub use limits::Limits;
pub use mapping::{BlockStatus, Mapping};
