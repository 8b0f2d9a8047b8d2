//! The typed form of a qemu-io command line, after every check qemu-io makes before it starts
//! any I/O (option combinations, number syntax, length limits, alignment for `-b`/`-c`).

/// The reporting flags every I/O command has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `-q`: print nothing on success.
    pub quiet: bool,
    /// `-C`: one machine-parsable line instead of the two report lines.
    pub machine: bool,
}

/// `-P pattern [-s off] [-l len]` on `read`: verify `len` bytes from `offset` (relative to the
/// start of the read) all equal `pattern`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verify {
    /// The expected byte.
    pub pattern: u8,
    /// Start of the verified range within the buffer.
    pub offset: u64,
    /// Length of the verified range.
    pub len: u64,
}

/// `read`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// Device offset.
    pub offset: u64,
    /// Bytes to read.
    pub len: u64,
    /// Pattern verification, if `-P` was given.
    pub verify: Option<Verify>,
    /// `-b`: read from the VM state area instead of the disk.
    pub vmstate: bool,
    /// `-v`: hexdump the data.
    pub dump: bool,
    /// Reporting flags.
    pub stats: Stats,
}

/// What `write` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteData {
    /// Every byte set to the pattern (0xcd without `-P`).
    Pattern(u8),
    /// `-z`: a write-zeroes request, no buffer.
    Zeroes,
    /// `-s FILE`: the file's contents, repeated to fill the request.
    File(String),
}

/// `write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Device offset.
    pub offset: u64,
    /// Bytes to write.
    pub len: u64,
    /// The data.
    pub data: WriteData,
    /// `-f`: force unit access.
    pub fua: bool,
    /// `-c`: compressed write.
    pub compressed: bool,
    /// `-n`: no slow fallback for `-z`.
    pub no_fallback: bool,
    /// `-u`: `-z` may unmap.
    pub unmap: bool,
    /// `-b`: write to the VM state area.
    pub vmstate: bool,
    /// Reporting flags.
    pub stats: Stats,
}

/// `readv`, `writev` and `aio_read`: one request over a list of buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vectored {
    /// Device offset.
    pub offset: u64,
    /// The buffer lengths; the request covers their sum.
    pub lens: Vec<u64>,
    /// `-P`: verify (reads) or fill with (writes) this byte; writes default to 0xcd.
    pub pattern: Option<u8>,
    /// `-v` (reads): hexdump the data.
    pub dump: bool,
    /// `-f` (writes): force unit access.
    pub fua: bool,
    /// `-i` (aio): account an invalid request instead of doing I/O.
    pub invalid: bool,
    /// Reporting flags.
    pub stats: Stats,
}

impl Vectored {
    /// Total length of the request.
    pub fn total(&self) -> u64 {
        self.lens.iter().sum()
    }
}

/// `aio_write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AioWrite {
    /// Offset, buffers, pattern, FUA, `-i`, reporting.
    pub io: Vectored,
    /// `-z`: write zeroes (takes precedence over `-P`, as in qemu-io).
    pub zero: bool,
    /// `-u`: `-z` may unmap.
    pub unmap: bool,
}

