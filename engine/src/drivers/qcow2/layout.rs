//! The image's layout: header geometry (cluster size, refcount width, L2 entry width, virtual
//! size) and feature bits (version, compression type, incompatible / autoclear bits), with the arithmetic that follows from them (cluster size, L2 entries per table,
//! host offset <-> cluster index, refcount block geometry).
//!
//! The virtual size, the feature-bit words, the version and the refcount width change while
//! the image is open (resize; dirty / corrupt bits; autoclear fix-ups; amend): they are
//! cells, the rest is fixed at open. Must not import anything outside qcow2 but `error`.

use std::cell::Cell;

use super::header::{self, Header};
use super::units::{HostCluster, HostOffset};

/// Geometry and feature bits of an open image.
pub(crate) struct Layout {
    /// log2 of the cluster size.
    pub(crate) cluster_bits: u32,
    /// log2 of the refcount width in bits (amend may change it).
    pub(crate) refcount_order: Cell<u32>,
    /// 2 or 3 (amend may change it).
    pub(crate) version: Cell<u32>,
    /// 0: deflate, 1: zstd.
    pub(crate) compression_type: u8,
    /// Extended L2 entries (incompatible bit 4): 16-byte L2 entries with a bitmap of 32
    /// subclusters.
    pub(crate) ext_l2: bool,
    /// Virtual size (resize changes it).
    pub(crate) size: Cell<u64>,
    /// Incompatible feature bits as on disk (dirty, corrupt bits change while open).
    pub(crate) incompat: Cell<u64>,
    /// Autoclear feature bits as on disk.
    pub(crate) autoclear: Cell<u64>,
}

impl Layout {
    /// The layout the parsed header `h` describes.
    pub(crate) fn new(h: &Header) -> Layout {
        Layout {
            cluster_bits: h.cluster_bits,
            refcount_order: Cell::new(h.refcount_order),
            version: Cell::new(h.version),
            compression_type: h.compression_type,
            ext_l2: h.incompat & header::INCOMPAT_EXTL2 != 0,
            size: Cell::new(h.size),
            incompat: Cell::new(h.incompat),
            autoclear: Cell::new(h.autoclear),
        }
    }

    /// Cluster size in bytes.
    pub(crate) fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub(crate) fn l2_entry_bytes(&self) -> u64 {
        if self.ext_l2 { 16 } else { 8 }
    }

    /// L2 entries per table.
    pub(crate) fn l2_entries(&self) -> u64 {
        self.cs() / self.l2_entry_bytes()
    }

    /// The host cluster holding byte `offset`.
    pub(crate) fn cluster_of(&self, offset: HostOffset) -> HostCluster {
        offset.cluster(self.cluster_bits)
    }

    /// Host offset of cluster `index`.
    pub(crate) fn cluster_offset(&self, index: HostCluster) -> HostOffset {
        index.offset(self.cluster_bits)
    }

    /// log2 of the refcount entries per block.
    pub(crate) fn rb_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order.get()
    }

    /// The largest refcount an entry can hold.
    pub(crate) fn max_refcount(&self) -> u64 {
        if self.refcount_order.get() == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.refcount_order.get())) - 1
        }
    }
}
