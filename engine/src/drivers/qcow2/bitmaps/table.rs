//! Bitmap tables: one level of `u64` entries, entry `i` for the bits serialised in the `i`-th
//! cluster of bitmap data (`8 * cluster_size` bits each). Bits 9-55 hold the data cluster's
//! host offset; with offset 0, bit 0 says whether that stretch is all ones (1) or all zeros
//! (0). Every other bit is reserved and must be zero.

use crate::error::Result;

use super::einval;

/// Bits of an entry that must be zero.
pub(crate) const RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Bits holding the data cluster offset.
pub(crate) const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of an entry without data cluster: the stretch is all ones.
pub(crate) const ALL_ONES: u64 = 1;

/// Whether `entry` is well-formed for `cs`-byte clusters.
pub(crate) fn entry_ok(entry: u64, cs: u64) -> bool {
    let off = entry & OFFSET;
    entry & RESERVED == 0 && (off == 0 || (entry & ALL_ONES == 0 && off.is_multiple_of(cs)))
}

/// Bits one data cluster holds.
pub(crate) fn bits_per_cluster(cs: u64) -> u64 {
    8 * cs
}

/// Bits of a bitmap of granularity `gran` over `disk_len` bytes.
pub(crate) fn bit_count(disk_len: u64, gran: u64) -> u64 {
    disk_len.div_ceil(gran)
}

/// Entries the table of a bitmap of `bits` bits has with `cs`-byte clusters.
pub(crate) fn table_entries(bits: u64, cs: u64) -> u64 {
    bits.div_ceil(bits_per_cluster(cs))
}

/// The entries of the table stored as `raw` for bitmap `name`, each checked.
pub(crate) fn parse(raw: &[u8], cs: u64, name: &str) -> Result<Vec<u64>> {
    let entries: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if entries.iter().any(|&e| !entry_ok(e, cs)) {
        return Err(einval(format!(
            "Could not read bitmap_table table from image for bitmap '{name}'"
        )));
    }
    Ok(entries)
}

/// The table as stored.
pub(crate) fn serialize(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let cs = 65536;
        assert!(entry_ok(0, cs));
        assert!(entry_ok(ALL_ONES, cs));
        assert!(entry_ok(0x5_0000, cs));
        assert!(
            !entry_ok(0x5_0000 | ALL_ONES, cs),
            "all-ones with an offset"
        );
        assert!(!entry_ok(0x5_0200, cs), "unaligned");
        assert!(!entry_ok(2, cs), "reserved bit 1");
        assert!(!entry_ok(1 << 60, cs), "reserved high bit");
        let e = parse(&serialize(&[0x5_0000, 1]), cs, "b").unwrap();
        assert_eq!(e, vec![0x5_0000, 1]);
        assert_eq!(
            parse(&serialize(&[2]), cs, "b").unwrap_err().message(),
            "Could not read bitmap_table table from image for bitmap 'b': Invalid argument"
        );
    }

    #[test]
    fn sizes() {
        // 64 MiB at 64 KiB: 1024 bits, one cluster.
        assert_eq!(table_entries(bit_count(64 << 20, 65536), 65536), 1);
        // 512-byte clusters hold 4096 bits.
        assert_eq!(table_entries(4096, 512), 1);
        assert_eq!(table_entries(4097, 512), 2);
        assert_eq!(bit_count(1000, 512), 2);
    }
}