/// One qemu-io command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// An empty line: does nothing.
    Nop,
    /// `read` / `r`.
    Read(Read),
    /// `readv`.
    Readv(Vectored),
    /// `write` / `w`.
    Write(Write),
    /// `writev`.
    Writev(Vectored),
    /// `aio_read`.
    AioRead(Vectored),
    /// `aio_write`.
    AioWrite(AioWrite),
    /// `aio_flush`: wait until every aio request has completed.
    AioFlush,
    /// `flush` / `f`.
    Flush,
    /// `discard` / `d`.
    Discard {
        /// Device offset.
        offset: u64,
        /// Bytes to discard.
        len: u64,
        /// Reporting flags.
        stats: Stats,
    },
    /// `truncate` / `t`.
    Truncate {
        /// The new length.
        len: u64,
        /// `-m MODE`, unchecked (the driver refuses what it does not support).
        prealloc: Option<String>,
    },
    /// `length` / `l`.
    Length,
    /// `info` / `i`.
    Info,
    /// `map`.
    Map,
    /// `alloc` / `a`.
    Alloc {
        /// Start offset.
        offset: u64,
        /// Bytes to examine (default 512).
        count: u64,
    },
    /// `sleep MS`.
    Sleep {
        /// Milliseconds (saturated like qemu-io's `strtol`).
        ms: u64,
    },
    /// `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`.
    Open {
        /// `-r`.
        read_only: bool,
        /// `-s`: snapshot mode.
        snapshot: bool,
        /// `-C`: copy-on-read.
        copy_on_read: bool,
        /// `-n`: cache=none.
        nocache: bool,
        /// `-U`: force share.
        force_share: bool,
        /// `-k`: native AIO.
        native_aio: bool,
        /// `-t MODE`.
        cache: Option<String>,
        /// `-d MODE`.
        discard: Option<String>,
        /// `-o OPTIONS` (keyval).
        options: Option<String>,
        /// The path, if given.
        path: Option<String>,
    },
    /// `close` / `c`.
    Close,
    /// `quit` / `q`.
    Quit,
    /// `abort`: simulate a crash (the caller decides what that means).
    Abort,
    /// `help [command]` / `?`.
    Help(Option<String>),
    /// `break EVENT TAG`.
    Break {
        /// blkdebug event name.
        event: String,
        /// Tag for the suspended request.
        tag: String,
    },
    /// `wait_break TAG`.
    WaitBreak {
        /// The tag.
        tag: String,
    },
    /// `resume TAG`.
    Resume {
        /// The tag.
        tag: String,
    },
    /// `remove_break TAG`.
    RemoveBreak {
        /// The tag.
        tag: String,
    },
    /// `reopen [-r|-w] [-c cache] [-o options]`.
    Reopen {
        /// `-r` (true) or `-w` (false); `None` keeps the current mode.
        read_only: Option<bool>,
        /// `-c MODE`, already checked to be a cache mode.
        cache: Option<String>,
        /// `-o OPTIONS` (keyval).
        options: Option<String>,
    },
    /// `sigraise SIGNAL`: the caller raises the signal (checked to be at most `NSIG`).
    Sigraise {
        /// The signal number.
        signal: u32,
    },
    /// `zone_report`, `zone_open`, ... : blk has no zoned devices, so each fails with ENOTSUP.
    Zone {
        /// The command's canonical name.
        name: &'static str,
    },
}

impl Command {
    /// The canonical command name (`"read"` for `r`); `""` for [`Command::Nop`].
    pub fn name(&self) -> &'static str {
        match self {
            Command::Nop => "",
            Command::Read(_) => "read",
            Command::Readv(_) => "readv",
            Command::Write(_) => "write",
            Command::Writev(_) => "writev",
            Command::AioRead(_) => "aio_read",
            Command::AioWrite(_) => "aio_write",
            Command::AioFlush => "aio_flush",
            Command::Flush => "flush",
            Command::Discard { .. } => "discard",
            Command::Truncate { .. } => "truncate",
            Command::Length => "length",
            Command::Info => "info",
            Command::Map => "map",
            Command::Alloc { .. } => "alloc",
            Command::Sleep { .. } => "sleep",
            Command::Open { .. } => "open",
            Command::Close => "close",
            Command::Quit => "quit",
            Command::Abort => "abort",
            Command::Help(_) => "help",
            Command::Break { .. } => "break",
            Command::WaitBreak { .. } => "wait_break",
            Command::Resume { .. } => "resume",
            Command::RemoveBreak { .. } => "remove_break",
            Command::Reopen { .. } => "reopen",
            Command::Sigraise { .. } => "sigraise",
            Command::Zone { name } => name,
        }
    }
}
