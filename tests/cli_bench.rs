//! `blk bench` without QEMU: its refusals of bad arguments (qemu-img 10.0.2's messages, which
//! change nothing), the bytes its writes leave against a model of qemu-img bench's offsets
//! (start, step, wrap at the end), its flush schedule and its JSON figures. (The
//! QEMU-compatibility cases in tests/compat/qemu-img-bench.txt compare it with qemu-img.)

use crate::common::{BLK, Dir, QEMU_IMG};

const KIB: usize = 1024;

/// Every refusal: the arguments before the image name, and qemu-img's message.
const REFUSALS: &[(&[&str], &str)] = &[
    (
        &["-c", "0"],
        "Invalid request count specified. Must be between 1 and 2147483647.",
    ),
    (&["-c", "abc"], "Invalid request count specified: 'abc'."),
    (&["-c", "1k"], "Invalid request count specified: '1k'."),
    (
        &["-c", "2147483648"],
        "Invalid request count specified. Must be between 1 and 2147483647.",
    ),
    (
        &["-d", "0"],
        "Invalid queue depth specified. Must be between 1 and 2147483647.",
    ),
    (&["-d", "x"], "Invalid queue depth specified: 'x'."),
    (
        &["-s", "0"],
        "Invalid buffer size specified. Must be between 1 and 2147483647.",
    ),
    (
        &["-s", "2G"],
        "Invalid buffer size specified. Must be between 1 and 2147483647.",
    ),
    (&["-s", "1.5"], "Invalid buffer size specified: '1.5'."),
    (
        &["-S", "-1"],
        "Invalid step size specified. Must be between 0 and 2147483647.",
    ),
    (
        &["-o", "-1"],
        "Invalid offset specified. Must be between 0 and 9223372036854775807.",
    ),
    (&["-o", "xyz"], "Invalid offset specified: 'xyz'."),
    (
        &["-w", "--pattern", "256"],
        "Invalid pattern byte specified. Must be between 0 and 255.",
    ),
    (
        &["-w", "--pattern", "1k"],
        "Invalid pattern byte specified: '1k'.",
    ),
    (
        &["-w", "--flush-interval", "-1"],
        "Invalid flush interval specified. Must be between 0 and 2147483647.",
    ),
    (&["-t", "bogus"], "Invalid cache mode"),
    (&["-i", "foo"], "Invalid aio option: foo"),
    (
        &["--flush-interval", "10"],
        "--flush-interval is only available in write tests",
    ),
    (
        &["-w", "-d", "20", "--flush-interval", "10"],
        "Flush interval can't be smaller than depth",
    ),
    (
        &["-n"],
        "Could not open 'a.raw': aio=native was specified, but it requires cache.direct=on, which was not specified.",
    ),
    (
        &["-w", "-U"],
        "Could not open 'a.raw': force-share=on can only be used with read-only images",
    ),
    (
        &["-f", "foo"],
        "Could not open 'a.raw': Unknown driver 'foo'",
    ),
    (
        &["--output=xml"],
        "--output must be used with human or json as argument.",
    ),
];

#[test]
fn bench_refuses_bad_arguments_as_qemu_img_does() {
    let d = Dir::new("bench-refusals");
    let data = vec![0x11u8; 64 * KIB];
    std::fs::write(d.0.join("a.raw"), &data).unwrap();
    for (args, msg) in REFUSALS {
        let mut all = vec!["bench", "-f", "raw"];
        all.extend_from_slice(args);
        all.push("a.raw");
        let out = d.run(QEMU_IMG, &all);
        assert_eq!(out.code, 1, "{all:?}: {}", out.stderr);
        assert_eq!(out.stderr, format!("qemu-img: {msg}\n"), "{all:?}");
        assert_eq!(out.stdout, "", "{all:?}");
    }
    assert!(
        std::fs::read(d.0.join("a.raw")).unwrap() == data,
        "a refusal changed the image"
    );
    // Usage errors carry the help hint.
    for args in [&["bench"][..], &["bench", "a.raw", "a.raw"]] {
        let out = d.run(QEMU_IMG, args);
        assert_eq!(out.code, 1);
        assert_eq!(
            out.stderr,
            "qemu-img: Expecting one image file name\nTry 'qemu-img bench --help' for more info\n"
        );
    }
    let out = d.run(QEMU_IMG, &["bench", "--n", "a.raw"]);
    assert_eq!(
        out.stderr,
        "qemu-img bench: option '--n' is ambiguous; possibilities: '--native' '--no-drain'\n\
         Try 'qemu-img bench --help' for more info\n"
    );
}

/// The offsets qemu-img bench writes: from `offset`, `step` apart, modulo the image length.
fn model(
    size: usize,
    fill: u8,
    offset: usize,
    step: usize,
    bs: usize,
    count: usize,
    pat: u8,
) -> Vec<u8> {
    let mut want = vec![fill; size];
    let mut off = offset;
    for _ in 0..count {
        want[off..off + bs].fill(pat);
        off = (off + step) % size;
    }
    want
}

