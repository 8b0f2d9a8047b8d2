//! qemu-io's output formatting: human sizes (`64 KiB`, `1.500 KiB`, `512 bytes`), elapsed
//! times (`00.00 sec`, `0:00:01.24`), the two-line I/O report or its `-C` form, hexdumps, and
//! the `map` / `alloc` lines.
//!
//! Numbers are printed the way C's `printf` prints them (`%f`, `%.3f`, `%.4f`), including
//! `inf` and `-nan` for a zero elapsed time, which the simulator can produce.

/// Format `v` like C's `printf("%.*f", prec, v)`.
pub fn c_fixed(v: f64, prec: usize) -> String {
    if v.is_nan() {
        // The only NaN here is 0/0 (no bytes in no time); glibc on x86, where qemu-io runs,
        // prints it as "-nan". Always print that, so transcripts do not depend on the host.
        return "-nan".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    format!("{v:.prec$}")
}

/// qemu-io's `cvtstr`: a byte count with a binary unit; three decimals for KiB and up, six for
/// plain bytes, and everything from the first ".000" dropped.
pub fn human_size(v: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        ((1u64 << 60) as f64, " EiB"),
        ((1u64 << 50) as f64, " PiB"),
        ((1u64 << 40) as f64, " TiB"),
        ((1u64 << 30) as f64, " GiB"),
        ((1u64 << 20) as f64, " MiB"),
        ((1u64 << 10) as f64, " KiB"),
    ];
    let (mut s, suffix) = match UNITS.iter().find(|(size, _)| v >= *size) {
        Some((size, suffix)) => (c_fixed(v / size, 3), *suffix),
        None => (c_fixed(v, 6), " bytes"),
    };
    if let Some(p) = s.find(".000") {
        s.truncate(p);
    }
    s + suffix
}

/// qemu-io's elapsed time: `SS.CC sec` under a second, `H:MM:SS.CC` from one second on or with
/// `fixed` (the `-C` form). Rounded to hundredths, carrying into the seconds.
pub fn elapsed(ns: u64, fixed: bool) -> String {
    let centis = (ns + 5_000_000) / 10_000_000;
    let (secs, cs) = (centis / 100, centis % 100);
    if fixed || ns >= 1_000_000_000 {
        format!(
            "{}:{:02}:{:02}.{:02}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            cs
        )
    } else {
        format!("{secs:02}.{cs:02} sec")
    }
}

/// How the timing part of reports is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Timing {
    /// Real (env) time, as qemu-io prints it.
    #[default]
    Real,
    /// The form QEMU's iotests filter rewrites timing to (`X ops; XX:XX:XX.X (XXX YYY/sec and
    /// XXX ops/sec)`), so transcripts compare with iotests' `.out` files.
    Filtered,
    /// No timing at all: the second report line and `-C` lines are left out.
    Omit,
}

/// The report after a successful request: `"{op} {done}/{count} bytes at offset {offset}"` and
/// the statistics line, or the single `-C` line.
pub fn report(
    op: &str,
    offset: u64,
    count: u64,
    elapsed_ns: u64,
    machine: bool,
    timing: Timing,
) -> Vec<String> {
    let secs = elapsed_ns as f64 / 1e9;
    let (total, ops) = (count as f64, 1.0f64);
    if machine {
        return match timing {
            Timing::Real => vec![format!(
                "{count},1,{},{},{}",
                elapsed(elapsed_ns, true),
                c_fixed(total / secs, 3),
                c_fixed(ops / secs, 3)
            )],
            Timing::Filtered => vec![format!("{count},1,X:XX:XX.XX,XXX,XXX")],
            Timing::Omit => Vec::new(),
        };
    }
    let mut lines = vec![format!("{op} {count}/{count} bytes at offset {offset}")];
    match timing {
        Timing::Real => lines.push(format!(
            "{}, 1 ops; {} ({}/sec and {} ops/sec)",
            human_size(total),
            elapsed(elapsed_ns, false),
            human_size(total / secs),
            c_fixed(ops / secs, 4)
        )),
        Timing::Filtered => lines.push(format!(
            "{}, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)",
            human_size(total)
        )),
        Timing::Omit => {}
    }
    lines
}

/// qemu-io's `-v` hexdump: 16 bytes a line, offsets from `offset`, ASCII letters and digits
/// shown, everything else as '.'.
pub fn hexdump(offset: u64, data: &[u8]) -> Vec<String> {
    data.chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let mut line = format!("{:08x}:  ", offset + 16 * i as u64);
            for b in chunk {
                line.push_str(&format!("{b:02x} "));
            }
            line.push(' ');
            line.extend(chunk.iter().map(|&b| {
                if b.is_ascii_alphanumeric() {
                    b as char
                } else {
                    '.'
                }
            }));
            line
        })
        .collect()
}

