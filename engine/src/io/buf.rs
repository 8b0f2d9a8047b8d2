//! Owned, alignment-aware I/O buffers.
//!
//! A request owns its buffer and hands it down the stack by value; the layer that completes the
//! request hands it back with the result ([`BufResult`]). A completion-based backend (io_uring)
//! therefore always holds the memory the kernel writes into, even if the future that submitted
//! the request is dropped: nothing can free a buffer that is in flight.

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;

use super::pool;
use crate::error::Result;

/// Alignment of buffers made without an explicit one: enough for `O_DIRECT` on every common
/// device (4 KiB logical blocks).
pub const DEFAULT_BUF_ALIGN: usize = 4096;

/// The buffer handed back by a read or write, with the outcome.
pub type BufResult = (IoBuf, Result<()>);

/// A heap buffer with a guaranteed start alignment. Its contents start zeroed.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

// SAFETY: IoBuf uniquely owns its allocation (like Vec<u8>); moving it to a worker thread for a
// blocking pread/pwrite is sound.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// A zeroed buffer of `len` bytes aligned to [`DEFAULT_BUF_ALIGN`].
    pub fn new(len: usize) -> IoBuf {
        IoBuf::with_align(len, DEFAULT_BUF_ALIGN)
    }

    /// A zeroed buffer of `len` bytes whose start is aligned to `align` (a power of two).
    pub fn with_align(len: usize, align: usize) -> IoBuf {
        assert!(
            align.is_power_of_two(),
            "buffer alignment {align} is not a power of two"
        );
        if len == 0 {
            // A dangling but aligned pointer: never dereferenced for a zero-length slice.
            let ptr = NonNull::new(align as *mut u8).expect("alignment is non-zero");
            return IoBuf { ptr, len, align };
        }
        let layout = Layout::from_size_align(len, align).expect("buffer layout");
        let ptr = pool::take(layout);
        // SAFETY: `ptr` is valid for `len` bytes; zeroing initialises every one of them.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        IoBuf { ptr, len, align }
    }

    /// A buffer holding a copy of `data` (copied once, not zeroed first).
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let len = data.len();
        if len == 0 {
            return IoBuf::new(0);
        }
        let layout = Layout::from_size_align(len, DEFAULT_BUF_ALIGN).expect("buffer layout");
        let ptr = pool::take(layout);
        // SAFETY: `ptr` is a fresh allocation of `len` bytes that `data` cannot overlap; after
        // the copy every byte of it is initialised.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), len) };
        IoBuf {
            ptr,
            len,
            align: DEFAULT_BUF_ALIGN,
        }
    }

    /// A buffer of `len` bytes all set to `byte`.
    pub fn filled(len: usize, byte: u8) -> IoBuf {
        let mut buf = IoBuf::new(len);
        if byte != 0 {
            buf.as_mut_slice().fill(byte);
        }
        buf
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The alignment of the start of the buffer.
    pub fn align(&self) -> usize {
        self.align
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Raw pointer for a backend that submits the buffer to the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// True when every byte is zero (detect-zeroes, zero-cluster detection).
    pub fn is_zero(&self) -> bool {
        is_zero(self.as_slice())
    }
}

/// True when every byte of `data` is zero. Word-at-a-time: this runs on every write when
/// detect-zeroes is on.
pub fn is_zero(data: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid `u64`, and align_to only reinterprets the aligned
    // middle of the slice.
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    // OR-folding 64 bytes at a time lets the compiler use vector registers; stopping at the
    // first non-zero block keeps data buffers cheap to reject.
    head.iter().all(|&b| b == 0)
        && words
            .chunks(8)
            .all(|block| block.iter().fold(0, |acc, &w| acc | w) == 0)
        && tail.iter().all(|&b| b == 0)
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            let layout = Layout::from_size_align(self.len, self.align).expect("buffer layout");
            pool::give(layout, self.ptr);
        }
    }
}

impl Clone for IoBuf {
    fn clone(&self) -> IoBuf {
        let mut copy = IoBuf::with_align(self.len, self.align);
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBuf({} bytes, align {})", self.len, self.align)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_zeroing() {
        for align in [1usize, 512, 4096, 65536] {
            let buf = IoBuf::with_align(1000, align);
            assert_eq!(buf.as_slice().as_ptr() as usize % align, 0);
            assert!(buf.is_zero());
        }
        let empty = IoBuf::new(0);
        assert!(empty.is_empty() && empty.is_zero());
    }

    #[test]
    fn zero_detection_finds_any_byte() {
        let mut buf = IoBuf::new(4099);
        for pos in [0, 7, 8, 4095, 4098] {
            buf.as_mut_slice()[pos] = 1;
            assert!(!buf.is_zero(), "byte at {pos} missed");
            buf.as_mut_slice()[pos] = 0;
        }
        assert!(buf.is_zero());
    }
}
