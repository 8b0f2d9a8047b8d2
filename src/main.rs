//! `blk`: the command-line tool.
fn main() {}
