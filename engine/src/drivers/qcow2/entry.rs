//! One L2 table entry as a typed value. The entry's bit layout (host offset, the COPIED,
//! ZERO and compressed flags, the compressed descriptor) is known here only: callers build
//! entries with named constructors and read them with accessors or `classify`, instead of
//! masking raw `u64`s. The L1 entry (`L1Entry`: L2 table offset and COPIED) is typed the same
//! way; refcount table entries share the offset mask (that table stays raw `u64`s).
//! Must not import anything outside qcow2 but `error`.

use std::fmt;

use crate::error::{Errno, Error, Result};

use super::units::HostOffset;

/// L1/L2 entry: refcount is exactly one (may be written in place).
pub(crate) const COPIED: u64 = 1 << 63;
/// L2 entry: compressed cluster.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// L2 entry (v3): reads as zeroes.
pub(crate) const ZERO: u64 = 1;
/// Host offset bits of L1 and normal L2 entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// One L1 table entry: the offset of an L2 table (0: none) and its COPIED flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct L1Entry(u64);

impl L1Entry {
    /// No L2 table.
    pub(crate) const UNALLOCATED: L1Entry = L1Entry(0);

    /// The entry as stored in the table.
    pub(crate) const fn from_raw(raw: u64) -> L1Entry {
        L1Entry(raw)
    }

    /// The bits to store in the table.
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    /// An L2 table at `off` (cluster aligned) whose refcount is one.
    pub(crate) fn table(off: HostOffset) -> L1Entry {
        debug_assert_eq!(off.bytes() & !OFFSET_MASK, 0, "L2 table offset {off:#x}");
        L1Entry(off.bytes() | COPIED)
    }

    /// The L2 table's offset (0: no table).
    pub(crate) fn l2_offset(self) -> HostOffset {
        HostOffset::new(self.0 & OFFSET_MASK)
    }

    /// The COPIED flag: the L2 table's refcount is one.
    pub(crate) fn is_copied(self) -> bool {
        self.0 & COPIED != 0
    }

    /// This entry with the COPIED flag set (`true`) or clear.
    pub(crate) fn with_copied(self, copied: bool) -> L1Entry {
        if copied {
            L1Entry(self.0 | COPIED)
        } else {
            L1Entry(self.0 & !COPIED)
        }
    }
}

impl fmt::LowerHex for L1Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// What one guest cluster is, from its L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not allocated here: backing file or zeroes.
    Unallocated,
    /// Reads as zeroes (v3 flag); `host` is a preallocated cluster, if any.
    Zero { host: Option<HostOffset> },
    /// Data at `host`; `copied` means it may be rewritten in place.
    Normal { host: HostOffset, copied: bool },
    /// Compressed data (deflate or zstd): `offset` in the file, `len` bytes of sectors.
    Compressed { offset: HostOffset, len: u64 },
}

/// The host range a compressed cluster at `offset`, `len` bytes long, occupies in whole
/// 512-byte sectors: from the start of its first sector (what its refcounts cover).
pub(crate) fn compressed_span(offset: HostOffset, len: u64) -> (HostOffset, u64) {
    let lead = offset.bytes() & 511;
    (HostOffset::new(offset.bytes() - lead), len + lead)
}

/// What decoding an entry needs to know of its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryFormat {
    /// log2 of the cluster size (the compressed descriptor's split depends on it).
    pub(crate) cluster_bits: u32,
    /// Guest clusters live in an external data file (host offset 0 is then a real place).
    pub(crate) data_file: bool,
    /// The ZERO flag means "reads as zeroes" (version 3; version 2 ignores the bit).
    pub(crate) zero_flag: bool,
}

/// One L2 entry (the first 64 bits of an extended one; its subcluster bitmap is separate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct L2Entry(u64);

impl L2Entry {
    /// No cluster: the backing file (or zeroes) shows through.
    pub(crate) const UNALLOCATED: L2Entry = L2Entry(0);
    /// Reads as zeroes, no host cluster (version 3).
    pub(crate) const ZERO: L2Entry = L2Entry(ZERO);

    /// The entry as stored in the table.
    pub(crate) const fn from_raw(raw: u64) -> L2Entry {
        L2Entry(raw)
    }

    /// The bits to store in the table.
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    /// A data cluster at `host` (cluster aligned) whose refcount is one.
    pub(crate) fn normal(host: HostOffset) -> L2Entry {
        debug_assert_eq!(host.bytes() & !OFFSET_MASK, 0, "host offset {host:#x}");
        L2Entry(host.bytes() | COPIED)
    }

    /// A preallocated cluster at `host` (refcount one) that reads as zeroes.
    pub(crate) fn zero_at(host: HostOffset) -> L2Entry {
        L2Entry(L2Entry::normal(host).0 | ZERO)
    }

