//! Request flags (QEMU's `BDRV_REQ_*`), as a small copyable bit set.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign, Not};

/// Flags on a read, write or write-zeroes request.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqFlags(u32);

impl ReqFlags {
    /// No flags.
    pub const NONE: ReqFlags = ReqFlags(0);
    /// Force unit access: durable when the request completes.
    pub const FUA: ReqFlags = ReqFlags(1 << 0);
    /// A write-zeroes request may deallocate (unmap) instead of writing zeroes.
    pub const MAY_UNMAP: ReqFlags = ReqFlags(1 << 1);
    /// The write does not change what a reader sees (copy-on-read, mirror of identical data).
    pub const WRITE_UNCHANGED: ReqFlags = ReqFlags(1 << 2);
    /// Fail with ENOTSUP rather than fall back to a slow path (write-zeroes as a data write).
    pub const NO_FALLBACK: ReqFlags = ReqFlags(1 << 3);
    /// Serialise against every overlapping request (copy-before-write, copy-on-read).
    pub const SERIALISING: ReqFlags = ReqFlags(1 << 4);
    /// Do not wait for overlapping serialising requests (internal to copy-on-read).
    pub const NO_SERIALISING: ReqFlags = ReqFlags(1 << 5);
    /// Populate the image from its backing chain on read.
    pub const COPY_ON_READ: ReqFlags = ReqFlags(1 << 6);
    /// Write the data compressed (format drivers that support it).
    pub const WRITE_COMPRESSED: ReqFlags = ReqFlags(1 << 7);

    const NAMES: [(ReqFlags, &'static str); 8] = [
        (ReqFlags::FUA, "fua"),
        (ReqFlags::MAY_UNMAP, "may-unmap"),
        (ReqFlags::WRITE_UNCHANGED, "write-unchanged"),
        (ReqFlags::NO_FALLBACK, "no-fallback"),
        (ReqFlags::SERIALISING, "serialising"),
        (ReqFlags::NO_SERIALISING, "no-serialising"),
        (ReqFlags::COPY_ON_READ, "copy-on-read"),
        (ReqFlags::WRITE_COMPRESSED, "write-compressed"),
    ];

    /// True when every flag of `other` is set.
    pub fn contains(self, other: ReqFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any flag of `other` is set.
    pub fn intersects(self, other: ReqFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// True when no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets together (usable in constants).
    pub const fn union(self, other: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 | other.0)
    }

    /// These flags without those of `other`.
    pub fn without(self, other: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 & !other.0)
    }
}

impl BitOr for ReqFlags {
    type Output = ReqFlags;
    fn bitor(self, rhs: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for ReqFlags {
    fn bitor_assign(&mut self, rhs: ReqFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for ReqFlags {
    type Output = ReqFlags;
    fn bitand(self, rhs: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 & rhs.0)
    }
}

impl Not for ReqFlags {
    type Output = ReqFlags;
    fn not(self) -> ReqFlags {
        ReqFlags(!self.0)
    }
}

impl fmt::Debug for ReqFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "ReqFlags({})", names.join("|"))
    }
}
