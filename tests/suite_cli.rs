//! Test binary `cli`: the blk command line against QEMU's tools (interop, errors, the
//! QEMU-compatibility cases), the simulator's CLI, and the architecture rules (seams).
//! Each file below was its own test crate; it is a module here (see Cargo.toml).

// Shared helpers, loaded once for the whole binary; test files `use crate::` them.
mod common;

#[path = "cli_bench.rs"]
mod cli_bench;
#[path = "cli_bitmap.rs"]
mod cli_bitmap;
#[path = "cli_check.rs"]
mod cli_check;
#[path = "cli_commit_rebase.rs"]
mod cli_commit_rebase;
#[path = "cli_dd.rs"]
mod cli_dd;
#[path = "cli_lock.rs"]
mod cli_lock;
#[path = "cli_luks.rs"]
mod cli_luks;
#[path = "cli_serve.rs"]
mod cli_serve;
#[path = "cli_sim.rs"]
mod cli_sim;
#[path = "img_errors.rs"]
mod img_errors;
#[path = "img_fast_paths.rs"]
mod img_fast_paths;
#[path = "img_interop.rs"]
mod img_interop;
#[path = "img_open.rs"]
mod img_open;
#[path = "interop_qemu_io.rs"]
mod interop_qemu_io;
#[path = "nbd_cli.rs"]
mod nbd_cli;
#[path = "qemu_compat.rs"]
mod qemu_compat;
#[path = "seams.rs"]
mod seams;
