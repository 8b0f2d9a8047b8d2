//! [`HBits`]: a hierarchical bit set, the storage under every dirty bitmap.
//!
//! Level 0 holds the bits themselves, 64 to a word. Each level above holds one bit per word of
//! the level below, set exactly when that word is not zero, up to a level of a single word. So
//! finding the next set bit skips a run of clean words in a few steps per level instead of a
//! scan (a 1 TiB disk at 64 KiB granules is 16 M bits: 4 levels), while setting or clearing a
//! range touches the levels above only when a word turns non-zero or zero.
//!
//! The bits serialise as QEMU's dirty bitmaps do on disk and on the wire: bit `i` of byte `b`
//! is bit `8 * b + i` (the level-0 words in little-endian order).
//!
//! Pure data: imports nothing from the engine.

/// A set of `len` bits with hierarchical summaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HBits {
    len: u64,
    /// `levels[0]`: the bits; `levels[k + 1]` bit `i`: `levels[k][i] != 0`. The last level has
    /// one word.
    levels: Vec<Vec<u64>>,
    /// Number of set bits.
    count: u64,
}

/// The mask of bits `[from, to)` of one word (`from < to <= 64`).
fn word_mask(from: u64, to: u64) -> u64 {
    let high = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
    high & !((1u64 << from) - 1)
}

