//! Number parsing as qemu-io does it.
//!
//! Offsets and lengths go through QEMU's size parser ([`strtosz`]) and must also fit in an
//! `i64`. Pattern bytes and `sleep` use C's `strtol` with base 0 instead (so `010` is octal
//! there).

use crate::error::{Error, Result};
use crate::util::is_c_space;
pub use crate::util::{NumError, strtosz};

/// qemu-io's words for a refused size.
impl NumError {
    /// qemu-io's message for argument `arg`.
    pub fn message(self, arg: &str) -> String {
        match self {
            NumError::Invalid => format!(
                "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}"
            ),
            NumError::TooLarge => format!("Parsing error: argument too large -- {arg}"),
        }
    }
}

/// qemu-io's `cvtnum`: a size that must also fit in an `i64`.
pub fn cvtnum(arg: &str) -> Result<u64, NumError> {
    let v = strtosz(arg)?;
    if v > i64::MAX as u64 {
        return Err(NumError::TooLarge);
    }
    Ok(v)
}

/// C's `strtol(arg, &end, 0)` with the check that the whole string was consumed: `None` when
/// it was not. Saturates at the `i64` limits like `strtol` on a 64-bit host.
pub fn strtol0(arg: &str) -> Option<i64> {
    let t = arg.trim_start_matches(is_c_space);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end != digits.len() {
        return None;
    }
    if end == 0 {
        // No digits at all: strtol consumed nothing, which is only "complete" for "".
        return if arg.is_empty() { Some(0) } else { None };
    }
    let mut v: i128 = 0;
    for c in digits.chars() {
        v = (v * radix as i128 + c.to_digit(radix).expect("checked") as i128).min(1 << 64);
    }
    let v = if neg { -v } else { v };
    Some(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// A pattern byte (`-P`): `strtol` base 0, 0..=255, nothing left over.
pub fn parse_pattern(arg: &str) -> Result<u8> {
    match strtol0(arg) {
        Some(v) if (0..=255).contains(&v) => Ok(v as u8),
        _ => Err(Error::generic(format!("{arg} is not a valid pattern byte"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        let ok = [
            ("0x10", 16),
            ("0X10", 16),
            ("010", 10),
            ("1k", 1024),
            ("1K", 1024),
            ("1b", 1),
            ("1B", 1),
            ("1.5k", 1536),
            (".5k", 512),
            ("1.", 1),
            ("1.0", 1),
            ("1.k", 1024),
            ("1.0b", 1),
            ("0.7k", 717),
            ("0.3k", 307),
            ("1.999k", 2047),
            ("1.0005k", 1025),
            ("0.00048828125k", 1),
            ("+5", 5),
            ("1M", 1 << 20),
            ("1G", 1 << 30),
            ("1T", 1 << 40),
            ("1P", 1 << 50),
            ("1E", 1 << 60),
            ("1.5e", 3 << 59),
            ("9223372036854775807", i64::MAX as u64),
            ("0x7fffffffffffffff", i64::MAX as u64),
        ];
        for (s, v) in ok {
            assert_eq!(cvtnum(s), Ok(v), "{s}");
        }
        let invalid = [
            "x", "k", "", "0x", "0x1k", "0xFFk", "1kb", "1.5", ".5", "0.5", "3.5b", "1e3", "0b11",
            "5x", ".k", "1..5k", "1.5.5k", "1.5ke", "0x1.5", "-x", "-1k", "-0x5", "-", "-1.5",
        ];
        for s in invalid {
            assert_eq!(cvtnum(s), Err(NumError::Invalid), "{s}");
        }
        let large = [
            "8E",
            "16E",
            "9223372036854775808",
            "18446744073709551615",
            "0x8000000000000000",
            "0xffffffffffffffff",
            "7.99999999999999999999e",
            "-1",
            "-0",
        ];
        for s in large {
            assert_eq!(cvtnum(s), Err(NumError::TooLarge), "{s}");
        }
    }

    #[test]
    fn size_messages() {
        assert_eq!(
            NumError::Invalid.message("x"),
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x"
        );
        assert_eq!(
            NumError::TooLarge.message("8E"),
            "Parsing error: argument too large -- 8E"
        );
    }

    #[test]
    fn strtol_base0() {
        assert_eq!(strtol0("0xcd"), Some(0xcd));
        assert_eq!(strtol0("010"), Some(8));
        assert_eq!(strtol0("205"), Some(205));
        assert_eq!(strtol0("-1"), Some(-1));
        assert_eq!(strtol0("08"), None);
        assert_eq!(strtol0("0x"), None);
        assert_eq!(strtol0("1k"), None);
        assert_eq!(strtol0("x"), None);
        assert_eq!(strtol0("99999999999999999999"), Some(i64::MAX));
        assert_eq!(parse_pattern("0xab").unwrap(), 0xab);
        assert_eq!(parse_pattern("0").unwrap(), 0);
        assert_eq!(
            parse_pattern("256").unwrap_err().to_string(),
            "256 is not a valid pattern byte"
        );
        assert!(parse_pattern("-1").is_err());
        assert!(parse_pattern("0x1ff").is_err());
    }
}
