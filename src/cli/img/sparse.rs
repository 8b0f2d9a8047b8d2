//! convert's sparse detection (`-S`): which parts of a data chunk are written and which are
//! left as holes, decided as qemu-img decides them, so the target's allocation map is the one
//! qemu-img leaves.
//!
//! The chunk is looked at in 512-byte sectors. A leading run of zero sectors is skipped; a
//! run of data is written together with the zero runs after it that are shorter than the
//! minimum sparse size (`-S`, default 4 KiB), so small holes do not split writes. Run ends
//! are moved to multiples of the alignment (the largest power of two not above the minimum):
//! data ends move up, zero ends move down, and a zero run that would vanish by moving its
//! end down counts as data.

const SECTOR: usize = 512;

/// Sparse detection settings, in sectors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sparse {
    /// Zero runs at least this long (after a data run) become holes; 0 disables detection.
    pub min: u64,
    /// Run ends are aligned to this (a power of two).
    pub align: u64,
}

impl Sparse {
    /// From `-S`'s size in bytes (a multiple of 512).
    pub fn new(min_bytes: u64) -> Sparse {
        let min = min_bytes / SECTOR as u64;
        let align = if min == 0 {
            1
        } else {
            1 << (63 - min.leading_zeros())
        };
        Sparse { min, align }
    }

    /// The byte ranges of `data` (whose first byte is at guest offset `pos`, a sector
    /// boundary) to write; the rest is left unwritten.
    pub fn runs(&self, data: &[u8], pos: u64) -> Vec<(usize, usize)> {
        let n = data.len().div_ceil(SECTOR) as u64;
        if self.min == 0 {
            return vec![(0, data.len())];
        }
        let (mut out, mut at) = (Vec::new(), 0u64);
        while at < n {
            let (len, write) = self.run_min(data, pos / SECTOR as u64, at, n);
            if write {
                let end = ((at + len) as usize * SECTOR).min(data.len());
                match out.last_mut() {
                    Some((_, e)) if *e == at as usize * SECTOR => *e = end,
                    _ => out.push((at as usize * SECTOR, end)),
                }
            }
            at += len;
        }
        out
    }

    /// From sector `at` of the chunk: a data run with the short zero runs after it (`true`),
    /// or a zero run to skip (`false`), and its length in sectors.
    fn run_min(&self, data: &[u8], first: u64, at: u64, n: u64) -> (u64, bool) {
        let min = self.min.min(n - at);
        let (len, write) = self.run(data, first, at, n);
        if !write {
            return (len, false);
        }
        let (mut used, mut checked) = (len, len);
        while at + checked < n {
            let (len, write) = self.run(data, first, at + checked, n);
            checked += len;
            if write {
                used = checked;
            } else if len >= min {
                break;
            }
        }
        (used, true)
    }

    /// The run of equal zero-ness starting at sector `at`, with its end aligned.
    fn run(&self, data: &[u8], first: u64, at: u64, n: u64) -> (u64, bool) {
        let zero = |s: u64| {
            let from = s as usize * SECTOR;
            data[from..(from + SECTOR).min(data.len())]
                .iter()
                .all(|&b| b == 0)
        };
        let mut is_zero = zero(at);
        let mut i = 1;
        while at + i < n && zero(at + i) == is_zero {
            i += 1;
        }
        if at + i == n {
            return (i, !is_zero);
        }
        let tail = (first + at + i) & (self.align - 1);
        if tail != 0 {
            if is_zero && i <= tail {
                is_zero = false;
            }
            if is_zero {
                i -= tail;
            } else {
                i = (i + self.align - tail).min(n - at);
            }
        }
        (i, !is_zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(parts: &[(usize, u8)]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|&(len, b)| std::iter::repeat_n(b, len))
            .collect()
    }

    #[test]
    fn default_skips_aligned_zero_blocks() {
        let s = Sparse::new(4096);
        let data = chunk(&[(4096, 1), (8192, 0), (512, 2), (3584, 0), (4096, 0)]);
        assert_eq!(s.runs(&data, 0), vec![(0, 4096), (12288, 16384)]);
    }

    #[test]
    fn short_holes_inside_data_are_written() {
        // 1 MiB minimum: the 64 KiB zero run after data is written with it.
        let s = Sparse::new(1 << 20);
        let data = chunk(&[(65536, 5), (65536, 0), (1024, 6)]);
        assert_eq!(s.runs(&data, 0), vec![(0, data.len())]);
    }

    #[test]
    fn zero_minimum_writes_everything() {
        let data = vec![0u8; 8192];
        assert_eq!(Sparse::new(0).runs(&data, 0), vec![(0, 8192)]);
    }

    #[test]
    fn unaligned_zero_tail_counts_as_data() {
        let s = Sparse::new(4096);
        // A data sector, then 3 zero sectors ending at sector 4 (not 4 KiB aligned), then data.
        let data = chunk(&[(512, 1), (1536, 0), (512, 1), (5632, 0)]);
        assert_eq!(s.runs(&data, 0), vec![(0, 4096)]);
    }
}
