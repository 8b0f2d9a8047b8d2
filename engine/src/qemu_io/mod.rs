//! The qemu-io command language: parser, executor and output formatting.
//!
//! `blk io` (the CLI) and the simulator's scenario files both drive a device with the command
//! lines QEMU's `qemu-io` understands (`write -P 0xab 0 64k`, `aio_write`, `map`, `break`, ...),
//! and both must print what qemu-io prints, byte for byte, so that transcripts can be compared
//! with QEMU's. This module owns that language:
//!
//! * [`parse_command`] turns one line into a typed [`Command`], reproducing qemu-io's
//!   tokenising (split on spaces only, no quoting), its glibc-style option parsing (options may
//!   follow operands) and its error messages, in qemu-io's order of checks.
//! * [`Session`] runs commands against a [`BlockBackend`](crate::backend::BlockBackend) and
//!   writes qemu-io's output lines to a [`Sink`], tagged stdout or stderr. `aio_*` requests run
//!   as tasks spawned on the env; their completion lines appear when they complete.
//! * `format` holds qemu-io's number and time formatting (`64 KiB`, `00.00 sec`, hexdumps).
//!
//! Time comes only from `Env::now_ns`, so in the simulator the timing lines are virtual and
//! deterministic; [`Timing`] can also print iotests' filtered form or leave them out.
//!
//! Imports only `backend`, `engine`, `io`, `error`, `util`, `env`, `event` (debug event names),
//! `types` (permissions) and `driver` (preallocation modes). Never `drivers`, `graph` internals
//! or the simulator. No `std::time`, `std::thread`, `std::fs`: host files (`write -s`) go
//! through `Env::fs`.

mod command;
mod exec;
mod exec_io;
pub mod format;
mod help;
pub mod num;
mod open;
mod parse;
mod spec;

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

pub use command::{AioWrite, Command, Read, Stats, Vectored, Verify, Write, WriteData};
pub use exec::{CommandResult, Session, SessionConfig};
pub use format::Timing;
pub use open::{CacheMode, OpenSpec, parse_discard};
pub use parse::{ParseError, ParseErrorKind, parse_command, tokenize};
pub use spec::{CmdSpec, lookup_command};

/// Longest read or write qemu-io accepts (`BDRV_REQUEST_MAX_BYTES`: `INT_MAX` rounded down to
/// 512 bytes).
pub const MAX_REQUEST_BYTES: u64 = 2_147_483_136;

/// Which of qemu-io's output streams a line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: reports, dumps, most errors.
    Stdout,
    /// Standard error: unknown commands, bad argument counts, `error_report` messages.
    Stderr,
}

/// One line of output (without its newline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutLine {
    /// Where qemu-io would write it.
    pub stream: Stream,
    /// The text.
    pub text: String,
}

impl OutLine {
    /// A stdout line.
    pub fn out(text: impl Into<String>) -> OutLine {
        OutLine {
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    /// A stderr line.
    pub fn err(text: impl Into<String>) -> OutLine {
        OutLine {
            stream: Stream::Stderr,
            text: text.into(),
        }
    }
}

/// Where a session writes its output. Shared (`Rc`) because `aio_*` completions are written by
/// spawned tasks after the command that started them has returned.
pub trait Sink {
    /// Write one line.
    fn line(&self, line: OutLine);
}

/// A sink that keeps every line, in order (tests, scenario transcripts).
#[derive(Default)]
pub struct VecSink {
    lines: RefCell<Vec<OutLine>>,
}

impl VecSink {
    /// An empty sink.
    pub fn new() -> VecSink {
        VecSink::default()
    }

    /// Take the lines written so far.
    pub fn take(&self) -> Vec<OutLine> {
        std::mem::take(&mut *self.lines.borrow_mut())
    }

    /// The texts written so far (both streams), leaving them in place.
    pub fn texts(&self) -> Vec<String> {
        self.lines.borrow().iter().map(|l| l.text.clone()).collect()
    }
}

impl Sink for VecSink {
    fn line(&self, line: OutLine) {
        self.lines.borrow_mut().push(line);
    }
}
