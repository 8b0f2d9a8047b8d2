//! Named dirty bitmaps (QMP `block-dirty-bitmap-*`): a [`DirtyBitmap`] with a name and the
//! states QEMU gives it — recording or disabled, busy (a job owns it), persistent (stored in
//! the image), inconsistent (found in use after a crash: it cannot be trusted), read-only
//! (loaded from an image opened read-only) — and the successor a backup job records into while
//! it reads the bitmap.
//!
//! A [`Bitmap`] is shared (`Rc`): the node's [`NodeBitmaps`](super::NodeBitmaps) lists it, a
//! job holds it while busy. Its state sits behind a `RefCell` that no method keeps borrowed
//! across a call out, so handles stay usable from anywhere on the thread.
//!
//! Successor rules (what a backup job calls; QEMU's `create_successor`/`abdicate`/`reclaim`):
//! * [`Bitmap::create_successor`]: the bitmap becomes busy and stops recording; a fresh clean
//!   successor with its granularity records instead (if the bitmap was recording).
//! * [`Bitmap::abdicate`] (the job succeeded and consumed the bits): the bitmap's bits are
//!   replaced by the successor's, i.e. only writes since the job started remain.
//! * [`Bitmap::reclaim`] (the job failed): the successor's bits are merged back in, so nothing
//!   written is lost.
//!
//! Both end the busy state and restore the recording state the bitmap had.
//!
//! Pure data: imports nothing from the engine but its error type.

use std::cell::{Ref, RefCell};

use crate::error::{Error, Result};

use super::{DirtyBitmap, HBits};

/// Longest bitmap name QEMU accepts (`BDRV_BITMAP_MAX_NAME_SIZE`).
pub const MAX_NAME_LEN: usize = 1023;

/// What a use of a bitmap must not meet (QEMU's `BDRV_BITMAP_*` check flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Change the bits (clear, merge target, remove needs only `NotBusyOrReadonly`).
    Modify,
    /// Read the bits or flip recording (enable, disable, merge source): read-only is fine.
    Read,
    /// Delete the bitmap: an inconsistent one may (and should) be removed.
    Remove,
}

/// A bitmap's flags as loaded from an image (the persistence seam): see [`Bitmap::from_loaded`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadedFlags {
    /// The bitmap records writes (qcow2 `auto` flag).
    pub enabled: bool,
    /// Found marked in use: its bits cannot be trusted (qcow2 `in-use` flag at open).
    pub inconsistent: bool,
    /// The image is open read-only: the bits may not change.
    pub readonly: bool,
}

#[derive(Debug)]
struct State {
    name: String,
    bits: DirtyBitmap,
    disabled: bool,
    busy: bool,
    persistent: bool,
    inconsistent: bool,
    readonly: bool,
    /// Records writes while a job reads this bitmap (see the module doc).
    successor: Option<Box<Successor>>,
}

#[derive(Debug)]
struct Successor {
    bits: DirtyBitmap,
    disabled: bool,
}

/// A named dirty bitmap of one node.
#[derive(Debug)]
pub struct Bitmap {
    state: RefCell<State>,
}

impl Bitmap {
    /// A new clean bitmap over `len` bytes. `granularity` must be a power of two ≥ 512 (the
    /// QMP layer refuses others with QEMU's message; this asserts).
    pub fn new(name: &str, len: u64, granularity: u64, disabled: bool) -> Bitmap {
        assert!(valid_granularity(granularity), "bad bitmap granularity");
        Bitmap::with_bits(name, DirtyBitmap::new(len, granularity), disabled)
    }

    fn with_bits(name: &str, bits: DirtyBitmap, disabled: bool) -> Bitmap {
        Bitmap {
            state: RefCell::new(State {
                name: name.to_string(),
                bits,
                disabled,
                busy: false,
                persistent: false,
                inconsistent: false,
                readonly: false,
                successor: None,
            }),
        }
    }

