//! The one error type of the engine and the CLI.
//!
//! An [`Error`] carries structure, not just text:
//!
//! * its [`Kind`]: the QMP error class a client sees (`GenericError`, `DeviceNotFound`, ...) and
//!   an optional errno for I/O failures (error policies such as `werror=enospc` look at it);
//! * its own message, or for a bad option the [`ParamProblem`] and the option's path;
//! * where it happened, when known: the node, the byte range, the operation ([`Op`]), the host
//!   offset inside an image file;
//! * the error it wraps ([`std::error::Error::source`]).
//!
//! What a user sees ([`fmt::Display`]) is composed from these fields: the message, then
//! ` (host offset 0x...)` when one is recorded, then `: ` and the wrapped error, then a hint on
//! a line of its own. Code that
//! adds context wraps (`context`) or fills a field (`under_option`, `at`, ...); it never
//! edits another error's text. Node, range and operation are for programs (QMP events, tests,
//! error policies) and do not change the text. Invariant violations are `assert!`s, never an
//! `Error`.
//!
//! Importable from anywhere; imports nothing else from the engine.

use std::fmt;

/// The QMP error classes (QEMU's `QapiErrorClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// Everything that has no more specific class.
    GenericError,
    /// A device, node or job named by the caller does not exist.
    DeviceNotFound,
    /// A command that the engine does not know.
    CommandNotFound,
    /// The device is not active (e.g. no medium).
    DeviceNotActive,
}

impl ErrorClass {
    /// The class name as QMP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
        }
    }
}

/// The errno values the engine distinguishes. Numbers are Linux's, so they survive a round trip
/// through the host and match what qemu-io prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Errno {
    /// Operation not permitted.
    EPERM,
    /// No such file or directory.
    ENOENT,
    /// Input/output error.
    EIO,
    /// Out of memory.
    ENOMEM,
    /// Permission denied.
    EACCES,
    /// Device or resource busy.
    EBUSY,
    /// File exists.
    EEXIST,
    /// Invalid argument.
    EINVAL,
    /// File too large.
    EFBIG,
    /// No space left on device.
    ENOSPC,
    /// Read-only file system.
    EROFS,
    /// Operation not supported.
    ENOTSUP,
    /// Operation canceled.
    ECANCELED,
    /// Resource temporarily unavailable.
    EAGAIN,
    /// Numerical result out of range.
    ERANGE,
    /// No medium found (QEMU's answer once a node has lost its driver, e.g. after fatal
    /// corruption).
    ENOMEDIUM,
    /// Any other host errno, kept by number.
    Other(i32),
}

impl Errno {
    /// Linux errno number.
    pub fn code(self) -> i32 {
        match self {
            Errno::EPERM => 1,
            Errno::ENOENT => 2,
            Errno::EIO => 5,
            Errno::ENOMEM => 12,
            Errno::EACCES => 13,
            Errno::EBUSY => 16,
            Errno::EEXIST => 17,
            Errno::EINVAL => 22,
            Errno::EFBIG => 27,
            Errno::ENOSPC => 28,
            Errno::EROFS => 30,
            Errno::ERANGE => 34,
            Errno::EAGAIN => 11,
            Errno::ENOTSUP => 95,
            Errno::ENOMEDIUM => 123,
            Errno::ECANCELED => 125,
            Errno::Other(n) => n,
        }
    }

    /// From a Linux errno number.
    pub fn from_code(code: i32) -> Errno {
        match code {
            1 => Errno::EPERM,
            2 => Errno::ENOENT,
            5 => Errno::EIO,
            12 => Errno::ENOMEM,
            13 => Errno::EACCES,
            16 => Errno::EBUSY,
            17 => Errno::EEXIST,
            22 => Errno::EINVAL,
            27 => Errno::EFBIG,
            28 => Errno::ENOSPC,
            30 => Errno::EROFS,
            34 => Errno::ERANGE,
            11 => Errno::EAGAIN,
            95 => Errno::ENOTSUP,
            123 => Errno::ENOMEDIUM,
            125 => Errno::ECANCELED,
            n => Errno::Other(n),
        }
    }

    /// The text `strerror` gives on Linux (what qemu-io prints after "failed: ").
    pub fn description(self) -> &'static str {
        match self {
            Errno::EPERM => "Operation not permitted",
            Errno::ENOENT => "No such file or directory",
            Errno::EIO => "Input/output error",
            Errno::ENOMEM => "Cannot allocate memory",
            Errno::EACCES => "Permission denied",
            Errno::EBUSY => "Device or resource busy",
            Errno::EEXIST => "File exists",
            Errno::EINVAL => "Invalid argument",
            Errno::EFBIG => "File too large",
            Errno::ENOSPC => "No space left on device",
            Errno::EROFS => "Read-only file system",
            Errno::ERANGE => "Numerical result out of range",
            Errno::EAGAIN => "Resource temporarily unavailable",
            Errno::ENOTSUP => "Operation not supported",
            Errno::ENOMEDIUM => "No medium found",
            Errno::ECANCELED => "Operation canceled",
            Errno::Other(_) => "Unknown error",
        }
    }
}

