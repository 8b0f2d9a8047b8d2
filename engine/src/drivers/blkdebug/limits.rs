//! The device limits blkdebug fakes (`align`, `max-transfer`, `opt-write-zero`,
//! `max-write-zero`, `opt-discard`, `max-discard`): their validation at open, the `Limits` they
//! add to the child's, and the assertions that the generic request path honoured them.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Error, Result};
use crate::io::Limits;
use crate::util::Options;

/// The option names, in the order [`FakeLimits::take`] returns their values.
const KEYS: [&str; 6] = [
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
];

/// The limits blkdebug fakes (0 = not set: the child's apply).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FakeLimits {
    align: u32,
    max_transfer: u32,
    opt_write_zero: u32,
    max_write_zero: u32,
    opt_discard: u32,
    max_discard: u32,
}

/// Refuse `value` unless it is below `INT_MAX`, a multiple of `of` and (if asked) a power of two,
/// with QEMU's "Cannot meet constraints with KEY VALUE".
fn check(key: &str, value: u64, of: u64, power_of_two: bool) -> Result<u32> {
    let ok = value < i32::MAX as u64
        && value.is_multiple_of(of.max(1))
        && (!power_of_two || value.is_power_of_two());
    if ok {
        Ok(value as u32)
    } else {
        Err(Error::generic(format!(
            "Cannot meet constraints with {key} {value}"
        )))
    }
}

impl FakeLimits {
    /// Take the six options (0 when absent), to be validated once the child is open.
    pub(super) fn take(opts: &mut Options) -> Result<[u64; 6]> {
        let mut values = [0; 6];
        for (value, key) in values.iter_mut().zip(KEYS) {
            *value = opts.take_u64(key)?.unwrap_or(0);
        }
        Ok(values)
    }

    /// Validate the values as `blkdebug_open` does, against the child's request alignment.
    pub(super) fn validate(child_align: u64, values: [u64; 6]) -> Result<FakeLimits> {
        let [
            align,
            max_transfer,
            opt_wz,
            max_wz,
            opt_discard,
            max_discard,
        ] = values;
        let opt = |key, v: u64, of: u64, pow2| match v {
            0 => Ok(0),
            v => check(key, v, of, pow2),
        };
        let align = opt("align", align, 1, true)?;
        let base = (align as u64).max(child_align);
        let max_transfer = opt("max-transfer", max_transfer, base, false)?;
        // The generic path rounds with power-of-two masks, so optimal alignments must be powers
        // of two here (QEMU only asks for multiples of the request alignment).
        let opt_write_zero = opt("opt-write-zero", opt_wz, base, true)?;
        let max_write_zero = opt(
            "max-write-zero",
            max_wz,
            base.max(opt_write_zero as u64),
            false,
        )?;
        let opt_discard = opt("opt-discard", opt_discard, base, true)?;
        let max_discard = opt(
            "max-discard",
            max_discard,
            base.max(opt_discard as u64),
            false,
        )?;
        Ok(FakeLimits {
            align,
            max_transfer,
            opt_write_zero,
            max_write_zero,
            opt_discard,
            max_discard,
        })
    }

    /// The node's own limits, before merging with the child's.
    pub(super) fn limits(&self) -> Limits {
        Limits {
            request_align: self.align.max(1),
            max_transfer: self.max_transfer,
            write_zeroes_align: self.opt_write_zero,
            max_write_zeroes: self.max_write_zero,
            discard_align: self.opt_discard,
            max_discard: self.max_discard,
            ..Limits::default()
        }
    }

    /// The generic path guarantees aligned reads and writes within `max-transfer`; blkdebug
    /// checks it, as QEMU's does, so a violation is caught where it happens.
    pub(super) fn assert_rw(&self, offset: u64, len: u64) {
        assert_range("request", offset, len, self.align, self.max_transfer);
    }

    /// Same for write-zeroes, against `opt-write-zero` and `max-write-zero`.
    pub(super) fn assert_zeroes(&self, offset: u64, len: u64) {
        let align = self.align.max(self.opt_write_zero);
        assert_range("write-zeroes", offset, len, align, self.max_write_zero);
    }

    /// Same for discard, against `opt-discard` and `max-discard`.
    pub(super) fn assert_discard(&self, offset: u64, len: u64) {
        let align = self.align.max(self.opt_discard);
        assert_range("discard", offset, len, align, self.max_discard);
    }
}

fn assert_range(what: &str, offset: u64, len: u64, align: u32, max: u32) {
    let align = align.max(1) as u64;
    assert!(
        offset.is_multiple_of(align) && len.is_multiple_of(align),
        "blkdebug: {what} {offset}+{len} is not aligned to {align}"
    );
    assert!(
        max == 0 || len <= max as u64,
        "blkdebug: {what} {offset}+{len} is longer than {max}"
    );
}