    /// A persistent bitmap as an image format loaded it: its name, the node's length in
    /// bytes, its granularity, its flags and its bits (`bits.len()` must be
    /// `len.div_ceil(granularity)`). Fails when the granularity or the bit count is wrong, so a
    /// corrupt directory entry becomes an error, not a panic.
    pub fn from_loaded(
        name: &str,
        len: u64,
        granularity: u64,
        flags: LoadedFlags,
        bits: HBits,
    ) -> Result<Bitmap> {
        if !valid_granularity(granularity) {
            return Err(Error::generic(format!(
                "Bitmap '{name}' has an invalid granularity {granularity}"
            )));
        }
        let mut dirty = DirtyBitmap::new(len, granularity);
        if bits.len() != dirty.granules() {
            return Err(Error::generic(format!(
                "Bitmap '{name}' has {} bits, {} expected",
                bits.len(),
                dirty.granules()
            )));
        }
        *dirty.bits_mut() = bits;
        let b = Bitmap::with_bits(name, dirty, !flags.enabled || flags.inconsistent);
        {
            let mut s = b.state.borrow_mut();
            s.persistent = true;
            s.inconsistent = flags.inconsistent;
            s.readonly = flags.readonly;
        }
        Ok(b)
    }

    /// The name.
    pub fn name(&self) -> String {
        self.state.borrow().name.clone()
    }

    /// Bytes per granule.
    pub fn granularity(&self) -> u64 {
        self.state.borrow().bits.granularity()
    }

    /// Bytes covered (the node's length as last seen).
    pub fn len(&self) -> u64 {
        self.state.borrow().bits.len()
    }

    /// True for a bitmap over no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dirty bytes (QMP's `count`).
    pub fn count(&self) -> u64 {
        self.state.borrow().bits.dirty_bytes()
    }

