//! The NBD wire format: magic numbers, option/command/flag constants, and pure encoders and
//! decoders of the fixed-size headers. No I/O here, so the parsers can be fuzzed directly.
//! Numbers are those of the protocol document (big-endian on the wire).

use crate::error::Errno;

/// `NBDMAGIC`, first word the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// The client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// End negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Upgrade to TLS (not offered).
pub const OPT_STARTTLS: u32 = 5;
/// Describe an export.
pub const OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Use structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export of a `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// An information item of `NBD_OPT_INFO`/`GO`.
pub const REP_INFO: u32 = 3;
/// One metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Error replies have this bit.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Malformed option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Payload too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// The export's name.
pub const INFO_NAME: u16 = 1;
/// The export's description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_CMD_TRIM` is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is supported.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Several connections see each other's writes once flushed.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_CACHE` is supported.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_CMD_FLAG_FAST_ZERO` is supported.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write the payload.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Discard.
pub const CMD_TRIM: u16 = 4;
/// Prefetch (advisory).
pub const CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Block status of the selected metadata contexts.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Write zeroes must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Read in one chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Block status: one extent per context.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Write zeroes must fail fast rather than write slowly.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// No payload (the final chunk of a reply).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// A hole at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Extents of one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// An error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
/// An error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1 << 0;
/// The extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:` flag.
pub const STATE_DIRTY: u32 = 1 << 0;

/// NBD errors (the wire numbers, independent of the host's).
pub const NBD_EPERM: u32 = 1;
/// I/O error.
pub const NBD_EIO: u32 = 5;
/// Out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// Invalid request.
pub const NBD_EINVAL: u32 = 22;
/// No space.
pub const NBD_ENOSPC: u32 = 28;
/// Too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// Not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

/// Largest payload or read a request may ask for (32 MiB).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest name, description or metadata query (the protocol's string limit).
pub const MAX_STRING: u32 = 4096;
/// Largest option payload the server reads through when it does not understand the option.
pub const MAX_OPTION_PAYLOAD: u32 = 1024 * 1024;
/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;

/// The metadata context of allocation status.
pub const CTX_BASE_ALLOCATION: &str = "base:allocation";
/// QEMU's context of backing-chain depth.
pub const CTX_ALLOCATION_DEPTH: &str = "qemu:allocation-depth";
/// Prefix of QEMU's dirty bitmap contexts.
pub const CTX_DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// The name of a command, for messages.
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write zeroes",
        CMD_BLOCK_STATUS => "block status",
        _ => "unknown",
    }
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub cmd: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

impl Request {
    /// Decode a request header; `None` when the magic is wrong (the stream is lost).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        if be32(&b[0..4]) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be16(&b[4..6]),
            cmd: be16(&b[6..8]),
            cookie: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            len: be32(&b[24..28]),
        })
    }

    /// Encode a request header.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Whether the request carries a payload of `len` bytes.
    pub fn has_payload(&self) -> bool {
        self.cmd == CMD_WRITE
    }
}

/// A negotiation option header (after the `IHAVEOPT` magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub opt: u32,
    /// Length of its payload.
    pub len: u32,
}

impl OptionHeader {
    /// Decode 16 bytes; `None` when the magic is wrong.
    pub fn decode(b: &[u8; 16]) -> Option<OptionHeader> {
        if be64(&b[0..8]) != IHAVEOPT {
            return None;
        }
        Some(OptionHeader {
            opt: be32(&b[8..12]),
            len: be32(&b[12..16]),
        })
    }

    /// Encode the header with its magic.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.opt.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// An option reply header: option, reply type, payload length.
pub fn option_reply(opt: u32, rep: u32, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&opt.to_be_bytes());
    b[12..16].copy_from_slice(&rep.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header.
pub fn chunk_header(flags: u16, ty: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&ty.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A reply header as a client reads it: the first 4 bytes tell which kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (16 bytes): error and cookie.
    Simple {
        /// NBD error (0 for success).
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk (20 bytes).
    Chunk {
        /// Chunk flags (`REPLY_FLAG_DONE`).
        flags: u16,
        /// Chunk type.
        ty: u16,
        /// The request's cookie.
        cookie: u64,
        /// Payload length.
        len: u32,
    },
}

/// Map an engine error to the NBD error a client sees.
pub fn nbd_errno(e: Option<Errno>) -> u32 {
    match e {
        Some(Errno::EPERM | Errno::EROFS | Errno::EACCES) => NBD_EPERM,
        Some(Errno::EIO) => NBD_EIO,
        Some(Errno::ENOMEM) => NBD_ENOMEM,
        Some(Errno::ENOSPC | Errno::EFBIG) => NBD_ENOSPC,
        Some(Errno::ENOTSUP) => NBD_ENOTSUP,
        Some(Errno::Other(75)) => NBD_EOVERFLOW,
        Some(Errno::Other(108)) => NBD_ESHUTDOWN,
        Some(Errno::EINVAL) | None => NBD_EINVAL,
        Some(_) => NBD_EIO,
    }
}

/// Map an NBD error from the wire to an engine errno (unknown numbers are `EINVAL`, as the
/// protocol asks).
pub fn host_errno(e: u32) -> Errno {
    match e {
        NBD_EPERM => Errno::EPERM,
        NBD_EIO => Errno::EIO,
        NBD_ENOMEM => Errno::ENOMEM,
        NBD_ENOSPC => Errno::ENOSPC,
        NBD_EOVERFLOW => Errno::Other(75),
        NBD_ENOTSUP => Errno::ENOTSUP,
        NBD_ESHUTDOWN => Errno::Other(108),
        _ => Errno::EINVAL,
    }
}

/// Big-endian u16 of the first 2 bytes.
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Big-endian u32 of the first 4 bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Big-endian u64 of the first 8 bytes.
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A reader over an option payload that fails (with `None`) instead of reading past its end.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(be16)
    }

    /// The next big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(be32)
    }

    /// A u32 length then that many bytes of UTF-8, at most `MAX_STRING` long.
    pub fn string(&mut self) -> Option<String> {
        let n = self.u32()?;
        if n > MAX_STRING {
            return None;
        }
        let s = self.bytes(n as usize)?;
        String::from_utf8(s.to_vec()).ok()
    }

    /// True once every byte was consumed.
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}
