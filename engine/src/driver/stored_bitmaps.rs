//! The persistent bitmaps an image format stores (qcow2's bitmaps extension), as the format
//! verbs of [`FormatOps`](super::FormatOps) see them: plain data, independent of the live
//! named bitmaps of a node (which load from and store into these).

use crate::bitmap::HBits;

/// One bitmap as the image's directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBitmap {
    /// Its name, unique in the image.
    pub name: String,
    /// Bytes of guest disk per bit (a power of two).
    pub granularity: u64,
    /// Not stored cleanly: the bits on disk may miss writes (QEMU's `in-use` flag; such a
    /// bitmap is inconsistent and can only be removed).
    pub in_use: bool,
    /// Enabled: records every write (QEMU's `auto` flag).
    pub auto: bool,
}

/// One bitmap to store: its bits cover the whole disk, one bit per `granularity` bytes
/// (`disk_len.div_ceil(granularity)` bits).
#[derive(Clone, Copy, Debug)]
pub struct BitmapToStore<'a> {
    /// Its name.
    pub name: &'a str,
    /// Bytes of guest disk per bit.
    pub granularity: u64,
    /// Enabled (stored with the `auto` flag).
    pub enabled: bool,
    /// The bits.
    pub bits: &'a HBits,
}
