//! Sizes for humans, as qemu's `size_to_str` prints them ("1 MiB", "192 KiB", "1.5 GiB").

/// qemu's `size_to_str`: three significant digits and a binary unit.
pub(crate) fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // frexp(val / (1000/1024)) gives the exponent e with 2^(e-1) <= x < 2^e.
    let x = val as f64 / (1000.0 / 1024.0);
    let e = if x < 1.0 {
        0
    } else {
        x.log2().floor() as i32 + 1
    };
    let i = (((e - 1).max(0)) / 10).min(6) as usize;
    let v = val as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", g3(v), SUFFIXES[i])
}

/// printf's `%0.3g` for values below 1000 (trailing zeros dropped).
fn g3(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_qemu() {
        assert_eq!(size_to_str(1 << 20), "1 MiB");
        assert_eq!(size_to_str(197120), "192 KiB");
        assert_eq!(size_to_str(200704), "196 KiB");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(1536 << 20), "1.5 GiB");
    }
}
