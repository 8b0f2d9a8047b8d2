//! qcow2 header: parsing and validation of the fixed fields (v2 and v3), the header
//! extensions (backing format, external data file name, feature names, unknown ones kept as
//! opaque bytes) and the
//! backing file name, plus the serialisation used by `create`.
//!
//! Every field is checked against the file size before anything is allocated from it.
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Error, Result};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Header extension: backing file format name.
pub const EXT_BACKING_FMT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: where the full-disk-encryption (LUKS) header lives.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// `crypt_method`: none, legacy AES-CBC, LUKS.
pub const CRYPT_NONE: u32 = 0;
/// Legacy AES-CBC with the passphrase as key.
pub const CRYPT_AES: u32 = 1;
/// LUKS (header in clusters named by [`EXT_CRYPTO`]).
pub const CRYPT_LUKS: u32 = 2;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Autoclear feature bit 1: the external data file is a valid raw image of the guest disk.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Incompatible feature bit 4: extended L2 entries (32 subclusters per cluster).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible feature bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: image may be corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 3: compression type field is used.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Largest L1 table QEMU accepts, in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts, in bytes.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU accepts.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Size of the fixed part of a snapshot table entry.
pub const SNAPSHOT_ENTRY_MIN: u64 = 40;
/// Byte offset of the autoclear feature field (v3).
pub const OFF_AUTOCLEAR: u64 = 88;
/// Byte offset of the incompatible feature field (v3).
pub const OFF_INCOMPAT: u64 = 72;
/// Byte offset of the virtual size field.
pub const OFF_SIZE: u64 = 24;
/// Byte offset of the L1 size field (followed by the L1 offset).
pub const OFF_L1: u64 = 36;
/// Byte offset of the refcount table offset (followed by its cluster count).
pub const OFF_REFTABLE: u64 = 48;
/// Byte offset of the refcount order field (v3).
pub const OFF_REFCOUNT_ORDER: u64 = 96;

/// An unknown header extension, kept so it survives header rewrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawExtension {
    /// Extension type.
    pub magic: u32,
    /// Payload (unpadded).
    pub data: Vec<u8>,
}

/// The parsed header.
#[derive(Clone, Debug)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Backing file name offset (0: none).
    pub backing_offset: u64,
    /// Backing file name length.
    pub backing_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
    /// Host offset of the refcount table.
    pub reftable_offset: u64,
    /// Size of the refcount table in clusters.
    pub reftable_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// [`CRYPT_NONE`], [`CRYPT_AES`] or [`CRYPT_LUKS`].
    pub crypt_method: u32,
    /// The LUKS header's (offset, length) in the image file, from [`EXT_CRYPTO`].
    pub crypto_area: Option<(u64, u64)>,
    /// Incompatible feature bits.
    pub incompat: u64,
    /// Compatible feature bits.
    pub compat: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Header length in bytes.
    pub header_length: u32,
    /// 0 deflate, 1 zstd.
    pub compression_type: u8,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
    /// Backing format from the extension, if any.
    pub backing_fmt: Option<String>,
    /// External data file name from the extension, if any.
    pub data_file: Option<String>,
    /// Feature names from the feature name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// Extensions not understood here.
    pub unknown_exts: Vec<RawExtension>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::generic(format!("qcow2: {}", msg.into()))
}

/// A header QEMU refuses with this very message (no "qcow2:" prefix, as QEMU prints it).
fn refused_as_qemu(msg: String) -> Error {
    Error::generic(msg)
}