impl HBits {
    /// `len` clear bits.
    pub fn new(len: u64) -> HBits {
        let mut levels = vec![vec![0u64; len.div_ceil(64).max(1) as usize]];
        while levels.last().expect("level 0 exists").len() > 1 {
            let below = levels.last().expect("a level").len() as u64;
            levels.push(vec![0u64; below.div_ceil(64) as usize]);
        }
        HBits {
            len,
            levels,
            count: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the set holds no bits at all (length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Is bit `i` set? (False past the end.)
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.levels[0][(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Set bits `[start, end)` (clipped to the length).
    pub fn set_range(&mut self, start: u64, end: u64) {
        self.update_range(start, end, true);
    }

    /// Clear bits `[start, end)` (clipped to the length).
    pub fn reset_range(&mut self, start: u64, end: u64) {
        self.update_range(start, end, false);
    }

    /// Clear every bit.
    pub fn clear(&mut self) {
        for level in &mut self.levels {
            level.fill(0);
        }
        self.count = 0;
    }

    fn update_range(&mut self, start: u64, end: u64, set: bool) {
        let end = end.min(self.len);
        let mut at = start;
        while at < end {
            let w = at / 64;
            let to = end.min((w + 1) * 64);
            let mask = word_mask(at % 64, to - w * 64);
            let old = self.levels[0][w as usize];
            let new = if set { old | mask } else { old & !mask };
            self.store_word(w, new);
            at = to;
        }
    }

    /// Replace level-0 word `w`, keeping the count and the summaries true.
    fn store_word(&mut self, w: u64, new: u64) {
        let old = std::mem::replace(&mut self.levels[0][w as usize], new);
        self.count = self.count - u64::from(old.count_ones()) + u64::from(new.count_ones());
        if (old == 0) != (new == 0) {
            self.summarise(w, new != 0);
        }
    }

    /// Word `w` of level 0 became non-zero (`on`) or zero: tell the levels above.
    fn summarise(&mut self, mut w: u64, on: bool) {
        for k in 1..self.levels.len() {
            let (word, bit) = ((w / 64) as usize, 1u64 << (w % 64));
            let old = self.levels[k][word];
            let new = if on { old | bit } else { old & !bit };
            self.levels[k][word] = new;
            // Above here only a word turning zero or non-zero changes anything.
            if (old == 0) == (new == 0) {
                return;
            }
            w /= 64;
        }
    }

    /// The first set bit of level `k` at or after bit `from`.
    fn next_in_level(&self, k: usize, from: u64) -> Option<u64> {
        let words = &self.levels[k];
        let w = from / 64;
        if w as usize >= words.len() {
            return None;
        }
        let here = words[w as usize] & !((1u64 << (from % 64)) - 1);
        if here != 0 {
            return Some(w * 64 + u64::from(here.trailing_zeros()));
        }
        if k + 1 == self.levels.len() {
            return None;
        }
        let next_word = self.next_in_level(k + 1, w + 1)?;
        Some(next_word * 64 + u64::from(words[next_word as usize].trailing_zeros()))
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        self.next_in_level(0, from).filter(|&i| i < self.len)
    }

    /// The first clear bit at or after `from` (`None` when every bit from there is set).
    pub fn next_clear(&self, from: u64) -> Option<u64> {
        let mut at = from;
        while at < self.len {
            let w = at / 64;
            let clear = !self.levels[0][w as usize] & !((1u64 << (at % 64)) - 1);
            if clear != 0 {
                let i = w * 64 + u64::from(clear.trailing_zeros());
                return (i < self.len).then_some(i);
            }
            at = (w + 1) * 64;
        }
        None
    }

    /// The first run of set bits that starts at or after `from` and before `end`: `(start,
    /// len)`, the run cut at `end` and at `max_len` bits.
    pub fn next_run(&self, from: u64, end: u64, max_len: u64) -> Option<(u64, u64)> {
        let end = end.min(self.len);
        let start = self.next_set(from).filter(|&s| s < end)?;
        let stop = self.next_clear(start).unwrap_or(self.len).min(end);
        Some((start, (stop - start).min(max_len.max(1))))
    }

    /// Every run of set bits, in order, as `(start, len)`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let (start, len) = self.next_run(at, u64::MAX, u64::MAX)?;
            at = start + len;
            Some((start, len))
        })
    }

    /// Set every bit that is set in `other` (same length).
    pub fn union_with(&mut self, other: &HBits) {
        assert_eq!(self.len, other.len, "bit sets of different lengths");
        let mut w = other.next_in_level(0, 0).map(|i| i / 64);
        while let Some(word) = w {
            let new = self.levels[0][word as usize] | other.levels[0][word as usize];
            self.store_word(word, new);
            w = other.next_in_level(0, (word + 1) * 64).map(|i| i / 64);
        }
    }

    /// Change the length: bits past a shorter length are dropped, new bits are clear.
    pub fn resize(&mut self, len: u64) {
        let mut grown = HBits::new(len);
        let keep = self.len.min(len);
        let mut at = 0;
        while let Some((start, n)) = self.next_run(at, keep, u64::MAX) {
            grown.set_range(start, start + n);
            at = start + n;
        }
        *self = grown;
    }

    /// Bits `[start, start + 8 * out.len())` serialised into `out` (bit `i` of byte `b` is
    /// bit `start + 8 * b + i`); bits past the end serialise as 0. `start` is a multiple of 8.
    pub fn serialize(&self, start: u64, out: &mut [u8]) {
        assert!(start.is_multiple_of(8), "serialisation starts on a byte");
        for (b, byte) in out.iter_mut().enumerate() {
            let first = start + 8 * b as u64;
            *byte = if first >= self.len {
                0
            } else {
                let word = self.levels[0][(first / 64) as usize];
                (word >> (first % 64)) as u8
            };
        }
    }

    /// Load bits `[start, start + 8 * data.len())` from serialised bytes (as
    /// [`HBits::serialize`] writes them); bits past the end are ignored. `start` is a multiple
    /// of 8.
    pub fn deserialize(&mut self, start: u64, data: &[u8]) {
        assert!(start.is_multiple_of(8), "serialisation starts on a byte");
        for (b, &byte) in data.iter().enumerate() {
            let first = start + 8 * b as u64;
            if first >= self.len {
                break;
            }
            let w = first / 64;
            let shift = first % 64;
            let valid = word_mask(0, (self.len - first).min(8)) as u8;
            let old = self.levels[0][w as usize];
            let new = (old & !(0xffu64 << shift)) | (u64::from(byte & valid) << shift);
            self.store_word(w, new);
        }
    }

    /// The level-0 words as little-endian bytes: what QEMU hashes for
    /// `x-debug-block-dirty-bitmap-sha256` (its last level, `unsigned long`s on a 64-bit
    /// little-endian host).
    pub fn leaf_bytes(&self) -> Vec<u8> {
        let words = self.len.div_ceil(64) as usize;
        self.levels[0][..words]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator for the model test.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    fn naive_next(model: &[bool], from: u64, want: bool) -> Option<u64> {
        (from..model.len() as u64).find(|&i| model[i as usize] == want)
    }

    /// Random ranges set and cleared on lengths that straddle every level boundary: every
    /// query agrees with a plain `Vec<bool>`.
    #[test]
    fn agrees_with_a_plain_bit_vector() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for len in [0u64, 1, 63, 64, 65, 4095, 4096, 4097, 262_145, 300_000] {
            let mut h = HBits::new(len);
            let mut model = vec![false; len as usize];
            for round in 0..200 {
                let a = rng.below(len + 1);
                let b = (a + rng.below(if round % 7 == 0 { len + 1 } else { 300 })).min(len);
                let set = rng.below(3) != 0;
                if set {
                    h.set_range(a, b);
                } else {
                    h.reset_range(a, b);
                }
                model[a as usize..b as usize].fill(set);
                let from = rng.below(len + 1);
                assert_eq!(h.count(), model.iter().filter(|b| **b).count() as u64);
                assert_eq!(
                    h.next_set(from),
                    naive_next(&model, from, true),
                    "len {len}"
                );
                assert_eq!(
                    h.next_clear(from),
                    naive_next(&model, from, false),
                    "len {len}"
                );
                if from < len {
                    assert_eq!(h.get(from), model[from as usize]);
                }
            }
            let runs: u64 = h.runs().map(|(_, n)| n).sum();
            assert_eq!(runs, h.count());
        }
    }

    #[test]
    fn the_summaries_follow_words_turning_zero_and_back() {
        let mut h = HBits::new(1 << 20);
        h.set_range(1_000_000, 1_000_001);
        assert_eq!(h.next_set(0), Some(1_000_000));
        h.reset_range(999_000, 1_000_100);
        assert_eq!(h.next_set(0), None);
        assert!(h.levels.iter().all(|l| l.iter().all(|w| *w == 0)));
        h.set_range(5, 6);
        assert_eq!(h.next_set(6), None);
        assert_eq!(h.next_set(0), Some(5));
    }

    #[test]
    fn runs_and_bounded_runs() {
        let mut h = HBits::new(1000);
        h.set_range(10, 20);
        h.set_range(500, 1000);
        assert_eq!(h.runs().collect::<Vec<_>>(), [(10, 10), (500, 500)]);
        assert_eq!(h.next_run(15, 1000, 3), Some((15, 3)));
        assert_eq!(h.next_run(20, 600, 1000), Some((500, 100)));
        assert_eq!(h.next_run(20, 500, 1000), None);
    }

    #[test]
    fn serialises_little_endian_and_round_trips() {
        let mut h = HBits::new(100);
        h.set_range(0, 1);
        h.set_range(9, 11);
        h.set_range(99, 100);
        let mut out = [0u8; 13];
        h.serialize(0, &mut out);
        assert_eq!(out[0], 0b0000_0001);
        assert_eq!(out[1], 0b0000_0110);
        assert_eq!(out[12], 0b0000_1000);
        let mut back = HBits::new(100);
        back.deserialize(0, &out);
        assert_eq!(back, h);
        // Bits past the end in the input are ignored.
        let mut tail = HBits::new(100);
        tail.deserialize(96, &[0xff]);
        assert_eq!(tail.count(), 4);
        assert_eq!(h.leaf_bytes().len(), 16);
    }

    #[test]
    fn union_and_resize() {
        let mut a = HBits::new(5000);
        let mut b = HBits::new(5000);
        a.set_range(0, 10);
        b.set_range(5, 20);
        b.set_range(4000, 4001);
        a.union_with(&b);
        assert_eq!(a.runs().collect::<Vec<_>>(), [(0, 20), (4000, 1)]);
        a.resize(100);
        assert_eq!(a.count(), 20);
        a.resize(10_000);
        assert_eq!(a.count(), 20);
        assert_eq!(a.len(), 10_000);
        a.set_range(9_990, 20_000);
        assert_eq!(a.count(), 30);
    }
}
