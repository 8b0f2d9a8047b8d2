//! The bitmaps header extension: `u32 nb_bitmaps`, `u32 reserved` (0), `u64
//! bitmap_directory_size`, `u64 bitmap_directory_offset`, valid only while autoclear bit 0 is
//! set. A program that does not know bitmaps clears that bit when it writes the image; the
//! extension left behind then describes bitmaps that may have missed writes.

use crate::error::{Error, Result};

use super::super::header::Header;
use super::{MAX_BITMAPS, MAX_DIR_SIZE};

/// Header extension magic of the bitmaps extension.
pub(crate) const EXT_BITMAPS: u32 = 0x2385_2875;
/// Autoclear feature bit 0: the bitmaps extension is valid.
pub(crate) const AUTOCLEAR_BITMAPS: u64 = 1;
/// Size of the extension's payload.
const EXT_LEN: usize = 24;

/// Where the bitmap directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BitmapExt {
    /// Number of bitmaps (directory entries), at least 1.
    pub nb_bitmaps: u32,
    /// Size of the directory in bytes.
    pub dir_size: u64,
    /// Host offset of the directory (cluster aligned).
    pub dir_offset: u64,
}

/// What the header says about persistent bitmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExtState {
    /// No extension: no bitmaps.
    Absent,
    /// An extension without the autoclear bit: a program without bitmap support wrote the
    /// image after them, so they are ignored (QEMU warns and treats the image as having none;
    /// their clusters show as leaks to the check, and the next directory write replaces it).
    Stale,
    /// A valid extension.
    Valid(BitmapExt),
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl ExtState {
    /// The extension of header `h`, checked in QEMU's order with QEMU's messages.
    pub(crate) fn of(h: &Header) -> Result<ExtState> {
        let Some(raw) = h.unknown_exts.iter().find(|e| e.magic == EXT_BITMAPS) else {
            return Ok(ExtState::Absent);
        };
        let d = &raw.data;
        if d.len() != EXT_LEN {
            return Err(Error::generic("bitmaps_ext: Invalid extension length"));
        }
        if h.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return Ok(ExtState::Stale);
        }
        if be32(d, 4) != 0 {
            return Err(Error::generic("bitmaps_ext: Reserved field is not zero"));
        }
        let ext = BitmapExt {
            nb_bitmaps: be32(d, 0),
            dir_size: be64(d, 8),
            dir_offset: be64(d, 16),
        };
        if ext.nb_bitmaps > MAX_BITMAPS {
            return Err(Error::generic(format!(
                "bitmaps_ext: Image has {} bitmaps, exceeding the QEMU supported maximum of \
                 {MAX_BITMAPS}",
                ext.nb_bitmaps
            )));
        }
        if ext.nb_bitmaps == 0 {
            return Err(Error::generic("found bitmaps extension with zero bitmaps"));
        }
        if !ext.dir_offset.is_multiple_of(h.cluster_size()) {
            return Err(Error::generic(
                "bitmaps_ext: invalid bitmap directory offset",
            ));
        }
        if ext.dir_size > MAX_DIR_SIZE {
            return Err(Error::generic(format!(
                "bitmaps_ext: bitmap directory size ({}) exceeds the maximum supported size \
                 ({MAX_DIR_SIZE})",
                ext.dir_size
            )));
        }
        Ok(ExtState::Valid(ext))
    }

    /// The valid extension, if any.
    pub(crate) fn valid(self) -> Option<BitmapExt> {
        match self {
            ExtState::Valid(e) => Some(e),
            _ => None,
        }
    }
}

impl BitmapExt {
    /// The extension's payload as stored.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(EXT_LEN);
        b.extend_from_slice(&self.nb_bitmaps.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.dir_size.to_be_bytes());
        b.extend_from_slice(&self.dir_offset.to_be_bytes());
        b
    }
}