    /// The host offset bits (of a normal or preallocated zero entry; meaningless for a
    /// compressed one, whose descriptor `compressed` decodes).
    pub(crate) fn host_offset(self) -> HostOffset {
        HostOffset::new(self.0 & OFFSET_MASK)
    }

    /// The COPIED flag: the cluster's refcount is one.
    pub(crate) fn is_copied(self) -> bool {
        self.0 & COPIED != 0
    }

    /// This entry with the COPIED flag set (`true`) or clear.
    pub(crate) fn with_copied(self, copied: bool) -> L2Entry {
        if copied {
            L2Entry(self.0 | COPIED)
        } else {
            L2Entry(self.0 & !COPIED)
        }
    }

    /// The compressed flag.
    pub(crate) fn is_compressed(self) -> bool {
        self.0 & COMPRESSED != 0
    }

    /// Bit 0 as stored: the ZERO flag of a version 3 normal entry (reserved otherwise).
    pub(crate) fn zero_bit(self) -> bool {
        self.0 & ZERO != 0
    }

    /// The cluster reads as zeroes by its entry alone (not counting an unallocated one).
    pub(crate) fn reads_zero(self, f: EntryFormat) -> bool {
        !self.is_compressed() && self.zero_bit() && f.zero_flag
    }

    /// A compressed cluster whose `len` bytes start at byte `host` of the file; `None` when
    /// `host` is past what the descriptor's offset field can hold.
    pub(crate) fn compressed_at(host: HostOffset, len: u64, cluster_bits: u32) -> Option<L2Entry> {
        let (host, x) = (host.bytes(), 62 - (cluster_bits - 8));
        let extra_sectors = ((host + len - 1) >> 9) - (host >> 9);
        debug_assert!(len > 0 && extra_sectors < 1 << (cluster_bits - 8));
        (host < 1 << x).then_some(L2Entry(COMPRESSED | (extra_sectors << x) | host))
    }

