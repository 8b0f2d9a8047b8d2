//! The units qcow2 addresses things in, as distinct types: a byte offset in the guest disk
//! (`GuestOffset`), a guest cluster index (`GuestCluster`), a byte offset in the image file
//! or its data file (`HostOffset`) and a host cluster index (`HostCluster`). The allocator,
//! the L2 map, the entry types and the mapping lookups take and return these, so a guest
//! offset cannot be passed where a host one is meant, nor an index where a byte offset is.
//!
//! Conversions are named methods that take the cluster size's log2; there is no `From<u64>`:
//! a plain number becomes a unit only through `new`, where it is read from a table or a
//! request. Arithmetic is only what means something: an offset plus bytes, an index plus
//! clusters. Must not import anything outside qcow2.

use std::fmt;
use std::ops::{Add, AddAssign};

/// Defines a `u64` newtype with `new`, its value, `+ u64` and hex formatting.
macro_rules! unit {
    ($(#[$doc:meta])* $name:ident, $get:ident, $get_doc:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub(crate) struct $name(u64);

        impl $name {
            /// The unit at `v` (as read from a table, a header or a request).
            pub(crate) const fn new(v: u64) -> $name {
                $name(v)
            }

            #[doc = $get_doc]
            pub(crate) const fn $get(self) -> u64 {
                self.0
            }
        }

        /// `n` further on (bytes for an offset, clusters for an index).
        impl Add<u64> for $name {
            type Output = $name;
            fn add(self, n: u64) -> $name {
                $name(self.0 + n)
            }
        }

        impl AddAssign<u64> for $name {
            fn add_assign(&mut self, n: u64) {
                self.0 += n;
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

unit!(
    /// A byte offset in the guest disk.
    GuestOffset,
    bytes,
    "The offset in bytes."
);
unit!(
    /// The index of a guest cluster (guest offset >> cluster bits).
    GuestCluster,
    index,
    "The cluster index."
);
unit!(
    /// A byte offset in the image file (or, for guest data, its external data file).
    HostOffset,
    bytes,
    "The offset in bytes."
);
unit!(
    /// The index of a host cluster (host offset >> cluster bits): what refcounts count.
    HostCluster,
    index,
    "The cluster index."
);

impl GuestOffset {
    /// The guest cluster holding this byte.
    pub(crate) const fn cluster(self, cluster_bits: u32) -> GuestCluster {
        GuestCluster(self.0 >> cluster_bits)
    }

    /// Bytes from the start of its cluster.
    pub(crate) const fn in_cluster(self, cluster_bits: u32) -> u64 {
        self.0 & ((1 << cluster_bits) - 1)
    }
}

impl GuestCluster {
    /// The guest offset of the cluster's first byte.
    pub(crate) const fn offset(self, cluster_bits: u32) -> GuestOffset {
        GuestOffset(self.0 << cluster_bits)
    }

    /// The host offset this cluster has in a raw-mapped external data file (guest cluster N
    /// at byte N of the data file's clusters).
    pub(crate) const fn identity_host(self, cluster_bits: u32) -> HostOffset {
        HostOffset(self.0 << cluster_bits)
    }
}

impl HostOffset {
    /// The host cluster holding this byte.
    pub(crate) const fn cluster(self, cluster_bits: u32) -> HostCluster {
        HostCluster(self.0 >> cluster_bits)
    }

    /// Bytes from the start of its cluster.
    pub(crate) const fn in_cluster(self, cluster_bits: u32) -> u64 {
        self.0 & ((1 << cluster_bits) - 1)
    }

    /// True when the offset is at the start of a cluster.
    pub(crate) const fn is_cluster_aligned(self, cluster_bits: u32) -> bool {
        self.in_cluster(cluster_bits) == 0
    }
}

impl HostCluster {
    /// The host offset of the cluster's first byte.
    pub(crate) const fn offset(self, cluster_bits: u32) -> HostOffset {
        HostOffset(self.0 << cluster_bits)
    }
}

/// Ranges of cluster indices (of either side).
macro_rules! cluster_ranges {
    ($($name:ident),*) => {$(
        impl $name {
            /// The clusters from this one up to `end` (excluded), in order.
            pub(crate) fn to(self, end: $name) -> impl Iterator<Item = $name> {
                (self.0..end.0).map($name)
            }

            /// The `n` clusters starting with this one, in order.
            pub(crate) fn run(self, n: u64) -> impl Iterator<Item = $name> {
                self.to(self + n)
            }
        }
    )*};
}

cluster_ranges!(GuestCluster, HostCluster);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_keep_the_in_cluster_part() {
        let off = HostOffset::new(0x3_0123);
        assert_eq!(off.cluster(16), HostCluster::new(3));
        assert_eq!(off.in_cluster(16), 0x123);
        assert!(!off.is_cluster_aligned(16));
        assert_eq!(HostCluster::new(3).offset(16), HostOffset::new(0x3_0000));
        assert!(HostCluster::new(3).offset(16).is_cluster_aligned(16));
        let g = GuestOffset::new(0x5_0010);
        assert_eq!(g.cluster(16), GuestCluster::new(5));
        assert_eq!(g.in_cluster(16), 0x10);
        assert_eq!(GuestCluster::new(5).offset(16), GuestOffset::new(0x5_0000));
        assert_eq!(
            GuestCluster::new(5).identity_host(16),
            HostOffset::new(0x5_0000)
        );
        assert_eq!((HostCluster::new(3) + 2).index(), 5);
        let run: Vec<u64> = HostCluster::new(3).run(2).map(HostCluster::index).collect();
        assert_eq!(run, [3, 4]);
        assert_eq!(HostCluster::new(3).to(HostCluster::new(3)).count(), 0);
        assert_eq!((off + 0x10).bytes(), 0x3_0133);
        assert_eq!(format!("{off:#x}"), "0x30123");
    }
}
