//! Persistent dirty bitmaps in qcow2 (the bitmaps header extension, docs/interop/qcow2.rst):
//! the on-disk structures and the format-level verbs on them.
//!
//! `ext` parses the 24-byte header extension (0x23852875) and the autoclear bit that says it
//! is valid; `dir` parses and builds the bitmap directory; `table` the one-level bitmap tables
//! and the data clusters they point to; `store` the verbs that read and rewrite them through
//! the image's allocator (list, load, store, remove, mark in use), `resize` keeps them covering
//! the disk when it is resized, and `header` the header rewrite that switches the extension.
//!
//! Everything here is independent of the live named bitmaps of a node: the caller hands in
//! and gets back plain [`HBits`](crate::bitmap::HBits). Every malformed field is an error
//! naming it, with QEMU's message where QEMU has one (QEMU refuses to open such an image, even
//! read-only, and so does blk).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

mod dir;
mod ext;
mod header;
mod resize;
mod store;
mod table;

pub(crate) use dir::DirEntry;
pub(crate) use ext::{AUTOCLEAR_BITMAPS, BitmapExt, EXT_BITMAPS, ExtState};
pub(crate) use table::RESERVED as BITMAP_ENTRY_RESERVED;

/// Most bitmaps QEMU keeps in one image.
pub(crate) const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU reads, in bytes (1 KiB per bitmap).
pub(crate) const MAX_DIR_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
/// Longest bitmap name, in bytes.
pub(crate) const MAX_NAME: usize = 1023;
/// Granularity bounds QEMU accepts (log2 of bytes per bit).
pub(crate) const MIN_GRANULARITY_BITS: u8 = 9;
pub(crate) const MAX_GRANULARITY_BITS: u8 = 31;
/// Most entries in one bitmap table.
pub(crate) const MAX_TABLE_SIZE: u64 = 0x800_0000;
/// Most bytes of bitmap data (table entries × cluster size) QEMU accepts for one bitmap.
pub(crate) const MAX_PHYS_SIZE: u64 = 0x2000_0000;

/// The text C's strerror gives EINVAL, which QEMU appends to the bitmap load errors.
fn einval(msg: String) -> crate::error::Error {
    use crate::error::{Errno, Error};
    Error::io_msg(
        Errno::EINVAL,
        format!("{msg}: {}", Errno::EINVAL.description()),
    )
}
