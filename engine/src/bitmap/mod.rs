//! Dirty bitmaps: which parts of a node changed, at a fixed granularity.
//!
//! [`DirtyBitmap`] is a granular bitmap over a byte range: setting or clearing a byte range
//! touches every granule the range overlaps, the number of dirty granules is kept up to date,
//! and the next dirty (or clean) granule at or after a position is found through the
//! hierarchical summaries of [`HBits`], which skip clean stretches a level at a time. Mirror
//! tracks its copy on it; named and persistent bitmaps (QMP `block-dirty-bitmap-*`) build on it.
//!
//! [`Bitmap`] (in `named`) is a named bitmap of a node with QEMU's states and successor rules;
//! [`NodeBitmaps`] (in `list`) is a node's list of them, which the request path marks.
//!
//! Pure data: imports nothing from the engine (no graph, no I/O) but its error type, so it can
//! be unit tested alone.

mod hbits;
mod list;
mod named;

pub use hbits::HBits;
pub use list::NodeBitmaps;
pub use named::{Bitmap, LoadedFlags, MAX_NAME_LEN, Use, valid_granularity};

/// A bitmap of dirty granules over `len` bytes.
#[derive(Clone, Debug)]
pub struct DirtyBitmap {
    granularity: u64,
    len: u64,
    bits: HBits,
}

impl DirtyBitmap {
    /// A clean bitmap over `len` bytes with `granularity`-byte granules (a power of two).
    pub fn new(len: u64, granularity: u64) -> DirtyBitmap {
        assert!(
            granularity.is_power_of_two(),
            "bitmap granularity must be a power of two"
        );
        DirtyBitmap {
            granularity,
            len,
            bits: HBits::new(len.div_ceil(granularity)),
        }
    }

    /// Bytes per granule.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the bitmap covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of granules.
    pub fn granules(&self) -> u64 {
        self.bits.len()
    }

    /// The granule bits.
    pub fn bits(&self) -> &HBits {
        &self.bits
    }

    /// The granule bits, to change (serialisation, merges).
    pub fn bits_mut(&mut self) -> &mut HBits {
        &mut self.bits
    }

    /// Granules `[first, end)` overlapped by the byte range (clipped to the bitmap).
    fn granule_range(&self, offset: u64, bytes: u64) -> (u64, u64) {
        if bytes == 0 || offset >= self.len {
            return (0, 0);
        }
        let end = offset.saturating_add(bytes).min(self.len);
        (offset / self.granularity, end.div_ceil(self.granularity))
    }

    /// Mark every granule that `[offset, offset+bytes)` touches dirty.
    pub fn set(&mut self, offset: u64, bytes: u64) {
        let (first, end) = self.granule_range(offset, bytes);
        self.bits.set_range(first, end);
    }

    /// Mark every granule that `[offset, offset+bytes)` touches clean. Callers that must not lose
    /// a partly covered granule's dirtiness pass granule-aligned ranges.
    pub fn reset(&mut self, offset: u64, bytes: u64) {
        let (first, end) = self.granule_range(offset, bytes);
        self.bits.reset_range(first, end);
    }

    /// Follow a new length: granules past a shorter end are dropped, new ones are clean.
    pub fn resize(&mut self, len: u64) {
        self.len = len;
        self.bits.resize(len.div_ceil(self.granularity));
    }

    /// Mark the whole bitmap dirty.
    pub fn set_all(&mut self) {
        self.set(0, self.len);
    }

    /// Mark the whole bitmap clean.
    pub fn clear(&mut self) {
        self.bits.clear();
    }

    /// Is granule `g` dirty?
    pub fn get(&self, g: u64) -> bool {
        self.bits.get(g)
    }

    /// Is any granule touched by the byte range dirty?
    pub fn any_dirty(&self, offset: u64, bytes: u64) -> bool {
        let (first, end) = self.granule_range(offset, bytes);
        self.next_dirty(first).is_some_and(|g| g < end)
    }

    /// Number of dirty granules.
    pub fn count(&self) -> u64 {
        self.bits.count()
    }