    /// A compressed entry's data: byte offset in the file and length in bytes (to the end of
    /// its last 512-byte sector); `None` for any other entry.
    pub(crate) fn compressed(self, cluster_bits: u32) -> Option<(HostOffset, u64)> {
        if !self.is_compressed() {
            return None;
        }
        let x = 62 - (cluster_bits - 8);
        let offset = self.0 & ((1u64 << x) - 1);
        let sectors = ((self.0 >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        Some((HostOffset::new(offset), sectors * 512 - (offset & 511)))
    }

    /// Decode the entry (validated: a misaligned host offset is an I/O error, never a panic).
    pub(crate) fn classify(self, f: EntryFormat) -> Result<Kind> {
        if let Some((offset, len)) = self.compressed(f.cluster_bits) {
            return Ok(Kind::Compressed { offset, len });
        }
        let host = self.host_offset();
        if !host.is_cluster_aligned(f.cluster_bits) {
            return Err(Error::io_msg(
                Errno::EIO,
                format!("qcow2: cluster offset {host:#x} is not cluster aligned"),
            ));
        }
        // Offset 0 means "no cluster", except in an external data file, where it is guest
        // cluster 0's place; there every mapped cluster has COPIED set, which tells them apart.
        let mapped = host.bytes() != 0 || (f.data_file && self.is_copied());
        if self.reads_zero(f) {
            return Ok(Kind::Zero {
                host: mapped.then_some(host),
            });
        }
        if !mapped {
            return Ok(Kind::Unallocated);
        }
        Ok(Kind::Normal {
            host,
            copied: self.is_copied(),
        })
    }
}

/// The raw bits in hex, as QEMU's messages print an entry.
impl fmt::LowerHex for L2Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_entries_keep_offset_and_copied_apart() {
        let e = L1Entry::table(HostOffset::new(0x3_0000));
        assert_eq!(e.raw(), 0x3_0000 | COPIED);
        assert_eq!(e.l2_offset().bytes(), 0x3_0000);
        assert!(e.is_copied());
        let shared = e.with_copied(false);
        assert_eq!(shared.raw(), 0x3_0000);
        assert!(!shared.is_copied());
        assert_eq!(shared.with_copied(true), e);
        // Reserved bits outside the mask are not part of the offset.
        assert_eq!(
            L1Entry::from_raw(0x3_0000 | 0x1ff).l2_offset().bytes(),
            0x3_0000
        );
        assert_eq!(L1Entry::UNALLOCATED.l2_offset().bytes(), 0);
        assert_eq!(format!("{e:x}"), "8000000000030000");
    }

    const V3: EntryFormat = EntryFormat {
        cluster_bits: 16,
        data_file: false,
        zero_flag: true,
    };

    #[test]
    fn constructors_set_the_flags_their_names_say() {
        let n = L2Entry::normal(HostOffset::new(0x5_0000));
        assert_eq!(n.raw(), 0x5_0000 | COPIED);
        assert_eq!(
            (n.host_offset().bytes(), n.is_copied(), n.zero_bit()),
            (0x5_0000, true, false)
        );
        let z = L2Entry::zero_at(HostOffset::new(0x5_0000));
        assert_eq!(z.raw(), 0x5_0000 | COPIED | ZERO);
        assert!(z.reads_zero(V3));
        assert_eq!(n.with_copied(false).raw(), 0x5_0000);
        assert_eq!(n.with_copied(false).with_copied(true), n);
        assert_eq!(format!("{z:x}"), "8000000000050001");
    }

    #[test]
    fn classify_tells_every_kind_apart() {
        let k = |raw: u64, f: EntryFormat| L2Entry::from_raw(raw).classify(f).unwrap();
        assert_eq!(k(0, V3), Kind::Unallocated);
        assert_eq!(k(ZERO, V3), Kind::Zero { host: None });
        assert_eq!(
            k(0x3_0000 | COPIED | ZERO, V3),
            Kind::Zero {
                host: Some(HostOffset::new(0x3_0000))
            }
        );
        assert_eq!(
            k(0x3_0000, V3),
            Kind::Normal {
                host: HostOffset::new(0x3_0000),
                copied: false
            }
        );
        // Version 2 has no zero flag: the bit is ignored.
        let v2 = EntryFormat {
            zero_flag: false,
            ..V3
        };
        assert_eq!(
            k(0x3_0000 | COPIED | ZERO, v2),
            Kind::Normal {
                host: HostOffset::new(0x3_0000),
                copied: true
            }
        );
        assert_eq!(k(ZERO, v2), Kind::Unallocated);
        // In an external data file, offset 0 with COPIED is guest cluster 0's place.
        let ext = EntryFormat {
            data_file: true,
            ..V3
        };
        assert_eq!(
            k(COPIED, ext),
            Kind::Normal {
                host: HostOffset::new(0),
                copied: true
            }
        );
        assert_eq!(k(COPIED, V3), Kind::Unallocated);
        assert_eq!(k(0, ext), Kind::Unallocated);
    }

    #[test]
    fn compressed_descriptor_splits_at_the_cluster_size() {
        // 64 KiB clusters: offset in bits 0..54, (sectors - 1) in bits 54..62.
        let raw = COMPRESSED | (2u64 << 54) | 0x1_0200;
        let e = L2Entry::from_raw(raw);
        assert_eq!(e.compressed(16), Some((HostOffset::new(0x1_0200), 3 * 512)));
        assert_eq!(
            e.classify(V3).unwrap(),
            Kind::Compressed {
                offset: HostOffset::new(0x1_0200),
                len: 1536
            }
        );
        // An offset inside a sector shortens the length to the end of the last sector.
        let e = L2Entry::from_raw(COMPRESSED | 0x1_0010);
        assert_eq!(
            e.compressed(16),
            Some((HostOffset::new(0x1_0010), 512 - 0x10))
        );
        // The ZERO bit is part of the offset of a compressed entry, not a flag.
        assert!(!L2Entry::from_raw(COMPRESSED | 1).reads_zero(V3));
        assert_eq!(
            L2Entry::normal(HostOffset::new(0x1_0000)).compressed(16),
            None
        );
    }

    #[test]
    fn compressed_at_round_trips_through_the_descriptor() {
        // 1000 bytes from 0x1_0300 touch the sectors at 0x1_0200 (from 0x100), 0x1_0400 and
        // 0x1_0600: three sectors, the length runs to the end of the last.
        let h = HostOffset::new;
        let e = L2Entry::compressed_at(h(0x1_0300), 1000, 16).unwrap();
        assert_eq!(e.raw(), COMPRESSED | (2u64 << 54) | 0x1_0300);
        assert_eq!(e.compressed(16), Some((h(0x1_0300), 3 * 512 - 0x100)));
        assert!(!e.is_copied());
        // 2 MiB clusters leave 49 bits for the offset.
        assert!(L2Entry::compressed_at(h(1 << 49), 512, 21).is_none());
        assert!(L2Entry::compressed_at(h((1 << 49) - 512), 512, 21).is_some());
    }

    #[test]
    fn misaligned_host_offset_is_an_io_error() {
        let e = L2Entry::from_raw(0x1_0200 | COPIED);
        let err = e.classify(V3).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EIO));
        assert!(err.message().contains("0x10200"), "{}", err.message());
    }
}
