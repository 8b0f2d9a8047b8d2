//! The bitmap directory: one variable-length entry per bitmap, each 8-byte aligned:
//! `u64 table_offset`, `u32 table_size` (entries), `u32 flags` (bit 0 in_use, bit 1 auto,
//! bit 2 extra_data_compatible), `u8 type` (1: dirty tracking), `u8 granularity_bits`,
//! `u16 name_size`, `u32 extra_data_size`, then the extra data, the name and zero padding.

use crate::error::{Error, Result};

use super::{MAX_GRANULARITY_BITS, MAX_NAME, MAX_PHYS_SIZE, MAX_TABLE_SIZE, MIN_GRANULARITY_BITS};

/// Flag: the bitmap was not stored cleanly (its in-memory copy was ahead of the file).
pub(crate) const FLAG_IN_USE: u32 = 1 << 0;
/// Flag: the bitmap is enabled (tracks every write).
pub(crate) const FLAG_AUTO: u32 = 1 << 1;
/// Flags QEMU refuses (extra_data_compatible included: QEMU supports no extra data).
const RESERVED_FLAGS: u32 = !(FLAG_IN_USE | FLAG_AUTO);
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY_TRACKING: u8 = 1;
/// Size of an entry's fixed part.
const FIXED: usize = 24;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    /// Host offset of the bitmap table.
    pub table_offset: u64,
    /// Entries in the bitmap table.
    pub table_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// log2 of the bytes each bit covers.
    pub granularity_bits: u8,
    /// The bitmap's name.
    pub name: String,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Bytes an entry with a name of `name_len` bytes and `extra` bytes of extra data takes.
pub(crate) fn entry_size(name_len: usize, extra: usize) -> usize {
    (FIXED + name_len + extra).next_multiple_of(8)
}

fn broken() -> Error {
    Error::generic("Broken bitmap directory")
}

impl DirEntry {
    pub(crate) fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    pub(crate) fn auto(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }

    pub(crate) fn granularity(&self) -> u64 {
        1u64 << self.granularity_bits
    }

    /// Whether the entry meets QEMU's constraints for an image of `disk_len` bytes with
    /// `cs`-byte clusters: a table inside the limits, a supported granularity, type and
    /// flags, and (unless in use) a table large enough for the whole disk.
    fn satisfies_constraints(&self, kind: u8, name_len: usize, cs: u64, disk_len: u64) -> bool {
        let table = self.table_size as u64;
        let ok = table != 0
            && self.table_offset != 0
            && self.table_offset.is_multiple_of(cs)
            && table <= MAX_TABLE_SIZE
            && (MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&self.granularity_bits)
            && self.flags & RESERVED_FLAGS == 0
            && name_len <= MAX_NAME
            && kind == TYPE_DIRTY_TRACKING;
        if !ok {
            return false;
        }
        let phys = table * cs;
        if phys > MAX_PHYS_SIZE {
            return false;
        }
        // An in-use bitmap may be too small (an image resized without storing it).
        let covers = (phys as u128 * 8) << self.granularity_bits;
        self.in_use() || disk_len as u128 <= covers
    }
}

/// Parse directory `dir` that the extension says holds `nb` entries, for an image with
/// `cs`-byte clusters and a `disk_len`-byte disk. Errors are QEMU's.
pub(crate) fn parse(dir: &[u8], nb: u32, cs: u64, disk_len: u64) -> Result<Vec<DirEntry>> {
    if dir.is_empty() {
        return Err(Error::generic("Requested bitmap directory size is zero"));
    }
    let mut out: Vec<DirEntry> = Vec::new();
    let mut pos = 0usize;
    while pos < dir.len() {
        if pos + FIXED > dir.len() {
            return Err(broken());
        }
        if out.len() as u64 >= nb as u64 {
            return Err(Error::generic(
                "More bitmaps found than specified in header extension",
            ));
        }
        let e = &dir[pos..];
        let name_len = be16(e, 18) as usize;
        let extra = be32(e, 20) as usize;
        let size = entry_size(name_len, extra);
        if size > dir.len() - pos {
            return Err(broken());
        }
        if extra != 0 {
            return Err(Error::generic("Bitmap extra data is not supported"));
        }
        let raw_name = &e[FIXED..FIXED + name_len];
        // The name ends at its first NUL, if any (QEMU copies it as a C string).
        let cut = raw_name.iter().position(|&c| c == 0).unwrap_or(name_len);
        let entry = DirEntry {
            table_offset: u64::from_be_bytes(e[0..8].try_into().expect("8 bytes")),
            table_size: be32(e, 8),
            flags: be32(e, 12),
            granularity_bits: e[17],
            name: String::from_utf8_lossy(&raw_name[..cut]).into_owned(),
        };
        if !entry.satisfies_constraints(e[16], name_len, cs, disk_len) {
            return Err(Error::generic(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                String::from_utf8_lossy(raw_name)
            )));
        }
        if out.iter().any(|o| o.name == entry.name) {
            return Err(Error::generic(format!(
                "Bitmap already exists: {}",
                entry.name
            )));
        }
        out.push(entry);
        pos += size;
    }
    if out.len() as u64 != nb as u64 {
        return Err(Error::generic(
            "Less bitmaps found than specified in header extension",
        ));
    }
    Ok(out)
}

