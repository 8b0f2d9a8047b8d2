//! Request limits a node advertises (QEMU's `BlockLimits`), in bytes.

/// What a driver can take in one request. The generic request path guarantees these to the
/// driver: aligned offsets and lengths, no request longer than `max_transfer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Offsets and lengths of reads and writes are multiples of this (a power of two).
    pub request_align: u32,
    /// Longest read or write in one driver call; 0 means no limit.
    pub max_transfer: u32,
    /// Preferred transfer size (0 = none).
    pub opt_transfer: u32,
    /// Longest discard (0 = no limit).
    pub max_discard: u32,
    /// Discards are done in multiples of this (0 = `request_align`).
    pub discard_align: u32,
    /// Longest write-zeroes (0 = no limit).
    pub max_write_zeroes: u32,
    /// Write-zeroes is efficient in multiples of this (0 = `request_align`).
    pub write_zeroes_align: u32,
    /// Buffers handed to the driver must start at a multiple of this.
    pub min_mem_align: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_align: 1,
            max_transfer: 0,
            opt_transfer: 0,
            max_discard: 0,
            discard_align: 0,
            max_write_zeroes: 0,
            write_zeroes_align: 0,
            min_mem_align: 1,
        }
    }
}

impl Limits {
    /// Combine a parent's own limits with a child's: the stricter of each (alignments grow,
    /// maximums shrink), as a filter or format node inherits what its storage needs.
    pub fn merge_child(self, child: Limits) -> Limits {
        fn min_nonzero(a: u32, b: u32) -> u32 {
            match (a, b) {
                (0, x) | (x, 0) => x,
                (a, b) => a.min(b),
            }
        }
        Limits {
            request_align: self.request_align.max(child.request_align),
            max_transfer: min_nonzero(self.max_transfer, child.max_transfer),
            opt_transfer: self.opt_transfer.max(child.opt_transfer),
            max_discard: min_nonzero(self.max_discard, child.max_discard),
            discard_align: self.discard_align.max(child.discard_align),
            max_write_zeroes: min_nonzero(self.max_write_zeroes, child.max_write_zeroes),
            write_zeroes_align: self.write_zeroes_align.max(child.write_zeroes_align),
            min_mem_align: self.min_mem_align.max(child.min_mem_align),
        }
    }
}
