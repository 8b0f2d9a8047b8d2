//! What `block_status` reports for a range: QEMU's `BDRV_BLOCK_*` as an enum.

/// How the bytes of a range are provided by one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Allocated data in this layer. `host` is where it lives in the node's storage child
    /// (`file`), when that is known and meaningful.
    Data {
        /// Offset in the storage child.
        host: Option<u64>,
    },
    /// Allocated in this layer and reads as zeroes. `host` as for `Data` (a preallocated zero
    /// cluster has one).
    Zero {
        /// Offset in the storage child, if any is reserved.
        host: Option<u64>,
    },
    /// Allocated data in this layer whose storage holds nothing yet (a metadata-preallocated
    /// qcow2 cluster over a hole of its file): it reads as zeroes, and is still allocated
    /// data, as QEMU's map shows it (`"data": true, "zero": true`). `host` as for `Data`.
    DataZero {
        /// Offset in the storage child.
        host: Option<u64>,
    },
    /// Not allocated in this layer: the backing child provides it (zeroes if there is none).
    Unallocated,
    /// As `Unallocated`, but the layer has reserved storage at `host` for it (a qcow2
    /// subcluster not yet allocated in an allocated cluster): QEMU's map shows the offset
    /// when no backing layer provides the range.
    UnallocatedAt {
        /// Offset in the storage child.
        host: u64,
    },
}

/// One answer of `block_status`: the first `len` bytes from the asked offset share `mapping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    /// Bytes covered; never 0 for an in-bounds request.
    pub len: u64,
    /// How they are provided.
    pub mapping: Mapping,
}

impl Mapping {
    /// True for data or zero allocated in this layer.
    pub fn is_allocated(self) -> bool {
        !matches!(self, Mapping::Unallocated | Mapping::UnallocatedAt { .. })
    }

    /// True when the layer guarantees zeroes.
    pub fn is_zero(self) -> bool {
        matches!(self, Mapping::Zero { .. } | Mapping::DataZero { .. })
    }

    /// The host offset, when there is one.
    pub fn host(self) -> Option<u64> {
        match self {
            Mapping::Data { host } | Mapping::Zero { host } | Mapping::DataZero { host } => host,
            Mapping::UnallocatedAt { host } => Some(host),
            Mapping::Unallocated => None,
        }
    }
}
