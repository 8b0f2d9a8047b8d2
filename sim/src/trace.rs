//! The replay trace: a fixed 64-bit FNV-1a hash folded over every scheduling decision, clock jump,
//! spawn, fault and disk operation.
//!
//! Two runs with the same seed and inputs must end with the same [`Trace::hash`]; a difference
//! means something nondeterministic leaked in. FNV-1a is fixed by its spec (unlike
//! `DefaultHasher`), so hashes are comparable across builds, Rust releases and architectures.

use std::cell::Cell;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Record tags (the first byte folded for each record).
pub(crate) mod tag {
    /// A task was picked to run: `[task id, now]`.
    pub const SCHED: u8 = 1;
    /// The clock jumped: `[new now]`.
    pub const CLOCK: u8 = 2;
    /// A task was spawned: `[task id, name hash]`.
    pub const SPAWN: u8 = 3;
    /// A disk operation completed: `[op, file id, offset, len, errno or 0, now]`.
    pub const DISK: u8 = 4;
    /// A fault fired: `[fault id, op]`.
    pub const FAULT: u8 = 5;
    /// A file was opened or created: `[file id, created]`.
    pub const OPEN: u8 = 6;
    /// A crash: `[epoch, entries kept, lost, torn]`.
    pub const CRASH: u8 = 7;
    /// A network event: `[event, link id, bytes]` (`net::ev`).
    pub const NET: u8 = 8;
}

/// A rolling FNV-1a hash and a record count.
#[derive(Debug)]
pub struct Trace {
    hash: Cell<u64>,
    records: Cell<u64>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            hash: Cell::new(FNV_OFFSET),
            records: Cell::new(0),
        }
    }
}

impl Trace {
    /// Fold one record: its tag, then each word as 8 little-endian bytes.
    pub fn record(&self, tag: u8, words: &[u64]) {
        let mut h = fnv_byte(self.hash.get(), tag);
        for w in words {
            for b in w.to_le_bytes() {
                h = fnv_byte(h, b);
            }
        }
        self.hash.set(h);
        self.records.set(self.records.get() + 1);
    }

    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash.get()
    }

    /// How many records were folded.
    pub fn records(&self) -> u64 {
        self.records.get()
    }
}

fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// FNV-1a of a byte string (names, paths folded into the trace).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| fnv_byte(h, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn records_change_the_hash() {
        let t = Trace::default();
        let h0 = t.hash();
        t.record(tag::SCHED, &[1, 2]);
        assert_ne!(t.hash(), h0);
        assert_eq!(t.records(), 1);
    }
}