    /// The bits, to read (iterate dirty ranges, serialise).
    pub fn bits(&self) -> Ref<'_, DirtyBitmap> {
        Ref::map(self.state.borrow(), |s| &s.bits)
    }

    /// Writes reaching the node mark this bitmap (or its successor does, while a job runs).
    pub fn recording(&self) -> bool {
        let s = self.state.borrow();
        match &s.successor {
            Some(succ) => !succ.disabled,
            None => !s.disabled,
        }
    }

    /// A job owns the bitmap.
    pub fn busy(&self) -> bool {
        self.state.borrow().busy
    }

    /// Stored in the image.
    pub fn persistent(&self) -> bool {
        self.state.borrow().persistent
    }

    /// Found in use at load: cannot be trusted.
    pub fn inconsistent(&self) -> bool {
        self.state.borrow().inconsistent
    }

    /// Loaded from a read-only image: the bits may not change.
    pub fn readonly(&self) -> bool {
        self.state.borrow().readonly
    }

    /// A job is recording into a successor.
    pub fn has_successor(&self) -> bool {
        self.state.borrow().successor.is_some()
    }

    /// Mark (or unmark) the bitmap as in use by a job: a busy bitmap refuses every QMP verb.
    pub fn set_busy(&self, busy: bool) {
        self.state.borrow_mut().busy = busy;
    }

    /// Set the persistent flag (the QMP layer has asked the format whether it can store it).
    pub fn set_persistent(&self, persistent: bool) {
        self.state.borrow_mut().persistent = persistent;
    }

    /// Mark the bitmap inconsistent (persistent bitmaps only, as QEMU).
    pub fn set_inconsistent(&self) {
        let mut s = self.state.borrow_mut();
        s.inconsistent = true;
        s.disabled = true;
    }

    /// Set or clear the read-only state (the image was reopened).
    pub fn set_readonly(&self, readonly: bool) {
        self.state.borrow_mut().readonly = readonly;
    }

    /// Start (`true`) or stop recording writes.
    pub fn set_enabled(&self, enabled: bool) {
        self.state.borrow_mut().disabled = !enabled;
    }

    /// The bitmap's own recording state (`set_enabled`), whatever a successor does.
    pub fn enabled(&self) -> bool {
        !self.state.borrow().disabled
    }

    /// Put back bits saved from [`Bitmap::bits`] (a transaction undoing its clear or merge).
    pub fn restore_bits(&self, saved: DirtyBitmap) {
        self.state.borrow_mut().bits = saved;
    }

    /// Refuse `use_` with QEMU's message when the bitmap is busy, read-only or inconsistent.
    pub fn check(&self, use_: Use) -> Result<()> {
        let s = self.state.borrow();
        let name = &s.name;
        if s.busy {
            return Err(Error::generic(format!(
                "Bitmap '{name}' is currently in use by another operation and cannot be used"
            )));
        }
        if s.readonly && matches!(use_, Use::Modify | Use::Remove) {
            return Err(Error::generic(format!(
                "Bitmap '{name}' is readonly and cannot be modified"
            )));
        }
        if s.inconsistent && matches!(use_, Use::Modify | Use::Read) {
            return Err(Error::generic(format!(
                "Bitmap '{name}' is inconsistent and cannot be used"
            )));
        }
        Ok(())
    }

    /// A write changed `[offset, offset + bytes)` of a node now `node_len` bytes long: mark it
    /// where recording (the bitmap first follows the node's length).
    pub fn mark(&self, offset: u64, bytes: u64, node_len: u64) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if s.bits.len() != node_len {
            resize(s, node_len);
        }
        match &mut s.successor {
            Some(succ) if !succ.disabled => succ.bits.set(offset, bytes),
            Some(_) => {}
            None if !s.disabled => s.bits.set(offset, bytes),
            None => {}
        }
    }

    /// Follow the node's new length (resize): bits past a shorter end are dropped.
    pub fn resize(&self, len: u64) {
        resize(&mut self.state.borrow_mut(), len);
    }

    /// Make every granule clean (`block-dirty-bitmap-clear`).
    pub fn clear(&self) {
        self.state.borrow_mut().bits.clear();
    }

    /// Set `[offset, offset + bytes)` dirty whatever the recording state (a job handing bits
    /// back, a test).
    pub fn set_range(&self, offset: u64, bytes: u64) {
        self.state.borrow_mut().bits.set(offset, bytes);
    }

    /// Clear `[offset, offset + bytes)` (a job that copied it).
    pub fn reset_range(&self, offset: u64, bytes: u64) {
        self.state.borrow_mut().bits.reset(offset, bytes);
    }

    /// The bits to store in the image: with what a job's successor recorded since the job
    /// started (a job that has not finished yet cannot have consumed anything durably).
    pub fn bits_to_persist(&self) -> HBits {
        let s = self.state.borrow();
        let mut bits = s.bits.bits().clone();
        if let Some(succ) = &s.successor {
            bits.union_with(succ.bits.bits());
        }
        bits
    }

    /// Refuse a merge of `src` into this bitmap as QEMU does when their lengths differ.
    pub fn check_merge_size(&self, src: &Bitmap) -> Result<()> {
        let (dst_len, src_len) = (self.len(), src.len());
        if dst_len != src_len {
            return Err(Error::generic(format!(
                "Bitmaps are of different sizes (destination size is {dst_len}, source size is \
                 {src_len}) and can't be merged"
            )));
        }
        Ok(())
    }

    /// Union `src`'s dirty ranges into this bitmap (granularities may differ: each dirty
    /// byte range of `src` marks every granule of this bitmap it touches). The caller checked
    /// both with [`Bitmap::check`] and the sizes with [`Bitmap::check_merge_size`].
    pub fn merge_from(&self, src: &Bitmap) {
        if std::ptr::eq(self, src) {
            return;
        }
        let ranges = dirty_byte_ranges(&src.bits());
        let mut s = self.state.borrow_mut();
        if s.bits.granularity() == src.granularity() {
            s.bits.bits_mut().union_with(src.bits().bits());
        } else {
            for (offset, end) in ranges {
                s.bits.set(offset, end - offset);
            }
        }
    }

    /// The SHA-256 of the serialised bits, as `x-debug-block-dirty-bitmap-sha256` prints it.
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.bits().bits().leaf_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Start a job's use of the bitmap: it becomes busy and a clean successor records writes
    /// in its place. Refused when busy or when a successor exists.
    pub fn create_successor(&self) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if s.busy {
            return Err(Error::generic(format!(
                "Bitmap '{}' is currently in use by another operation and cannot be used",
                s.name
            )));
        }
        if s.successor.is_some() {
            return Err(Error::generic(
                "Cannot create a successor for a bitmap that already has one",
            ));
        }
        let bits = DirtyBitmap::new(s.bits.len(), s.bits.granularity());
        s.successor = Some(Box::new(Successor {
            bits,
            disabled: s.disabled,
        }));
        s.disabled = true;
        s.busy = true;
        Ok(())
    }

    /// The job consumed the bits: keep only what the successor recorded since it started.
    pub fn abdicate(&self) -> Result<()> {
        let mut s = self.state.borrow_mut();
        let Some(succ) = s.successor.take() else {
            return Err(Error::generic(
                "Cannot relinquish control if there's no successor present",
            ));
        };
        s.bits = succ.bits;
        s.disabled = succ.disabled;
        s.busy = false;
        Ok(())
    }

    /// The job failed: merge what the successor recorded back, losing nothing.
    pub fn reclaim(&self) -> Result<()> {
        let mut s = self.state.borrow_mut();
        let Some(succ) = s.successor.take() else {
            return Err(Error::generic(
                "Cannot reclaim a successor when none is present",
            ));
        };
        s.bits.bits_mut().union_with(succ.bits.bits());
        s.disabled = succ.disabled;
        s.busy = false;
        Ok(())
    }

    /// The QMP `dirty-bitmaps` entry (QEMU 10's members and order).
    pub fn info(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name(),
            "recording": self.recording(),
            "persistent": self.persistent(),
            "busy": self.busy(),
            "granularity": self.granularity(),
            "count": self.count(),
        });
        if self.inconsistent() {
            v["inconsistent"] = serde_json::Value::Bool(true);
        }
        v
    }
}

