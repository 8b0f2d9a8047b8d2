//! The internal snapshot table as a value: decoding it from the bytes at the header's
//! `snapshots_offset` (every field of the spec, unknown extra data kept as bytes so that a
//! rewrite preserves it), validating hostile tables (entry counts, sizes, limits: errors, never
//! a panic) and encoding it back. No I/O here: the driver reads the bytes (`snapshot.rs`), the
//! fuzz target feeds arbitrary ones.
//!
//! Entry layout (all big-endian, each entry 8-byte aligned): L1 table offset (8), L1 entries
//! (4), id length (2), name length (2), date seconds (4), date nanoseconds (4), VM clock in
//! nanoseconds (8), VM state size (4), extra data length (4), extra data, id, name, padding.
//! The extra data starts with the 64-bit VM state size, the disk size and the icount.

use crate::error::{Error, Result};

/// Most extra data QEMU accepts in one entry.
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Largest snapshot table QEMU accepts, in bytes.
pub const MAX_TABLE_BYTES: u64 = 1024 * 65536;
/// The extra data fields this driver knows (64-bit VM state size, disk size, icount).
pub const KNOWN_EXTRA: u32 = 24;
/// Fixed part of an entry.
const FIXED: usize = 40;

/// One internal snapshot, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Where the snapshot's L1 table is.
    pub l1_offset: u64,
    /// Entries of that L1 table.
    pub l1_size: u32,
    /// Unique id (QEMU numbers them), as bytes.
    pub id: Vec<u8>,
    /// Name (tag), as bytes.
    pub name: Vec<u8>,
    /// Creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds within the second.
    pub date_nsec: u32,
    /// Guest clock at creation, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state (the 64-bit field when the entry has it).
    pub vm_state_size: u64,
    /// Virtual disk size at snapshot time (`None`: the entry predates the field).
    pub disk_size: Option<u64>,
    /// Instruction count (`None`: not recorded; stored as -1).
    pub icount: Option<u64>,
    /// Extra data past the fields known here, kept as is.
    pub unknown_extra: Vec<u8>,
    /// The extra data length as stored (a rewrite stores every known field: at least 24).
    pub extra_len: u32,
}

/// Why the table could not be decoded from the bytes given.
#[derive(Debug)]
pub enum TableError {
    /// The table goes on past the bytes given: this many bytes from the start are needed.
    Short(u64),
    /// The table is invalid.
    Invalid(Error),
}

impl From<Error> for TableError {
    fn from(e: Error) -> TableError {
        TableError::Invalid(e)
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// How the table is read: strict (open), or for a repair (`qemu-img check -r all`), which
/// drops extra data past QEMU's limit instead of refusing the image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadMode {
    /// Refuse what QEMU refuses at open.
    Strict,
    /// Drop extra data past the limit (noted), as QEMU's repair does.
    Repair,
}

/// Decode `nb` entries from `buf` (the bytes at the table's offset). Returns the entries and
/// the table's size in bytes; `Short` when `buf` ends before the table does; messages in
/// `notes` for what a repair dropped.
pub fn decode_table(
    buf: &[u8],
    nb: u32,
    mode: ReadMode,
    notes: &mut Vec<String>,
) -> std::result::Result<(Vec<SnapshotEntry>, u64), TableError> {
    let mut out = Vec::with_capacity((nb as usize).min(4096));
    let mut off: u64 = 0;
    for i in 0..nb {
        off = off.next_multiple_of(8);
        let (entry, next) = decode_entry(buf, off, i, mode, notes)?;
        out.push(entry);
        off = next;
        if off > MAX_TABLE_BYTES {
            return Err(Error::generic("Snapshot table is too big").into());
        }
    }
    Ok((out, off))
}

/// The bytes `[off, off + len)` of `buf`, or `Short`.
fn slice(buf: &[u8], off: u64, len: u64) -> std::result::Result<&[u8], TableError> {
    let end = off + len;
    if end > buf.len() as u64 {
        return Err(TableError::Short(end));
    }
    Ok(&buf[off as usize..end as usize])
}

/// Entry `i` at `off`: the entry and where the next one may start.
fn decode_entry(
    buf: &[u8],
    off: u64,
    i: u32,
    mode: ReadMode,
    notes: &mut Vec<String>,
) -> std::result::Result<(SnapshotEntry, u64), TableError> {
    let f = slice(buf, off, FIXED as u64)?;
    let (id_len, name_len) = (be16(f, 12) as u64, be16(f, 14) as u64);
    let extra_len = be32(f, 36);
    let mut e = SnapshotEntry {
        l1_offset: be64(f, 0),
        l1_size: be32(f, 8),
        id: Vec::new(),
        name: Vec::new(),
        date_sec: be32(f, 16),
        date_nsec: be32(f, 20),
        vm_clock_nsec: be64(f, 24),
        vm_state_size: be32(f, 32) as u64,
        disk_size: None,
        icount: None,
        unknown_extra: Vec::new(),
        extra_len,
    };
    let mut at = off + FIXED as u64;
    if extra_len > MAX_EXTRA_DATA {
        if mode == ReadMode::Strict {
            return Err(Error::generic(format!(
                "Too much extra metadata in snapshot table entry {i}\n\
                 You can force-remove this extra metadata with qemu-img check -r all"
            ))
            .into());
        }
        notes.push(format!(
            "Discarding too much extra metadata in snapshot table entry {i} \
             ({extra_len} > {MAX_EXTRA_DATA})"
        ));
        // Skipped without being read: only the known fields are kept.
        let known = slice(buf, at, KNOWN_EXTRA as u64)?;
        decode_known_extra(&mut e, known, KNOWN_EXTRA);
        e.extra_len = KNOWN_EXTRA;
    } else {
        let extra = slice(buf, at, extra_len as u64)?;
        decode_known_extra(&mut e, extra, extra_len);
        if extra_len > KNOWN_EXTRA {
            e.unknown_extra = extra[KNOWN_EXTRA as usize..].to_vec();
        }
    }
    at += extra_len as u64;
    e.id = slice(buf, at, id_len)?.to_vec();
    at += id_len;
    e.name = slice(buf, at, name_len)?.to_vec();
    at += name_len;
    Ok((e, at))
}

/// The known fields of the extra data `x` (`len` bytes of it are the entry's).
fn decode_known_extra(e: &mut SnapshotEntry, x: &[u8], len: u32) {
    if len >= 8 {
        e.vm_state_size = be64(x, 0);
    }
    if len >= 16 {
        e.disk_size = Some(be64(x, 8));
    }
    if len >= 24 {
        let ic = be64(x, 16);
        e.icount = (ic != u64::MAX).then_some(ic);
    }
}

impl SnapshotEntry {
    /// The id as text (lossy for bytes that are not UTF-8).
    pub fn id_str(&self) -> String {
        String::from_utf8_lossy(&self.id).into_owned()
    }

