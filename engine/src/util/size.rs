//! The one size parser, QEMU's (`qemu_strtosz`), behind every size the engine and the tools
//! read: option values (`cache-size=1M`), qemu-img's sizes and rates, qemu-io's offsets and
//! lengths. Decimal (leading zeros stay decimal: `010` is 10) or `0x` hex (no suffix), a `+`
//! sign, an optional fraction that needs a unit suffix unless it is zero (`1.5` fails, `1.0`
//! and `1.5k` work, the fraction rounds to the nearest byte), one suffix `b k M G T P E`
//! (powers of 1024, either case), nothing else: leading white space is skipped, trailing is
//! not a number. A negative number is out of range; anything else that does not parse is
//! invalid, and each caller words the two its own way.

/// Why a size argument was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    /// Not a number, or a bad suffix.
    Invalid,
    /// Out of range (negative, or above `i64::MAX`).
    TooLarge,
}

/// White space as C's `isspace` sees it.
pub fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn unit(c: char) -> Option<u64> {
    Some(match c {
        'b' | 'B' => 1,
        'k' | 'K' => 1 << 10,
        'm' | 'M' => 1 << 20,
        'g' | 'G' => 1 << 30,
        't' | 'T' => 1 << 40,
        'p' | 'P' => 1 << 50,
        'e' | 'E' => 1 << 60,
        _ => return None,
    })
}

/// QEMU's size parser (`qemu_strtosz`): any value up to `u64::MAX`, or why not.
pub fn strtosz(arg: &str) -> Result<u64, NumError> {
    let t = arg.trim_start_matches(is_c_space);
    if let Some(rest) = t.strip_prefix('-') {
        // The integer parser takes a sign and the size parser then rejects negative values as
        // out of range; anything else after the sign is not a number it could take.
        return if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            Err(NumError::TooLarge)
        } else {
            Err(NumError::Invalid)
        };
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NumError::Invalid);
        }
        return u64::from_str_radix(hex, 16).map_err(|_| NumError::TooLarge);
    }
    let int_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (int_part, mut rest) = t.split_at(int_end);
    let mut frac_part = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let end = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        frac_part = &after_dot[..end];
        rest = &after_dot[end..];
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(NumError::Invalid);
    }
    let mut chars = rest.chars();
    let mul = match chars.next() {
        None => 1,
        Some(c) => unit(c).ok_or(NumError::Invalid)?,
    };
    if rest.is_empty() || chars.next().is_none() {
        // fine: no suffix, or exactly one suffix letter
    } else {
        return Err(NumError::Invalid);
    }
    let has_unit = !rest.is_empty() && mul != 1;
    let int: u64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| NumError::TooLarge)?
    };
    let frac: f64 = if frac_part.is_empty() {
        0.0
    } else {
        format!("0.{frac_part}")
            .parse()
            .map_err(|_| NumError::Invalid)?
    };
    if frac != 0.0 && !has_unit {
        return Err(NumError::Invalid);
    }
    let whole = int.checked_mul(mul).ok_or(NumError::TooLarge)?;
    let part = (frac * mul as f64).round();
    if part >= u64::MAX as f64 {
        return Err(NumError::TooLarge);
    }
    whole.checked_add(part as u64).ok_or(NumError::TooLarge)
}

/// [`strtosz`] for callers with one message for both refusals.
pub fn parse_size(arg: &str) -> Option<u64> {
    strtosz(arg).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        let ok = [
            ("64k", 65536),
            ("1M", 1 << 20),
            ("1.5G", 3 << 29),
            ("512", 512),
            ("0x10", 16),
            ("010", 10),
            ("+5", 5),
            ("1.0", 1),
            ("1.0005k", 1025),
            (" 1k", 1024),
            ("18446744073709551615", u64::MAX),
        ];
        for (s, v) in ok {
            assert_eq!(strtosz(s), Ok(v), "{s}");
        }
        for s in ["x", "", "1.5", "1k ", "1kb", "0x1k", "-x", "-1k"] {
            assert_eq!(strtosz(s), Err(NumError::Invalid), "{s}");
        }
        for s in ["16E", "-1", "18446744073709551616", "0x10000000000000000"] {
            assert_eq!(strtosz(s), Err(NumError::TooLarge), "{s}");
            assert_eq!(parse_size(s), None);
        }
    }
}
