//! The command lines of every `blk` subcommand, split by the engine's getopt_long
//! ([`engine::util::getopt`], the same splitter qemu-io's commands use): a bad option becomes
//! an [`Error`] carrying getopt's message.

use engine::util::getopt::getopt;
use engine::{Error, Result};

pub(crate) use engine::util::getopt::{LongOpt, Split};

/// Split a command line glibc-style: `short` is a getopt string ("f:o:q"), `long` the long
/// options. Errors are getopt's messages.
pub(crate) fn split(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split> {
    getopt(args, short, Some(long))
        .into_pairs()
        .map_err(Error::generic)
}

/// [`split`] in POSIX mode: options end at the first operand, which comes back with everything
/// after it (a program's options before its subcommand).
pub(crate) fn split_leading(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split> {
    split(args, &format!("+{short}"), long)
}
