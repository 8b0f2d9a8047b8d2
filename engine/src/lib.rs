//! # engine — the blk block engine
//!
//! A block layer in the spirit of QEMU's: a graph of nodes (format, protocol and filter drivers)
//! joined by edges that hold permissions; one generic request path that every read and write
//! takes; drain; BlockBackends for devices; jobs; and a QMP-style control surface.
//!
//! The engine runs unchanged on real files (`env::real`) and on the deterministic simulator (the
//! `sim` crate), because everything it needs from the world comes through [`env::Env`].
//!
//! Layers (import only downward):
//!
//! ```text
//! qemu_io/    front end: the qemu-io command language (parser, executor, output), on Engine
//! qmp/        front end: JSON commands/events, dispatch to Engine methods
//! transaction/ QMP transactions: actions prepared, then committed or aborted together
//! engine.rs   the Engine facade
//! job/        job core (status/verb tables, pause points, rate limit, txn) and the jobs
//! nbd/        NBD server: exports through a BlockBackend, handshake, request loop (below
//!             engine.rs, above backend/); its wire-format leaves nbd/proto.rs, wire.rs, addr.rs
//!             and options.rs import no layer and serve the client driver drivers/nbd/ too
//! backend/    BlockBackend: guest devices, error policies, machine run state
//! drivers/    file, raw, null-co, nbd/, blkdebug, throttle, copy-on-read, qcow2/
//! request/    THE generic request path
//! throttle/   I/O limits: throttle-group config, leaky buckets on the env clock, groups (used
//!             by the throttle filter and by BlockBackends; imports only env, error, util)
//! graph/      nodes, edges, permissions, graph edits, drain
//! object.rs   user-creatable objects (`--object`, `object-add`: secrets), kept by id
//! driver.rs   the BlockDriver trait and its sub-traits (Breakpoints, FormatOps)
//! probe.rs    format probing from a file's first bytes (and the probed-raw write guard)
//! filename.rs image names as users type them -> blockdev-add options; backing-name resolution
//! bitmap/     dirty bitmaps (a leaf: imports no other module)
//! crypto/     LUKS1 headers, PBKDF2, anti-forensic split, AES sector ciphers (imports error, env)
//! io/         buffers, flags, limits, mappings
//! env/        clock, timers, spawning, host files
//! util/       pure helpers
//! error.rs, types.rs, event.rs
//! ```
#![deny(missing_docs)]

pub mod env;
pub mod error;
pub mod io;
pub mod util;

pub use error::{Errno, Error, ErrorClass, Result};
pub mod backend;
pub mod bitmap;
pub mod crypto;
pub mod driver;
pub mod drivers;
pub mod engine;
pub mod event;
pub mod graph;
pub mod job;
pub mod nbd;
pub mod object;
pub mod probe;
pub mod qmp;
pub mod request;
pub mod throttle;
pub mod transaction;
pub mod types;

pub use engine::Engine;
pub mod filename;
pub mod qemu_io;