/// What kind of failure: the QMP class and, for I/O-level failures, the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The QMP class a client sees.
    pub class: ErrorClass,
    /// The errno, if this is an I/O-level failure.
    pub errno: Option<Errno>,
}

/// What is wrong with an option; the error reads "Parameter 'PATH' ..." with the option's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamProblem {
    /// "is missing": a required option was not given.
    Missing,
    /// "is unexpected": the option is not known where it was given.
    Unexpected,
    /// Any other problem, as the rest of the sentence ("expects 'on' or 'off'").
    Invalid(String),
}

impl fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamProblem::Missing => f.write_str("is missing"),
            ParamProblem::Unexpected => f.write_str("is unexpected"),
            ParamProblem::Invalid(rest) => f.write_str(rest),
        }
    }
}

/// The operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read request.
    Read,
    /// A write request.
    Write,
    /// A write-zeroes request.
    WriteZeroes,
    /// A discard request.
    Discard,
    /// A flush request.
    Flush,
    /// A resize.
    Truncate,
    /// Opening a node or file.
    Open,
    /// Creating an image or file.
    Create,
}

impl Op {
    /// The lower-case name (QMP's spelling where QMP has one).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::WriteZeroes => "write-zeroes",
            Op::Discard => "discard",
            Op::Flush => "flush",
            Op::Truncate => "truncate",
            Op::Open => "open",
            Op::Create => "create",
        }
    }
}

/// How the error's own text is phrased.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    /// The message as given.
    Plain(String),
    /// "Parameter '{option}' {problem}".
    Param(ParamProblem),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Inner {
    kind: Kind,
    text: Text,
    option: Option<String>,
    node: Option<String>,
    range: Option<(u64, u64)>,
    op: Option<Op>,
    host_offset: Option<u64>,
    source: Option<Error>,
    hint: Option<String>,
}