/// One `map` line: a run of `len` bytes at `offset`, allocated or not.
pub fn map_line(offset: u64, len: u64, allocated: bool) -> String {
    format!(
        "{} ({len:#x}) bytes {} at offset {} ({offset:#x})",
        human_size(len as f64),
        if allocated {
            "    allocated"
        } else {
            "not allocated"
        },
        human_size(offset as f64)
    )
}

/// The `alloc` line.
pub fn alloc_line(allocated: u64, count: u64, offset: u64) -> String {
    format!(
        "{allocated}/{count} bytes allocated at offset {}",
        human_size(offset as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: [(f64, &str); 14] = [
            (0.0, "0 bytes"),
            (1.0, "1 bytes"),
            (512.0, "512 bytes"),
            (1023.0, "1023 bytes"),
            (1024.0, "1 KiB"),
            (1025.0, "1.001 KiB"),
            (1536.0, "1.500 KiB"),
            (65535.0, "63.999 KiB"),
            (65536.0, "64 KiB"),
            (1048575.0, "1023.999 KiB"),
            (1048577.0, "1 MiB"),
            (1073741823.0, "1024 MiB"),
            (1610612736.0, "1.500 GiB"),
            (414.250465, "414.250465 bytes"),
        ];
        for (v, s) in cases {
            assert_eq!(human_size(v), s, "{v}");
        }
        assert_eq!(human_size(i64::MAX as f64), "8 EiB");
        assert_eq!(human_size(f64::INFINITY), "inf EiB");
        assert_eq!(human_size(f64::NAN), "-nan bytes");
    }

    #[test]
    fn times() {
        assert_eq!(elapsed(0, false), "00.00 sec");
        assert_eq!(elapsed(260_000_000, false), "00.26 sec");
        assert_eq!(elapsed(997_000_000, false), "01.00 sec");
        assert_eq!(elapsed(1_235_960_000, false), "0:00:01.24");
        assert_eq!(elapsed(61_560_000_000, false), "0:01:01.56");
        assert_eq!(elapsed(3_723_000_000_000, false), "1:02:03.00");
        assert_eq!(elapsed(10_000_000, true), "0:00:00.01");
    }

    #[test]
    fn reports() {
        // 512 bytes in 1.23596 s, as a real qemu-io run printed it.
        let r = report("read", 0, 512, 1_235_960_000, false, Timing::Real);
        assert_eq!(r[0], "read 512/512 bytes at offset 0");
        assert_eq!(
            r[1],
            "512 bytes, 1 ops; 0:00:01.24 (414.252888 bytes/sec and 0.8091 ops/sec)"
        );
        let r = report("wrote", 0, 65536, 1_000_000, false, Timing::Real);
        assert_eq!(
            r[1],
            "64 KiB, 1 ops; 00.00 sec (62.500 MiB/sec and 1000.0000 ops/sec)"
        );
        let r = report("read", 0, 16, 1_000_000, true, Timing::Real);
        assert_eq!(r, vec!["16,1,0:00:00.00,16000.000,1000.000"]);
        let r = report("wrote", 4096, 4096, 0, false, Timing::Filtered);
        assert_eq!(
            r,
            vec![
                "wrote 4096/4096 bytes at offset 4096",
                "4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
            ]
        );
        assert_eq!(report("read", 0, 1, 5, false, Timing::Omit).len(), 1);
        let r = report("read", 0, 0, 0, false, Timing::Real);
        assert_eq!(
            r[1],
            "0 bytes, 1 ops; 00.00 sec (-nan bytes/sec and inf ops/sec)"
        );
    }

    #[test]
    fn dumps_and_maps() {
        let mut data = vec![0xcdu8; 40];
        data[0] = 0xab;
        data[1] = b'A';
        data[2] = b' ';
        let d = hexdump(0, &data);
        assert_eq!(
            d[0],
            "00000000:  ab 41 20 cd cd cd cd cd cd cd cd cd cd cd cd cd  .A.............."
        );
        assert_eq!(d[2], "00000020:  cd cd cd cd cd cd cd cd  ........");
        assert_eq!(hexdump(3, &[0xcd])[0], "00000003:  cd  .");
        assert_eq!(
            map_line(0, 1 << 20, true),
            "1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)"
        );
        assert_eq!(
            map_line(0x210000, 0x1f0000, false),
            "1.938 MiB (0x1f0000) bytes not allocated at offset 2.062 MiB (0x210000)"
        );
        assert_eq!(
            alloc_line(262144, 4128768, 65536),
            "262144/4128768 bytes allocated at offset 64 KiB"
        );
    }
}
