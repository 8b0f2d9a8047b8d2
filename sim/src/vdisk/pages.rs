//! [`PageStore`]: sparse file contents in 4 KiB copy-on-write pages.
//!
//! A missing page is a hole and reads as zeroes; a present page is allocated ("data"), even if it
//! holds zeroes. Pages are `Rc`s, so cloning a store (durable → current view, crash states) is cheap
//! and a page is copied only when written. Invariant kept by callers: every byte at or beyond the
//! file length is zero (shrinking zeroes the tail of the last page), so growing reads zeroes.

use std::collections::BTreeMap;
use std::rc::Rc;

use engine::io::is_zero;

/// Page size in bytes.
pub(crate) const PAGE: u64 = 4096;

type Page = [u8; PAGE as usize];

/// Sparse bytes in 4 KiB pages.
#[derive(Clone)]
pub(crate) struct PageStore {
    pages: BTreeMap<u64, Rc<Page>>,
    zero: Rc<Page>,
}

impl Default for PageStore {
    fn default() -> PageStore {
        PageStore {
            pages: BTreeMap::new(),
            zero: Rc::new([0; PAGE as usize]),
        }
    }
}

/// Pages `[first, last]` touched by the non-empty byte range `[off, end)`.
fn page_span(off: u64, end: u64) -> (u64, u64) {
    (off / PAGE, (end - 1) / PAGE)
}