    /// Dirty bytes (granules times granularity, the last one clipped to the length).
    pub fn dirty_bytes(&self) -> u64 {
        let last = self.granules().saturating_sub(1);
        let mut bytes = self.count() * self.granularity;
        if self.count() > 0 && self.get(last) {
            bytes -= last * self.granularity + self.granularity
                - self.len.min((last + 1) * self.granularity);
        }
        bytes
    }

    /// The first dirty granule at or after granule `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        self.bits.next_set(from)
    }

    /// The first clean granule at or after `from` (`granules()` if none).
    pub fn next_clean(&self, from: u64) -> u64 {
        self.bits
            .next_clear(from)
            .unwrap_or(self.granules())
            .max(from.min(self.granules()))
    }

    /// Byte range `[offset, end)` of granules `[first, end_granule)`, clipped to the length.
    pub fn byte_range(&self, first: u64, end_granule: u64) -> (u64, u64) {
        (
            (first * self.granularity).min(self.len),
            (end_granule * self.granularity).min(self.len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_reset_touch_every_overlapped_granule() {
        let mut b = DirtyBitmap::new(1 << 20, 4096);
        b.set(4095, 2);
        assert!(b.get(0) && b.get(1) && !b.get(2));
        assert_eq!(b.count(), 2);
        b.reset(4096, 4096);
        assert!(b.get(0) && !b.get(1));
        assert_eq!(b.count(), 1);
        b.set(0, 0);
        assert_eq!(b.count(), 1);
    }

    #[test]
    fn ranges_past_the_end_are_clipped() {
        let mut b = DirtyBitmap::new(10_000, 4096);
        assert_eq!(b.granules(), 3);
        b.set(9_000, 1 << 30);
        assert_eq!(b.count(), 1);
        assert_eq!(b.dirty_bytes(), 10_000 - 8192);
        b.set(20_000, 5);
        assert_eq!(b.count(), 1);
        b.set_all();
        assert_eq!(b.dirty_bytes(), 10_000);
        b.clear();
        assert_eq!((b.count(), b.dirty_bytes()), (0, 0));
    }

    #[test]
    fn next_dirty_and_next_clean_scan_across_words() {
        let mut b = DirtyBitmap::new(1000 * 512, 512);
        assert_eq!(b.next_dirty(0), None);
        b.set(130 * 512, 3 * 512);
        b.set(999 * 512, 512);
        assert_eq!(b.next_dirty(0), Some(130));
        assert_eq!(b.next_dirty(131), Some(131));
        assert_eq!(b.next_dirty(133), Some(999));
        assert_eq!(b.next_dirty(1000), None);
        assert_eq!(b.next_clean(130), 133);
        assert_eq!(b.next_clean(0), 0);
        assert_eq!(b.next_clean(999), 1000);
        assert!(b.any_dirty(132 * 512, 1));
        assert!(!b.any_dirty(133 * 512, 100 * 512));
        assert_eq!(b.byte_range(999, 1000), (999 * 512, 1000 * 512));
    }

    #[test]
    fn count_matches_a_naive_model_under_random_operations() {
        // A small deterministic generator: the point is many overlapping set/reset mixes.
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let len = 300 * 1024 + 77;
        let gran = 1024;
        let mut b = DirtyBitmap::new(len, gran);
        let mut naive = vec![false; len.div_ceil(gran) as usize];
        for _ in 0..2000 {
            let off = next() % (len + 2048);
            let n = next() % 20_000;
            let set = next() % 2 == 0;
            if set {
                b.set(off, n);
            } else {
                b.reset(off, n);
            }
            if n > 0 && off < len {
                let end = (off + n).min(len).div_ceil(gran);
                for g in off / gran..end {
                    naive[g as usize] = set;
                }
            }
            let want = naive.iter().filter(|&&d| d).count() as u64;
            assert_eq!(b.count(), want);
            let first = naive.iter().position(|&d| d).map(|g| g as u64);
            assert_eq!(b.next_dirty(0), first);
        }
    }
}
