//! The one error type of the engine.
//!
//! An [`Error`] carries the QMP error class a client sees (`GenericError`, `DeviceNotFound`, ...),
//! an optional errno for I/O failures (error policies such as `werror=enospc` look at it), and a
//! message that names what was wrong. Invariant violations are `assert!`s, never an `Error`.
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
            Errno::ECANCELED => "Operation canceled",
            Errno::Other(_) => "Unknown error",
        }
    }
}

/// An engine error: QMP class, optional errno, and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    class: ErrorClass,
    errno: Option<Errno>,
    msg: String,
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A `GenericError` with a message.
    pub fn generic(msg: impl Into<String>) -> Error {
        Error {
            class: ErrorClass::GenericError,
            errno: None,
            msg: msg.into(),
        }
    }

    /// A `DeviceNotFound` error with a message.
    pub fn not_found(msg: impl Into<String>) -> Error {
        Error {
            class: ErrorClass::DeviceNotFound,
            errno: None,
            msg: msg.into(),
        }
    }

    /// An error of an explicit class.
    pub fn with_class(class: ErrorClass, msg: impl Into<String>) -> Error {
        Error {
            class,
            errno: None,
            msg: msg.into(),
        }
    }

    /// An I/O error carrying an errno; the message defaults to the errno's description.
    pub fn io(errno: Errno) -> Error {
        Error {
            class: ErrorClass::GenericError,
            errno: Some(errno),
            msg: errno.description().into(),
        }
    }

    /// An I/O error with an errno and a specific message.
    pub fn io_msg(errno: Errno, msg: impl Into<String>) -> Error {
        Error {
            class: ErrorClass::GenericError,
            errno: Some(errno),
            msg: msg.into(),
        }
    }

    /// `EINVAL` with a message: a request that the caller should not have made.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::io_msg(Errno::EINVAL, msg)
    }

    /// The QMP class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The errno, if this is an I/O-level failure.
    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Prefix the message with context, keeping class and errno ("Could not open 'x': ...").
    pub fn context(mut self, prefix: impl fmt::Display) -> Error {
        self.msg = format!("{prefix}: {}", self.msg);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Attach context to the error of a `Result` lazily.
pub trait ResultExt<T> {
    /// Prefix the error message with `f()`.
    fn context_with<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context_with<D: fmt::Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}