impl PageStore {
    /// Copy `buf.len()` bytes from `off` into `buf`; holes read as zeroes.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let end = off + buf.len() as u64;
        let (first, last) = page_span(off, end);
        // Bytes before `filled` are written; holes between pages are zeroed as they are met.
        let mut filled = 0usize;
        for (&idx, page) in self.pages.range(first..=last) {
            let pstart = idx * PAGE;
            let from = (off.max(pstart) - off) as usize;
            let to = (end.min(pstart + PAGE) - off) as usize;
            buf[filled..from].fill(0);
            let in_page = (off + from as u64 - pstart) as usize;
            buf[from..to].copy_from_slice(&page[in_page..in_page + (to - from)]);
            filled = to;
        }
        buf[filled..].fill(0);
    }

    fn page_mut(&mut self, idx: u64) -> &mut Page {
        let zero = &self.zero;
        Rc::make_mut(self.pages.entry(idx).or_insert_with(|| zero.clone()))
    }

    /// Write `data` at `off`, allocating pages.
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = off + pos as u64;
            let idx = abs / PAGE;
            let in_page = (abs % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - pos);
            let chunk = &data[pos..pos + n];
            if n == PAGE as usize {
                // A whole page: zeroes share the zero page, anything else is copied once
                // (not copied from the old page first, as `page_mut` would).
                let page = if is_zero(chunk) {
                    self.zero.clone()
                } else {
                    let mut p = Rc::new([0u8; PAGE as usize]);
                    Rc::get_mut(&mut p)
                        .expect("a new page is unshared")
                        .copy_from_slice(chunk);
                    p
                };
                self.pages.insert(idx, page);
            } else {
                self.page_mut(idx)[in_page..in_page + n].copy_from_slice(chunk);
            }
            pos += n;
        }
    }

    /// Make `[off, off + len)` read as zeroes. With `unmap`, fully covered pages become holes;
    /// without it every touched page ends up allocated.
    pub(crate) fn zero(&mut self, off: u64, len: u64, unmap: bool) {
        if len == 0 {
            return;
        }
        let end = off + len;
        let (first, last) = page_span(off, end);
        if unmap {
            let touched: Vec<u64> = self.pages.range(first..=last).map(|(&i, _)| i).collect();
            for idx in touched {
                let pstart = idx * PAGE;
                let from = off.max(pstart);
                let to = end.min(pstart + PAGE);
                if from == pstart && to == pstart + PAGE {
                    self.pages.remove(&idx);
                } else {
                    self.page_mut(idx)[(from - pstart) as usize..(to - pstart) as usize].fill(0);
                }
            }
        } else {
            for idx in first..=last {
                let pstart = idx * PAGE;
                let from = off.max(pstart);
                let to = end.min(pstart + PAGE);
                match self.pages.get(&idx) {
                    // Whole page: share the zero page instead of copying.
                    _ if from == pstart && to == pstart + PAGE => {
                        self.pages.insert(idx, self.zero.clone());
                    }
                    Some(_) => {
                        self.page_mut(idx)[(from - pstart) as usize..(to - pstart) as usize].fill(0)
                    }
                    None => {
                        self.pages.insert(idx, self.zero.clone());
                    }
                }
            }
        }
    }

    /// Allocate every page of `[off, off + len)` that is a hole (contents unchanged).
    pub(crate) fn preallocate(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = page_span(off, off + len);
        for idx in first..=last {
            if !self.pages.contains_key(&idx) {
                self.pages.insert(idx, self.zero.clone());
            }
        }
    }

    /// Drop everything at or beyond `len`, zeroing the tail of the page that holds `len`.
    pub(crate) fn truncate(&mut self, len: u64) {
        let keep = len.div_ceil(PAGE);
        drop(self.pages.split_off(&keep));
        if len & (PAGE - 1) != 0 {
            let idx = len / PAGE;
            if self.pages.contains_key(&idx) {
                self.page_mut(idx)[(len % PAGE) as usize..].fill(0);
            }
        }
    }

    /// Make page `idx` what it is in `from`: the same page (shared, copy-on-write) or a hole.
    pub(crate) fn share_page(&mut self, from: &PageStore, idx: u64) {
        match from.pages.get(&idx) {
            Some(page) => {
                self.pages.insert(idx, page.clone());
            }
            None => {
                self.pages.remove(&idx);
            }
        }
    }

    /// True when page `idx` is allocated.
    pub(crate) fn is_allocated(&self, idx: u64) -> bool {
        self.pages.contains_key(&idx)
    }

    /// Whether `off` is in an allocated page, and how many bytes from `off` up to `end` share that
    /// state.
    pub(crate) fn extent(&self, off: u64, end: u64) -> (bool, u64) {
        debug_assert!(off < end);
        let start_idx = off / PAGE;
        let allocated = self.is_allocated(start_idx);
        let mut next = start_idx + 1;
        if allocated {
            for (&idx, _) in self.pages.range(start_idx + 1..) {
                if idx != next || idx * PAGE >= end {
                    break;
                }
                next += 1;
            }
        } else {
            next = self
                .pages
                .range(start_idx..)
                .next()
                .map_or(u64::MAX / PAGE, |(&i, _)| i);
        }
        let stop = next.saturating_mul(PAGE).min(end);
        (allocated, stop - off)
    }

    /// Number of holes among the pages touched by `[off, off + len)` (pages a write would
    /// allocate).
    pub(crate) fn holes_in(&self, off: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let (first, last) = page_span(off, off + len);
        (last - first + 1) - self.pages.range(first..=last).count() as u64
    }

    /// Allocated bytes (whole pages).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Allocated pages in index order.
    pub(crate) fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pages.iter().map(|(&i, p)| (i, &p[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_zero_pages_share_the_zero_page_and_stay_allocated() {
        let mut s = PageStore::default();
        s.write(0, &[0u8; 2 * PAGE as usize]);
        s.write(2 * PAGE, &[9u8; PAGE as usize]);
        assert!(s.is_allocated(0) && s.is_allocated(1) && s.is_allocated(2));
        assert!(Rc::ptr_eq(&s.pages[&0], &s.zero) && Rc::ptr_eq(&s.pages[&1], &s.zero));
        // Writing into a shared zero page copies it first: the zero page stays zero.
        s.write(PAGE + 10, &[5u8; 4]);
        assert!(s.zero.iter().all(|b| *b == 0));
        let mut buf = [0u8; 16];
        s.read(PAGE + 8, &mut buf);
        assert_eq!(&buf[..8], &[0, 0, 5, 5, 5, 5, 0, 0]);
        s.read(2 * PAGE, &mut buf);
        assert_eq!(buf, [9u8; 16]);
    }

    #[test]
    fn write_read_zero_truncate() {
        let mut s = PageStore::default();
        s.write(4000, &[7u8; 200]);
        assert!(s.is_allocated(0) && s.is_allocated(1) && !s.is_allocated(2));
        let mut buf = [0u8; 300];
        s.read(3950, &mut buf);
        assert!(buf[..50].iter().all(|&b| b == 0));
        assert!(buf[50..250].iter().all(|&b| b == 7));
        s.zero(0, 8192, true);
        assert_eq!(s.allocated_bytes(), 0);
        s.write(0, &[1u8; 10000]);
        s.truncate(5000);
        assert_eq!(s.allocated_bytes(), 2 * PAGE);
        let mut tail = [9u8; 4096];
        s.read(4096, &mut tail);
        assert!(tail[..904].iter().all(|&b| b == 1) && tail[904..].iter().all(|&b| b == 0));
    }

    #[test]
    fn extents_and_holes() {
        let mut s = PageStore::default();
        s.write(PAGE * 2, &[1u8; 2 * PAGE as usize]);
        assert_eq!(s.extent(0, 10 * PAGE), (false, 2 * PAGE));
        assert_eq!(s.extent(2 * PAGE + 5, 10 * PAGE), (true, 2 * PAGE - 5));
        assert_eq!(s.extent(4 * PAGE, 10 * PAGE), (false, 6 * PAGE));
        assert_eq!(s.holes_in(0, 5 * PAGE), 3);
        s.zero(PAGE * 2 + 1, PAGE * 3, false);
        assert_eq!(s.holes_in(0, 6 * PAGE), 2);
    }
}