#[test]
fn bench_writes_the_pattern_at_each_step_and_wraps() {
    let d = Dir::new("bench-writes");
    std::fs::write(d.0.join("a.raw"), vec![0x11u8; 64 * KIB]).unwrap();
    d.ok(
        BLK,
        &[
            "bench",
            "-f",
            "raw",
            "-w",
            "--pattern",
            "0xab",
            "-c",
            "10",
            "-d",
            "3",
            "-s",
            "4k",
            "-S",
            "12k",
            "-o",
            "4k",
            "a.raw",
        ],
    );
    let want = model(64 * KIB, 0x11, 4 * KIB, 12 * KIB, 4 * KIB, 10, 0xab);
    assert!(
        std::fs::read(d.0.join("a.raw")).unwrap() == want,
        "raw: written bytes differ"
    );

    // qcow2, with drained flushes and 64 KiB requests that wrap past the 1 MiB end.
    d.ok(BLK, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    d.ok(
        BLK,
        &[
            "bench",
            "-f",
            "qcow2",
            "-w",
            "--pattern",
            "7",
            "-c",
            "9",
            "-d",
            "3",
            "-s",
            "64k",
            "-S",
            "192k",
            "-o",
            "64k",
            "--flush-interval",
            "3",
            "b.qcow2",
        ],
    );
    d.ok(
        BLK,
        &["convert", "-f", "qcow2", "-O", "raw", "b.qcow2", "b.raw"],
    );
    let want = model(1024 * KIB, 0, 64 * KIB, 192 * KIB, 64 * KIB, 9, 7);
    assert!(
        std::fs::read(d.0.join("b.raw")).unwrap() == want,
        "qcow2: written bytes differ"
    );
    d.check_clean("b.qcow2");
}

#[test]
fn bench_reports_its_run() {
    let d = Dir::new("bench-report");
    d.ok(BLK, &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"]);
    let out = d.ok(BLK, &["bench", "-c", "200", "-d", "8", "a.qcow2"]);
    let (head, tail) = out.split_once('\n').unwrap();
    assert_eq!(
        head,
        "Sending 200 read requests, 4096 bytes each, 8 in parallel (starting at offset 0, step size 4096)"
    );
    let secs = tail
        .strip_prefix("Run completed in ")
        .and_then(|t| t.strip_suffix(" seconds.\n"))
        .unwrap_or_else(|| panic!("summary line: {tail:?}"));
    let (int, frac) = secs.split_once('.').unwrap();
    assert!(int.parse::<u64>().is_ok() && frac.len() == 3, "{secs}");

    // (count, depth, interval, drain). The counts of requests not yet sent, seen as each
    // request completes, run from count - depth down to 0, and stay 0 for the last depth - 1
    // completions. Draining, one flush at each multiple of the interval among them (the
    // queue empties first, so each is seen once); with --no-drain, one at every completion
    // that sees a multiple, those last ones included.
    let cases = [
        (100u64, 4u64, 10u64, true),
        (100, 4, 7, true),
        (95, 10, 10, true),
        (10, 1, 3, true),
        (100, 4, 7, false),
        (95, 10, 10, false),
    ];
    for (count, depth, interval, drain) in cases {
        let (c, dd, i) = (count.to_string(), depth.to_string(), interval.to_string());
        let mut args = vec!["bench", "-w", "-c", &c, "-d", &dd, "--flush-interval", &i];
        if !drain {
            args.push("--no-drain");
        }
        args.extend(["--output=json", "a.qcow2"]);
        let out = d.ok(BLK, &args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["operation"], "write");
        assert_eq!(v["ops"], count);
        assert_eq!(v["bytes"], count * 4096);
        let tail = if drain { 0 } else { depth - 1 };
        assert_eq!(v["flushes"], (count - depth) / interval + 1 + tail, "{out}");
        let secs = v["seconds"].as_f64().unwrap();
        assert!(secs > 0.0);
        let iops = v["iops"].as_f64().unwrap();
        assert!(
            (iops * secs - count as f64).abs() < 1e-6 * count as f64,
            "{out}"
        );
        let lat = &v["latency-us"];
        let q = |k: &str| lat[k].as_f64().unwrap();
        assert!(
            q("p50") > 0.0 && q("p50") <= q("p99") && q("p99") <= q("p99.9"),
            "{out}"
        );
        assert!(q("p99.9") <= q("max"), "{out}");
    }
    d.check_clean("a.qcow2");
}

#[test]
fn bench_help_lists_its_options() {
    let d = Dir::new("bench-help");
    let out = d.ok(QEMU_IMG, &["bench", "--help"]);
    for opt in [
        "--count",
        "--depth",
        "--offset",
        "--buffer-size",
        "--step-size",
        "--aio",
        "--native",
        "--write",
        "--pattern",
        "--flush-interval",
        "--no-drain",
        "--force-share",
        "--image-opts",
        "--output",
    ] {
        assert!(out.contains(opt), "help lacks {opt}");
    }
}
