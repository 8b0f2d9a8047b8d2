//! Test binary `graph_io`: graph, permissions, drain, the request path, BlockBackend error policies, blkdebug, lifecycle, QMP, the file driver over short and interrupted host I/O, image locks on real files, blkdebug events, throttling, the copy-on-read filter.
//! Each file below was its own test crate; it is a module here (see engine/Cargo.toml).

// Shared helpers, loaded once for the whole binary; test files `use crate::` them.
mod support;

#[path = "backend_errors.rs"]
mod backend_errors;
#[path = "bitmaps.rs"]
mod bitmaps;
#[path = "blkdebug.rs"]
mod blkdebug;
#[path = "copy_on_read.rs"]
mod copy_on_read;
#[path = "debug_events.rs"]
mod debug_events;
#[path = "drain.rs"]
mod drain;
#[path = "errors.rs"]
mod errors;
#[path = "file_partial_io.rs"]
mod file_partial_io;
#[path = "graph_perms.rs"]
mod graph_perms;
#[path = "image_locks.rs"]
mod image_locks;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "qmp.rs"]
mod qmp;
#[path = "request_path.rs"]
mod request_path;
#[path = "throttle.rs"]
mod throttle;