/// A metadata table at `off`, `bytes` long: cluster aligned (`cs`), clear of the header and
/// inside a file `file_len` bytes long.
fn check_table(what: &str, off: u64, bytes: u64, cs: u64, file_len: u64) -> Result<()> {
    if !off.is_multiple_of(cs) {
        return Err(invalid(format!(
            "{what} offset {off:#x} is not cluster aligned"
        )));
    }
    if off == 0 && bytes > 0 {
        return Err(invalid(format!("{what} at offset 0 overlaps the header")));
    }
    if off.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(invalid(format!(
            "{what} at {off:#x} ({bytes} bytes) lies beyond the end of the image file ({file_len} bytes)"
        )));
    }
    Ok(())
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Name of an incompatible feature bit (from the image's table, or the known ones).
    fn incompat_name(&self, bit: u8) -> String {
        if let Some((_, _, n)) = self
            .feature_names
            .iter()
            .find(|(t, b, _)| *t == 0 && *b == bit)
        {
            return n.clone();
        }
        match bit {
            0 => "dirty bit".into(),
            1 => "corrupt bit".into(),
            2 => "external data file".into(),
            3 => "compression type".into(),
            4 => "extended L2 entries".into(),
            _ => format!("Unknown incompatible feature: {:x}", 1u64 << bit),
        }
    }

    /// Parse and validate the header in `buf` (the first cluster, or what exists of it) of an
    /// image file `file_len` bytes long. The phases run in this order so that the first
    /// problem reported is the one QEMU reports.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        let mut h = Header::parse_fixed(buf)?;
        h.parse_v3_fields(buf)?;
        // Extensions come before the feature check so that unknown bits are named.
        h.parse_extensions(buf)?;
        h.check_features()?;
        h.check_tables(file_len)?;
        h.parse_backing_name(buf)?;
        Ok(h)
    }

    /// The version 2 part of the header (the first 72 bytes); the v3 fields at their v2
    /// defaults.
    fn parse_fixed(buf: &[u8]) -> Result<Header> {
        if buf.len() < 72 {
            return Err(invalid("Image is not in qcow2 format (header truncated)"));
        }
        if be32(buf, 0) != MAGIC {
            return Err(invalid("Image is not in qcow2 format"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(refused_as_qemu(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(refused_as_qemu(format!(
                "Unsupported cluster size: 2^{cluster_bits}"
            )));
        }
        let h = Header {
            version,
            backing_offset: be64(buf, 8),
            backing_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_offset: be64(buf, 40),
            reftable_offset: be64(buf, 48),
            reftable_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            crypt_method: be32(buf, 32),
            crypto_area: None,
            incompat: 0,
            compat: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            backing_file: None,
            backing_fmt: None,
            data_file: None,
            feature_names: Vec::new(),
            unknown_exts: Vec::new(),
        };
        if h.crypt_method > CRYPT_LUKS {
            return Err(refused_as_qemu(format!(
                "Unsupported encryption method: {}",
                h.crypt_method
            )));
        }
        Ok(h)
    }

    /// Feature bits, refcount order, header length and compression type (version 3 only),
    /// and the refcount order's range (either version).
    fn parse_v3_fields(&mut self, buf: &[u8]) -> Result<()> {
        if self.version == 3 {
            if buf.len() < 104 {
                return Err(invalid("Header truncated (v3 needs 104 bytes)"));
            }
            self.incompat = be64(buf, 72);
            self.compat = be64(buf, 80);
            self.autoclear = be64(buf, 88);
            self.refcount_order = be32(buf, 96);
            self.header_length = be32(buf, 100);
            if self.header_length < 104 || !self.header_length.is_multiple_of(8) {
                return Err(invalid(format!(
                    "Invalid header length {} (must be >= 104 and a multiple of 8)",
                    self.header_length
                )));
            }
            if self.header_length as u64 > self.cluster_size()
                || self.header_length as usize > buf.len()
            {
                return Err(invalid("Header length exceeds the first cluster"));
            }
            if self.header_length > 104 {
                self.compression_type = buf[104];
            }
        }
        if self.refcount_order > 6 {
            return Err(invalid(format!(
                "Refcount order {} is out of range (0..6)",
                self.refcount_order
            )));
        }
        Ok(())
    }

    /// Incompatible feature bits this driver does not know, and the compression type.
    fn check_features(&self) -> Result<()> {
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_COMPRESSION
            | INCOMPAT_DATA_FILE
            | INCOMPAT_EXTL2;
        let unknown = self.incompat & !known;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| self.incompat_name(b))
                .collect();
            return Err(invalid(format!(
                "Unsupported incompatible features: {}",
                names.join(", ")
            )));
        }
        if (self.incompat & INCOMPAT_COMPRESSION != 0) != (self.compression_type != 0) {
            return Err(invalid(
                "Compression type field and incompatible bit 3 disagree",
            ));
        }
        if self.compression_type > 1 {
            return Err(invalid(format!(
                "Unknown compression type {}",
                self.compression_type
            )));
        }
        Ok(())
    }

    /// Refcount table, L1 table and snapshot table: sizes in range, aligned and inside a
    /// file `file_len` bytes long; the L1 table large enough for the virtual size.
    fn check_tables(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let rt_bytes = self.reftable_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES || self.reftable_clusters == 0 {
            return Err(invalid(format!(
                "Reference count table size {} clusters is invalid",
                self.reftable_clusters
            )));
        }
        let table = |what: &str, off: u64, bytes: u64| check_table(what, off, bytes, cs, file_len);
        table("Reference count table", self.reftable_offset, rt_bytes)?;
        let l1_bytes = self.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(invalid(format!(
                "Active L1 table too large ({} entries)",
                self.l1_size
            )));
        }
        table("Active L1 table", self.l1_offset, l1_bytes)?;
        self.check_l1_covers_size()?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid("Too many snapshots"));
        }
        if self.nb_snapshots > 0 && !self.snapshots_offset.is_multiple_of(cs) {
            return Err(invalid("Snapshot table offset is not cluster aligned"));
        }
        // Every entry has at least its fixed part: the table cannot be smaller than that.
        table(
            "Snapshot table",
            self.snapshots_offset,
            self.nb_snapshots as u64 * SNAPSHOT_ENTRY_MIN,
        )
    }

    /// The L1 table maps the whole virtual size, which is in range.
    fn check_l1_covers_size(&self) -> Result<()> {
        let extl2 = self.incompat & INCOMPAT_EXTL2 != 0;
        if extl2 && self.cluster_bits < 14 {
            return Err(invalid(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
        // L1 size vs virtual size: each L1 entry maps cs * cs/8 bytes (cs/16 entries of 16
        // bytes with extended L2 entries).
        let l2_bits = self.cluster_bits - 3 - extl2 as u32;
        let per_l1 = 1u128 << (self.cluster_bits + l2_bits);
        let need = (self.size as u128).div_ceil(per_l1);
        if need > self.l1_size as u128 {
            return Err(invalid(format!(
                "L1 table is too small for the image size {} ({} entries, {need} needed)",
                self.size, self.l1_size
            )));
        }
        if self.size > (1u64 << 62) {
            return Err(invalid(format!("Image size {} is too large", self.size)));
        }
        Ok(())
    }

    /// The backing file name, which must lie inside the first cluster.
    fn parse_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        if self.backing_offset == 0 {
            return Ok(());
        }
        if self.backing_size > 1023 {
            return Err(invalid(format!(
                "Backing file name too long ({} bytes)",
                self.backing_size
            )));
        }
        let end = self.backing_offset.checked_add(self.backing_size as u64);
        if end.is_none_or(|e| e > self.cluster_size() || e as usize > buf.len()) {
            return Err(invalid("Backing file name lies outside the first cluster"));
        }
        let s = self.backing_offset as usize;
        let name = &buf[s..s + self.backing_size as usize];
        self.backing_file = Some(
            String::from_utf8(name.to_vec())
                .map_err(|_| invalid("Backing file name is not valid UTF-8"))?,
        );
        Ok(())
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let mut off = self.header_length as usize;
        let end = if self.backing_offset != 0 {
            (self.backing_offset as usize).min(buf.len())
        } else {
            buf.len()
        };
        let mut seen: Vec<u32> = Vec::new();
        loop {
            if off + 8 > end {
                return Err(invalid("Header extension area is truncated"));
            }
            let magic = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            off += 8;
            if magic == 0 {
                return Ok(());
            }
            if len > end - off {
                return Err(invalid(format!(
                    "Header extension {magic:#x} is too large ({len} bytes)"
                )));
            }
            if seen.contains(&magic) {
                return Err(invalid(format!("Duplicate header extension {magic:#x}")));
            }
            seen.push(magic);
            let data = &buf[off..off + len];
            match magic {
                EXT_BACKING_FMT => {
                    let s = String::from_utf8(data.to_vec())
                        .map_err(|_| invalid("Backing format name is not valid UTF-8"))?;
                    self.backing_fmt = Some(s);
                }
                EXT_DATA_FILE => {
                    let s = String::from_utf8(data.to_vec())
                        .map_err(|_| invalid("Data file name is not valid UTF-8"))?;
                    self.data_file = Some(s);
                }
                EXT_CRYPTO if len >= 16 => {
                    self.crypto_area = Some((be64(data, 0), be64(data, 8)));
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name = &e[2..];
                        let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                        let name = String::from_utf8_lossy(&name[..n]).into_owned();
                        self.feature_names.push((e[0], e[1], name));
                    }
                }
                _ => self.unknown_exts.push(RawExtension {
                    magic,
                    data: data.to_vec(),
                }),
            }
            off += len.next_multiple_of(8);
        }
    }

    /// The header and extensions as bytes (for `create`): fixed fields, backing format,
    /// feature table (if it fits in the first cluster), unknown extensions, end marker,
    /// backing name.
    pub fn serialize(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1024);
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes()); // backing offset, patched below
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.crypt_method.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_offset.to_be_bytes());
        b.extend_from_slice(&self.reftable_offset.to_be_bytes());
        b.extend_from_slice(&self.reftable_clusters.to_be_bytes());
        b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 {
            b.extend_from_slice(&self.incompat.to_be_bytes());
            b.extend_from_slice(&self.compat.to_be_bytes());
            b.extend_from_slice(&self.autoclear.to_be_bytes());
            b.extend_from_slice(&self.refcount_order.to_be_bytes());
            b.extend_from_slice(&112u32.to_be_bytes());
            b.push(self.compression_type);
            b.extend_from_slice(&[0u8; 7]);
        }
        let ext = |b: &mut Vec<u8>, magic: u32, data: &[u8]| {
            b.extend_from_slice(&magic.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        };
        if let Some(fmt) = &self.backing_fmt {
            ext(&mut b, EXT_BACKING_FMT, fmt.as_bytes());
        }
        if let Some(name) = &self.data_file {
            ext(&mut b, EXT_DATA_FILE, name.as_bytes());
        }
        if let Some((off, len)) = self.crypto_area {
            let data = [off.to_be_bytes(), len.to_be_bytes()].concat();
            ext(&mut b, EXT_CRYPTO, &data);
        }
        if self.version == 3 {
            let mut t = Vec::new();
            for (ty, bit, name) in [
                (0u8, 0u8, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 2, "external data file"),
                (0, 3, "compression type"),
                (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"),
                (2, 0, "bitmaps"),
                (2, 1, "raw external data"),
            ] {
                let mut e = [0u8; 48];
                e[0] = ty;
                e[1] = bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                t.extend_from_slice(&e);
            }
            // The table is optional: like QEMU, leave it out when it would not fit in the
            // first cluster with everything that follows it (512-byte clusters with a backing
            // file name).
            let rest: usize = self
                .unknown_exts
                .iter()
                .map(|u| 8 + u.data.len().next_multiple_of(8))
                .sum::<usize>()
                + 8
                + self.backing_file.as_ref().map_or(0, String::len);
            if (b.len() + 8 + t.len() + rest) as u64 <= self.cluster_size() {
                ext(&mut b, EXT_FEATURE_TABLE, &t);
            }
        }
        for u in &self.unknown_exts {
            ext(&mut b, u.magic, &u.data);
        }
        b.extend_from_slice(&[0u8; 8]);
        if let Some(name) = &self.backing_file {
            let off = b.len() as u64;
            b.extend_from_slice(name.as_bytes());
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        }
        b
    }
}