/// An engine error: its kind, its message, where it happened, and the error it wraps. Boxed,
/// so a `Result` stays one word wider than its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(Box<Inner>);

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn new(class: ErrorClass, errno: Option<Errno>, text: Text) -> Error {
        Error(Box::new(Inner {
            kind: Kind { class, errno },
            text,
            option: None,
            node: None,
            range: None,
            op: None,
            host_offset: None,
            source: None,
            hint: None,
        }))
    }

    /// A `GenericError` with a message.
    pub fn generic(msg: impl Into<String>) -> Error {
        Error::new(ErrorClass::GenericError, None, Text::Plain(msg.into()))
    }

    /// A `DeviceNotFound` error with a message.
    pub fn not_found(msg: impl Into<String>) -> Error {
        Error::with_class(ErrorClass::DeviceNotFound, msg)
    }

    /// An error of an explicit class.
    pub fn with_class(class: ErrorClass, msg: impl Into<String>) -> Error {
        Error::new(class, None, Text::Plain(msg.into()))
    }

    /// An I/O error carrying an errno; the message is the errno's description.
    pub fn io(errno: Errno) -> Error {
        Error::io_msg(errno, errno.description())
    }

    /// An I/O error with an errno and a specific message.
    pub fn io_msg(errno: Errno, msg: impl Into<String>) -> Error {
        Error::new(
            ErrorClass::GenericError,
            Some(errno),
            Text::Plain(msg.into()),
        )
    }

    /// `EINVAL` with a message: a request that the caller should not have made.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::io_msg(Errno::EINVAL, msg)
    }

    /// A bad option: "Parameter 'PATH' PROBLEM" (a `GenericError`). A layer that opened the
    /// option's dictionary under a key puts that key in front with [`Error::under_option`].
    pub fn param(path: impl Into<String>, problem: ParamProblem) -> Error {
        let mut e = Error::new(ErrorClass::GenericError, None, Text::Param(problem));
        e.0.option = Some(path.into());
        e
    }

    /// "Parameter 'PATH' is missing".
    pub fn param_missing(path: impl Into<String>) -> Error {
        Error::param(path, ParamProblem::Missing)
    }

    /// "Parameter 'PATH' REST", e.g. `param_invalid("size", "expects a >0 size")`.
    pub fn param_invalid(path: impl Into<String>, rest: impl Into<String>) -> Error {
        Error::param(path, ParamProblem::Invalid(rest.into()))
    }

    /// Wrap this error under `prefix`: the result reads "PREFIX: THIS", keeps this error's kind,
    /// and has this error as its [`source`](std::error::Error::source).
    pub fn context(self, prefix: impl fmt::Display) -> Error {
        let mut outer = Error::new(
            self.0.kind.class,
            self.0.kind.errno,
            Text::Plain(prefix.to_string()),
        );
        outer.0.source = Some(self);
        outer
    }

    /// QEMU's wrapping of a failed open of `path`: "Could not open 'PATH': THIS", with the
    /// operation recorded.
    pub fn could_not_open(self, path: &str) -> Error {
        self.context(format_args!("Could not open '{path}'"))
            .during(Op::Open)
    }

    /// Record the node the error happened on.
    pub fn at(mut self, node: impl Into<String>) -> Error {
        self.0.node = Some(node.into());
        self
    }

    /// Record the byte range (offset, length) of the failed request.
    pub fn range(mut self, offset: u64, len: u64) -> Error {
        self.0.range = Some((offset, len));
        self
    }

    /// Record the operation that failed.
    pub fn during(mut self, op: Op) -> Error {
        self.0.op = Some(op);
        self
    }

    /// Record the option path the error is about (for an error made with [`Error::param`] the
    /// path is part of its text).
    pub fn option(mut self, path: impl Into<String>) -> Error {
        self.0.option = Some(path.into());
        self
    }

    /// Record where in the image file the failing data lies; the text gains
    /// " (host offset 0x...)".
    pub fn host_offset(mut self, offset: u64) -> Error {
        self.0.host_offset = Some(offset);
        self
    }

    /// Add a hint for the user: the text gains a new line with `hint` after the whole message
    /// (also when this error is later wrapped).
    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.0.hint = Some(hint.into());
        self
    }

    /// The option was given inside the dictionary under `key`: its path becomes `KEY.PATH`.
    /// Errors that name no option are returned unchanged.
    pub fn under_option(mut self, key: &str) -> Error {
        if let Some(path) = &self.0.option {
            self.0.option = Some(format!("{key}.{path}"));
        }
        self
    }

    /// Fill in where a request failed: node, operation and range, unless an inner layer already
    /// recorded them (the node closest to the failure wins).
    pub fn locate(mut self, node: &str, op: Op, offset: u64, len: u64) -> Error {
        if self.node().is_none() {
            let inner = &mut *self.0;
            inner.node = Some(node.to_string());
            inner.op = Some(op);
            inner.range = Some((offset, len));
        }
        self
    }

    /// The kind: QMP class and errno.
    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// The QMP class.
    pub fn class(&self) -> ErrorClass {
        self.0.kind.class
    }

    /// The errno, if this is an I/O-level failure.
    pub fn errno(&self) -> Option<Errno> {
        self.0.kind.errno
    }

    /// The full text a user sees, wrapped errors included (the same as `to_string()`).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The message without its hint: what QMP's `desc` carries (QEMU prints hints only on a
    /// terminal).
    pub fn message_without_hint(&self) -> String {
        let full = self.message();
        match &self.0.hint {
            Some(h) => full
                .strip_suffix(&format!("\n{h}"))
                .map_or(full.clone(), str::to_string),
            None => full,
        }
    }

    /// What C's `strerror` gives for the errno, or the message when there is none: the text
    /// qemu-io prints after "failed: ".
    pub fn strerror(&self) -> String {
        match self.errno() {
            Some(n) => n.description().to_string(),
            None => self.message(),
        }
    }

    /// The option path and problem, if this error is about a bad option ("Parameter ...").
    pub fn param_problem(&self) -> Option<(&str, &ParamProblem)> {
        match (&self.0.text, &self.0.option) {
            (Text::Param(problem), Some(path)) => Some((path, problem)),
            _ => None,
        }
    }

    /// The option path the error is about, here or in a wrapped error.
    pub fn option_path(&self) -> Option<&str> {
        self.find(|i| i.option.as_deref())
    }

    /// The node the error happened on, here or in a wrapped error.
    pub fn node(&self) -> Option<&str> {
        self.find(|i| i.node.as_deref())
    }

    /// The byte range of the failed request, here or in a wrapped error.
    pub fn offset_len(&self) -> Option<(u64, u64)> {
        self.find(|i| i.range)
    }

    /// The operation that failed, here or in a wrapped error.
    pub fn op(&self) -> Option<Op> {
        self.find(|i| i.op)
    }

    /// The wrapped error.
    pub fn cause(&self) -> Option<&Error> {
        self.0.source.as_ref()
    }

    /// The first of this error and the errors it wraps for which `get` gives a value.
    fn find<'a, T>(&'a self, get: impl Fn(&'a Inner) -> Option<T>) -> Option<T> {
        let mut e = Some(self);
        while let Some(err) = e {
            if let Some(v) = get(&err.0) {
                return Some(v);
            }
            e = err.cause();
        }
        None
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        match &e.text {
            Text::Plain(msg) => f.write_str(msg)?,
            Text::Param(problem) => {
                let path = e.option.as_deref().unwrap_or_default();
                write!(f, "Parameter '{path}' {problem}")?;
            }
        }
        if let Some(offset) = e.host_offset {
            write!(f, " (host offset {offset:#x})")?;
        }
        if let Some(source) = &e.source {
            write!(f, ": {source}")?;
        }
        if let Some(hint) = &e.hint {
            write!(f, "\n{hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Attach context to the error of a `Result` lazily.
pub trait ResultExt<T> {
    /// Wrap the error under `f()` (see [`Error::context`]).
    fn context_with<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context_with<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

#[cfg(test)]
mod tests;
