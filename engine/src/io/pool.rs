//! A per-thread cache of large buffer allocations, so that a request loop which frees a 1 MiB
//! buffer and asks for another gets memory that is already mapped instead of fresh pages from
//! the allocator (each of which costs the kernel a page fault and a clearing). The contents of
//! a recycled allocation are never seen: [`super::IoBuf`] zeroes or overwrites it before use.
//!
//! Only allocations of at least [`MIN_POOLED`] bytes are kept, by exact layout, at most
//! [`PER_LAYOUT`] of each and [`MAX_POOLED_BYTES`] in all; everything else goes back to the
//! allocator. Which address a buffer gets never changes what the engine does, so determinism
//! is not affected.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

/// Smaller allocations are cheap for the allocator to recycle by itself.
const MIN_POOLED: usize = 64 << 10;
/// Kept allocations of one layout (a backup's or mirror's workers each hold one in flight).
const PER_LAYOUT: usize = 256;
/// Bytes kept in all, per thread.
const MAX_POOLED_BYTES: usize = 160 << 20;

#[derive(Default)]
struct Pool {
    free: Vec<(Layout, NonNull<u8>)>,
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (layout, ptr) in self.free.drain(..) {
            // SAFETY: every pooled pointer came from `alloc::alloc` with this layout.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An allocation for `layout` (non-zero size) whose contents are unspecified: a recycled one
/// when the pool has it.
pub(super) fn take(layout: Layout) -> NonNull<u8> {
    if layout.size() >= MIN_POOLED {
        let hit = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                let i = p.free.iter().rposition(|(l, _)| *l == layout)?;
                p.bytes -= layout.size();
                Some(p.free.swap_remove(i).1)
            })
            .ok()
            .flatten();
        if let Some(ptr) = hit {
            return ptr;
        }
    }
    // SAFETY: the caller passes a layout of non-zero size.
    let raw = unsafe { alloc::alloc(layout) };
    NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

/// Give back an allocation made by [`take`] with the same layout.
pub(super) fn give(layout: Layout, ptr: NonNull<u8>) {
    if layout.size() >= MIN_POOLED {
        let kept = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                let same = p.free.iter().filter(|(l, _)| *l == layout).count();
                if same >= PER_LAYOUT || p.bytes + layout.size() > MAX_POOLED_BYTES {
                    return false;
                }
                p.bytes += layout.size();
                p.free.push((layout, ptr));
                true
            })
            .unwrap_or(false);
        if kept {
            return;
        }
    }
    // SAFETY: `ptr` came from `take`, which allocates with `alloc::alloc(layout)`.
    unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_allocations_are_recycled_small_ones_are_not() {
        let big = Layout::from_size_align(1 << 20, 4096).unwrap();
        let a = take(big);
        give(big, a);
        assert_eq!(take(big), a, "a freed 1 MiB allocation is handed out again");
        give(big, a);
        let other = Layout::from_size_align(2 << 20, 4096).unwrap();
        let b = take(other);
        assert_ne!(b, a, "another layout never gets it");
        give(other, b);
        let small = Layout::from_size_align(4096, 4096).unwrap();
        let s = take(small);
        give(small, s);
        POOL.with(|p| assert!(p.borrow().free.iter().all(|(l, _)| l.size() >= MIN_POOLED)));
    }
}