    /// The name as text (lossy for bytes that are not UTF-8).
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Bytes this entry takes in the table, padding included.
    pub fn encoded_len(&self) -> u64 {
        self.unpadded_len().next_multiple_of(8)
    }

    /// Bytes this entry takes up to the end of its name.
    fn unpadded_len(&self) -> u64 {
        let extra = KNOWN_EXTRA as u64 + self.unknown_extra.len() as u64;
        FIXED as u64 + extra + self.id.len() as u64 + self.name.len() as u64
    }

    /// Append the entry (with every known extra field, then the unknown extra data) to `out`.
    /// A disk size the entry lacks is written as `disk_size` (the image's at open).
    fn encode_into(&self, out: &mut Vec<u8>, default_disk_size: u64) {
        let start = out.len();
        let extra = KNOWN_EXTRA + self.unknown_extra.len() as u32;
        out.extend_from_slice(&self.l1_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        // The 32-bit field holds the size when it fits, 0 otherwise (the 64-bit one is read).
        let small = u32::try_from(self.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small.to_be_bytes());
        out.extend_from_slice(&extra.to_be_bytes());
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        let disk = self.disk_size.unwrap_or(default_disk_size);
        out.extend_from_slice(&disk.to_be_bytes());
        out.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&self.unknown_extra);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.name);
        let end = start as u64 + self.encoded_len();
        out.resize(end as usize, 0);
    }
}

/// The table holding `entries`, as written to the file: each entry starts 8-byte aligned,
/// and the table ends right after the last name (no padding after it, as QEMU counts the
/// table's size: the clusters it spans are exactly those the check counts).
pub fn encode_table(entries: &[SnapshotEntry], default_disk_size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut end = 0;
    for e in entries {
        e.encode_into(&mut out, default_disk_size);
        end = out.len() - (e.encoded_len() - e.unpadded_len()) as usize;
    }
    out.truncate(end);
    out
}

/// Check that a table's id and name lengths fit the on-disk fields.
pub fn check_lengths(id: &[u8], name: &[u8]) -> Result<()> {
    if id.len() > u16::MAX as usize || name.len() > u16::MAX as usize {
        return Err(Error::generic("Snapshot name or id is too long"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> SnapshotEntry {
        SnapshotEntry {
            l1_offset: 0x30000,
            l1_size: 3,
            id: b"7".to_vec(),
            name: name.as_bytes().to_vec(),
            date_sec: 1_700_000_000,
            date_nsec: 5,
            vm_clock_nsec: 99,
            vm_state_size: 1 << 33,
            disk_size: Some(1 << 20),
            icount: None,
            unknown_extra: vec![1, 2, 3],
            extra_len: 27,
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let es = vec![entry("a"), entry("second")];
        let raw = encode_table(&es, 0);
        let (back, len) = decode_table(&raw, 2, ReadMode::Strict, &mut Vec::new()).unwrap();
        assert_eq!(back, es);
        assert_eq!(len as usize, raw.len());
    }

    #[test]
    fn short_and_hostile_tables_are_errors() {
        let raw = encode_table(&[entry("a")], 0);
        assert!(matches!(
            decode_table(&raw[..50], 1, ReadMode::Strict, &mut Vec::new()),
            Err(TableError::Short(_))
        ));
        let mut big = raw.clone();
        big[36..40].copy_from_slice(&2000u32.to_be_bytes());
        big.resize(4096, 0);
        match decode_table(&big, 1, ReadMode::Strict, &mut Vec::new()) {
            Err(TableError::Invalid(e)) => assert!(e.to_string().contains("Too much extra")),
            other => panic!("{other:?}"),
        }
        let mut notes = Vec::new();
        let (es, _) = decode_table(&big, 1, ReadMode::Repair, &mut notes).unwrap();
        assert_eq!(es[0].unknown_extra, Vec::<u8>::new());
        assert_eq!(notes.len(), 1);
    }
}
