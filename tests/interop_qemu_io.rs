//! Interop with QEMU's `qemu-io` on raw images, both directions: data written by `blk io`
//! (aligned and unaligned requests, many patterns, zero writes, discards, vectored and aio
//! writes) must read back verified by `qemu-io -c 'read -P ...'`, data written by qemu-io must
//! read back verified by `blk io`, and the same script run by both tools must leave identical
//! files and print the same lines (timing aside).
//!
//! Skipped with a note when `qemu-io` is not on PATH, unless `BLK_REQUIRE_QEMU=1`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

const BLK: &str = env!("CARGO_BIN_EXE_blk");
const SIZE: usize = 4 << 20;

fn have_qemu() -> bool {
    crate::common::have_tools(&["qemu-io"], "qemu-io interop test")
}

/// A temporary image (zero-filled, `SIZE` bytes), removed on drop.
struct Img(PathBuf);

impl Img {
    fn new(tag: &str) -> Img {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("interop-{}-{tag}-{n}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; SIZE]).unwrap();
        Img(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Out {
    stdout: String,
    stderr: String,
    code: i32,
}

/// Run `blk io` (tool "blk") or `qemu-io` with `-f raw`, extra options, commands, image.
fn run(tool: &str, img: &Img, extra: &[&str], cmds: &[String]) -> Out {
    let mut c = if tool == "blk" {
        let mut c = Command::new(BLK);
        c.arg("io");
        c
    } else {
        Command::new("qemu-io")
    };
    c.args(["-f", "raw"]).args(extra);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let o = c.arg(img.path()).output().unwrap();
    Out {
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(-1),
    }
}

/// Replace the timing part of report lines (what iotests' filter does).
fn filter_timing(s: &str) -> String {
    s.lines()
        .map(|l| match l.find(" ops; ") {
            Some(i) if l.ends_with(" ops/sec)") => {
                let cut = l[..i].rfind(' ').map_or(0, |j| j + 1);
                format!("{}X ops; TIMING", &l[..cut])
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deterministic pseudo-random numbers (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A write script and the image content it must produce.
fn workload(seed: u64, ops: usize) -> (Vec<String>, Vec<u8>) {
    let mut rng = Lcg(seed);
    let mut model = vec![0u8; SIZE];
    let mut cmds = Vec::new();
    for i in 0..ops {
        // Mix byte-granular, sector-aligned and 4k-aligned requests.
        let (off, len) = match rng.below(3) {
            0 => (rng.below(SIZE as u64 - 70_000), 1 + rng.below(65_536)),
            1 => (
                512 * rng.below(SIZE as u64 / 512 - 200),
                512 * (1 + rng.below(128)),
            ),
            _ => (
                4096 * rng.below(SIZE as u64 / 4096 - 20),
                4096 * (1 + rng.below(16)),
            ),
        };
        let (o, l) = (off as usize, len as usize);
        let pat = (1 + (i * 37 + rng.below(200) as usize) % 255) as u8;
        match rng.below(8) {
            0 => {
                cmds.push(format!("write -q -z {off} {len}"));
                model[o..o + l].fill(0);
            }
            1 => {
                cmds.push(format!("write -q -z -u {off} {len}"));
                model[o..o + l].fill(0);
            }
            2 if off % 4096 == 0 && len % 4096 == 0 => {
                // Discard punches a hole in the host file: reads return zeroes afterwards.
                cmds.push(format!("discard -q {off} {len}"));
                model[o..o + l].fill(0);
            }
            3 => {
                let a = 1 + rng.below(len);
                cmds.push(format!("writev -q -P {pat:#x} {off} {a} {}", len - a));
                model[o..o + l].fill(pat);
            }
            4 => {
                cmds.push(format!("write -q -f -P {pat} {off} {len}"));
                model[o..o + l].fill(pat);
            }
            _ => {
                cmds.push(format!("write -q -P {pat:#x} {off} {len}"));
                model[o..o + l].fill(pat);
            }
        }
    }
    (cmds, model)
}

/// `read -q -P` commands covering the whole image, one per run of equal bytes.
fn verify_cmds(model: &[u8]) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut start = 0;
    while start < model.len() {
        let b = model[start];
        let mut end = start;
        while end < model.len() && model[end] == b && end - start < (1 << 20) {
            end += 1;
        }
        cmds.push(format!("read -q -P {b:#x} {start} {}", end - start));
        start = end;
    }
    cmds
}

fn assert_clean(what: &str, o: &Out) {
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, "", ""),
        "{what} reported problems"
    );
}

#[test]
fn blk_writes_qemu_io_verifies() {
    if !have_qemu() {
        return;
    }
    for (seed, extra) in [
        (1u64, &[][..]),
        (2, &["-t", "none"][..]),
        (3, &["-t", "writeback"][..]),
    ] {
        let img = Img::new("blk2qemu");
        let (cmds, model) = workload(seed, 80);
        assert_clean("blk io write", &run("blk", &img, extra, &cmds));
        assert!(
            img.bytes() == model,
            "seed {seed}: file differs from the model"
        );
        assert_clean(
            "qemu-io verify",
            &run("qemu-io", &img, &[], &verify_cmds(&model)),
        );
    }
}

#[test]
fn qemu_io_writes_blk_verifies() {
    if !have_qemu() {
        return;
    }
    for (seed, extra) in [(11u64, &[][..]), (12, &["-t", "none"][..])] {
        let img = Img::new("qemu2blk");
        let (cmds, model) = workload(seed, 80);
        assert_clean("qemu-io write", &run("qemu-io", &img, &[], &cmds));
        assert!(
            img.bytes() == model,
            "seed {seed}: qemu-io's file differs from the model"
        );
        assert_clean(
            "blk io verify",
            &run("blk", &img, extra, &verify_cmds(&model)),
        );
    }
    // A mismatch is caught, with qemu-io's message and exit status.
    let img = Img::new("mismatch");
    assert_clean(
        "qemu-io write",
        &run("qemu-io", &img, &[], &["write -q -P 0x5a 1000 3000".into()]),
    );
    let o = run(
        "blk",
        &img,
        &[],
        &[
            "read -q -P 0x5b 1000 3000".into(),
            "read -q -P 0x5a 1000 3000".into(),
        ],
    );
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stdout,
        "Pattern verification failed at offset 1000, 3000 bytes\n"
    );
}

#[test]
fn same_script_same_bytes_and_output() {
    if !have_qemu() {
        return;
    }
    let (a, b) = (Img::new("same-q"), Img::new("same-b"));
    let (cmds, _) = workload(21, 40);
    // Same script, reports on: the lines must match once timing is filtered.
    let cmds: Vec<String> = cmds.iter().map(|c| c.replace(" -q", "")).collect();
    let mut cmds = cmds;
    cmds.extend(
        [
            "read -v 4095 33",
            "readv -P 0 0 1 2",
            "map",
            "alloc 0 64k",
            "length",
            "info",
            "read 0 5M",
            "bogus",
        ]
        .map(String::from),
    );
    let (q, k) = (run("qemu-io", &a, &[], &cmds), run("blk", &b, &[], &cmds));
    assert_eq!(filter_timing(&q.stdout), filter_timing(&k.stdout));
    assert_eq!(q.stderr, k.stderr);
    assert_eq!(q.code, k.code);
    assert!(a.bytes() == b.bytes(), "the two tools left different files");
}

/// Regression (issue: `blk io` without `-f` opened every image as raw, and a write then
/// overwrote a qcow2 header): the format is probed as qemu-io probes it; an image probed as raw
/// prints qemu-io's warning when opened writable, and a write that would put a format
/// signature into its block 0 is refused with EPERM, as qemu-io refuses it.
#[test]
fn io_without_a_format_probes_and_guards_block_0() {
    if !have_qemu() {
        return;
    }
    let d = crate::common::Dir::new("probe");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "p.qcow2", "1M"],
    );
    d.ok(BLK, &["io", "-c", "write -P 0xab 0 4k", "p.qcow2"]);
    let info = d.ok("qemu-img", &["info", "--output=json", "p.qcow2"]);
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    d.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0xab 0 4k", "p.qcow2"],
    );

    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "1M"]);
    let header = std::fs::read(d.0.join("p.qcow2")).unwrap();
    std::fs::write(d.0.join("h.bin"), &header[..512]).unwrap();
    for args in [
        vec!["-c", "write -s h.bin 0 512", "r.img"],
        vec!["-c", "write -P 1 0 4", "r.img"],
        vec!["-c", "write -s h.bin 512 512", "r.img"],
        vec!["-r", "-c", "read 0 512", "r.img"],
    ] {
        let q = d.run("qemu-io", &args);
        let b = d.run(BLK, &[&["io"][..], &args].concat());
        let strip = crate::common::without_timing;
        assert_eq!(
            (q.code, strip(&q.stdout), q.stderr),
            (b.code, strip(&b.stdout), b.stderr),
            "qemu-io {args:?}"
        );
    }
    let raw = std::fs::read(d.0.join("r.img")).unwrap();
    assert_ne!(
        &raw[..4],
        b"QFI\xfb",
        "the signature must never reach block 0"
    );
}