/// A power of two of at least 512 bytes (and at most 2^31: QMP passes a `uint32`).
pub fn valid_granularity(granularity: u64) -> bool {
    granularity.is_power_of_two() && (512..=1 << 31).contains(&granularity)
}

fn resize(s: &mut State, len: u64) {
    s.bits.resize(len);
    if let Some(succ) = &mut s.successor {
        succ.bits.resize(len);
    }
}

/// The dirty byte ranges `[offset, end)` of `bits`.
fn dirty_byte_ranges(bits: &DirtyBitmap) -> Vec<(u64, u64)> {
    bits.bits()
        .runs()
        .map(|(first, n)| bits.byte_range(first, first + n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_bitmaps_keep_their_bits_and_flags_and_bad_data_is_an_error() {
        let mut bits = HBits::new(16);
        bits.set_range(3, 5);
        let flags = LoadedFlags {
            enabled: true,
            inconsistent: false,
            readonly: true,
        };
        let b = Bitmap::from_loaded("p", 1 << 20, 65536, flags, bits.clone()).unwrap();
        assert!(b.persistent() && b.readonly() && b.recording());
        assert_eq!(b.count(), 2 * 65536);
        assert!(b.check(Use::Read).is_ok());
        assert!(b.check(Use::Modify).is_err());
        let inc = LoadedFlags {
            inconsistent: true,
            ..flags
        };
        let b = Bitmap::from_loaded("p", 1 << 20, 65536, inc, bits.clone()).unwrap();
        assert!(!b.recording(), "an inconsistent bitmap never records");
        assert!(
            b.check(Use::Remove).is_err(),
            "read-only still refuses removal"
        );
        let e = Bitmap::from_loaded("p", 1 << 20, 4096, flags, bits.clone()).unwrap_err();
        assert_eq!(e.message(), "Bitmap 'p' has 16 bits, 256 expected");
        let e = Bitmap::from_loaded("p", 1 << 20, 3000, flags, bits).unwrap_err();
        assert_eq!(e.message(), "Bitmap 'p' has an invalid granularity 3000");
    }

    #[test]
    fn merge_across_granularities_covers_every_dirty_byte() {
        let fine = Bitmap::new("f", 1 << 20, 512, false);
        let coarse = Bitmap::new("c", 1 << 20, 65536, false);
        fine.set_range(70_000, 1);
        coarse.merge_from(&fine);
        assert_eq!(coarse.count(), 65536);
        assert!(coarse.bits().any_dirty(65536, 1));
        coarse.set_range(0, 1);
        fine.merge_from(&coarse);
        assert_eq!(fine.count(), 2 * 65536);
        fine.merge_from(&fine);
        assert_eq!(fine.count(), 2 * 65536);
    }
}
