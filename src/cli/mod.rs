//! The `blk` subcommands. Each lives in its own file and exposes one `run_*(args) -> i32`.

pub mod check;
pub mod getopt;
pub mod img;
pub mod io;
pub mod prog;
pub mod serve;
pub mod sim;
pub mod stdout;
pub mod swarm;