/// The directory holding `entries`, as stored (no extra data).
pub(crate) fn serialize(entries: &[DirEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in entries {
        b.extend_from_slice(&e.table_offset.to_be_bytes());
        b.extend_from_slice(&e.table_size.to_be_bytes());
        b.extend_from_slice(&e.flags.to_be_bytes());
        b.push(TYPE_DIRTY_TRACKING);
        b.push(e.granularity_bits);
        b.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(e.name.as_bytes());
        b.resize(b.len().next_multiple_of(8), 0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: u32) -> DirEntry {
        DirEntry {
            table_offset: 0x30000,
            table_size: 1,
            flags,
            granularity_bits: 16,
            name: name.into(),
        }
    }

    const CS: u64 = 65536;
    const DISK: u64 = 64 << 20;

    #[test]
    fn round_trip() {
        let es = vec![entry("a", FLAG_AUTO), entry("longer-name", 0)];
        let b = serialize(&es);
        assert_eq!(b.len(), entry_size(1, 0) + entry_size(11, 0));
        assert_eq!(parse(&b, 2, CS, DISK).unwrap(), es);
    }

    #[test]
    fn counts_and_broken_entries_are_refused() {
        let b = serialize(&[entry("a", 0), entry("b", 0)]);
        let msg = |r: Result<Vec<DirEntry>>| r.unwrap_err().message();
        assert_eq!(
            msg(parse(&b, 1, CS, DISK)),
            "More bitmaps found than specified in header extension"
        );
        assert_eq!(
            msg(parse(&b, 3, CS, DISK)),
            "Less bitmaps found than specified in header extension"
        );
        assert_eq!(msg(parse(&b[..20], 2, CS, DISK)), "Broken bitmap directory");
        assert_eq!(msg(parse(&b[..30], 2, CS, DISK)), "Broken bitmap directory");
        assert_eq!(
            msg(parse(&[], 1, CS, DISK)),
            "Requested bitmap directory size is zero"
        );
    }

    #[test]
    fn constraints() {
        let bad = |e: DirEntry, kind: Option<u8>| {
            let name = e.name.clone();
            let mut b = serialize(&[e]);
            if let Some(k) = kind {
                b[16] = k;
            }
            let err = parse(&b, 1, CS, DISK).unwrap_err().message();
            assert_eq!(
                err,
                format!("Bitmap '{name}' doesn't satisfy the constraints")
            );
        };
        bad(entry("t", 0), Some(2));
        bad(
            DirEntry {
                granularity_bits: 8,
                ..entry("g", 0)
            },
            None,
        );
        bad(
            DirEntry {
                granularity_bits: 32,
                ..entry("g", 0)
            },
            None,
        );
        bad(
            DirEntry {
                flags: 4,
                ..entry("f", 0)
            },
            None,
        );
        bad(
            DirEntry {
                table_offset: 0x30200,
                ..entry("o", 0)
            },
            None,
        );
        bad(
            DirEntry {
                table_offset: 0,
                ..entry("o", 0)
            },
            None,
        );
        bad(
            DirEntry {
                table_size: 0,
                ..entry("s", 0)
            },
            None,
        );
        // 64 KiB granularity, one cluster of table: 512 Ki bits cover 32 GiB, not more.
        let big = 33u64 << 30;
        let b = serialize(&[entry("small", 0)]);
        assert!(parse(&b, 1, CS, big).is_err());
        let b = serialize(&[entry("small", FLAG_IN_USE)]);
        assert!(
            parse(&b, 1, CS, big).is_ok(),
            "in-use bitmaps may be too small"
        );
        let mut b = serialize(&[entry("x", 0)]);
        b[23] = 8;
        b.resize(b.len() + 8, 0);
        assert_eq!(
            parse(&b, 1, CS, DISK).unwrap_err().message(),
            "Bitmap extra data is not supported"
        );
    }
}
