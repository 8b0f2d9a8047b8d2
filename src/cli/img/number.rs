//! Numbers on qemu-img's command line, parsed with the rules qemu-img applies (worked out by
//! running qemu-img 10.0.2, see `tests/compat/qemu-img-dd.txt`): sizes with a unit suffix
//! (`bs=`, `-S`; QEMU's size parser, `engine::util::strtosz`, the one every size goes through) and C
//! `strtoull` integers (`count=`, `skip=`), each checked against a range with qemu-img's two
//! messages: "Invalid NAME specified: 'TEXT'." for text that is not a number, "Invalid NAME
//! specified. Must be between MIN and MAX." for one out of range.

pub(crate) use engine::util::{NumError, strtosz};
use engine::{Error, Result};

/// C's `strtoull` with base 0 over the whole text: leading white space, a sign, then `0x`
/// hexadecimal, `0` octal or decimal digits. A leading `-` negates modulo 2^64, as C does.
pub(crate) fn parse_c_u64(text: &str) -> Result<u64, NumError> {
    let t = text.trim_start_matches(engine::util::is_c_space);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) if h.starts_with(|c: char| c.is_ascii_hexdigit()) => (16, h),
        _ if t.len() > 1 && t.starts_with('0') => (8, &t[1..]),
        _ => (10, t),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(NumError::Invalid);
    }
    let v = u64::from_str_radix(digits, radix).map_err(|_| NumError::TooLarge)?;
    Ok(if neg { v.wrapping_neg() } else { v })
}

/// QEMU's refusal of a size option `name` whose value is not a size.
pub(crate) fn not_a_size(name: &str) -> Error {
    Error::param_invalid(name, "expects a non-negative number below 2^64").hint(
        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
         and exabytes, respectively.",
    )
}

/// A size given as option `name` (`-o name=V`, resize's size), with QEMU's two refusals.
pub(crate) fn size_option(name: &str, v: &str) -> Result<u64> {
    match strtosz(v) {
        Ok(n) => Ok(n),
        Err(NumError::TooLarge) => Err(Error::generic(format!(
            "Value '{v}' is out of range for parameter '{name}'"
        ))),
        Err(NumError::Invalid) => Err(not_a_size(name)),
    }
}

/// Check a parsed number against `[min, max]`, with qemu-img's messages for `name`.
pub(crate) fn in_range(
    name: &str,
    text: &str,
    parsed: Result<u64, NumError>,
    min: u64,
    max: u64,
) -> Result<u64> {
    match parsed {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Err(NumError::Invalid) => Err(Error::generic(format!(
            "Invalid {name} specified: '{text}'."
        ))),
        _ => Err(Error::generic(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_qemu_img() {
        let ok = [
            ("4k", 4096),
            ("1.5k", 1536),
            (".5k", 512),
            ("1.", 1),
            ("1.0", 1),
            ("0x10", 16),
            ("0X1b", 27),
            ("+4", 4),
            ("\t4", 4),
            ("1b", 1),
            ("010", 10),
        ];
        for (t, v) in ok {
            assert_eq!(strtosz(t), Ok(v), "{t}");
        }
        for t in [
            "", "abc", "1x", "1.5", "1.5b", "0x", "0x1k", "0x1.5", "4 ", "4kB", ".", "-", "-1k",
            "-abc", "-0x10", "1e3",
        ] {
            assert_eq!(strtosz(t), Err(NumError::Invalid), "{t}");
        }
        for t in ["-1", " -0", "16E", "99999999999999999999"] {
            assert_eq!(strtosz(t), Err(NumError::TooLarge), "{t}");
        }
    }

    #[test]
    fn c_integers_follow_strtoull() {
        assert_eq!(parse_c_u64("0x10"), Ok(16));
        assert_eq!(parse_c_u64("010"), Ok(8));
        assert_eq!(parse_c_u64(" +5"), Ok(5));
        assert_eq!(parse_c_u64("-0"), Ok(0));
        assert_eq!(parse_c_u64("-1"), Ok(u64::MAX));
        for t in ["08", "0x", "5 ", "+ 5", "1k", "", "1.5"] {
            assert_eq!(parse_c_u64(t), Err(NumError::Invalid), "{t}");
        }
        assert_eq!(parse_c_u64("18446744073709551616"), Err(NumError::TooLarge));
    }

    #[test]
    fn range_messages() {
        let max = i64::MAX as u64;
        assert_eq!(
            in_range("count", "-1", parse_c_u64("-1"), 0, max)
                .unwrap_err()
                .to_string(),
            "Invalid count specified. Must be between 0 and 9223372036854775807."
        );
        assert_eq!(
            in_range("bs", "x", strtosz("x"), 1, i32::MAX as u64)
                .unwrap_err()
                .to_string(),
            "Invalid bs specified: 'x'."
        );
    }
}
