//! `blk check` against `qemu-img check` on the same images: QEMU-written qcow2 images, clean
//! and with injected leaks and corruptions, give identical stdout, stderr and exit status in
//! human, JSON and quiet form; `-r leaks` and `-r all` repair them as QEMU does (identical
//! output and identical image bytes).
//!
//! Skipped with a note when `qemu-img` is not on PATH, unless `BLK_REQUIRE_QEMU=1`.

use std::path::PathBuf;
use std::process::Command;

use crate::common;

/// blk behind a `qemu-img` link: its messages then carry qemu-img's name.
use common::QEMU_IMG as BLK;

fn have_qemu() -> bool {
    crate::common::have_tools(&["qemu-img"], "blk check interop test")
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        common::links();
        let d = std::env::temp_dir().join(format!("blk-cli-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// (exit status, stdout, stderr) of a command run in the directory.
    fn run(&self, prog: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(prog)
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn be64(b: &[u8], o: u64) -> u64 {
    u64::from_be_bytes(b[o as usize..o as usize + 8].try_into().unwrap())
}

/// Variants of a QEMU-written image: clean, a leaked header cluster, a data cluster mapped
/// twice (corruption + leak), an L2 entry past the end of the file.
fn images(dir: &Dir) -> Vec<(&'static str, Vec<u8>)> {
    let (c, _, e) = dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"],
    );
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = dir.run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -P 2 192k 64k",
            "-c",
            "write -P 3 64k 64k",
            "-c",
            "write -c -P 4 1M 64k",
            "b.qcow2",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let base = std::fs::read(dir.0.join("b.qcow2")).unwrap();
    let rb = be64(&base, be64(&base, 48));
    let l2 = be64(&base, be64(&base, 40)) & 0x00ff_ffff_ffff_fe00;
    let mut leak = base.clone();
    leak[rb as usize..rb as usize + 2].copy_from_slice(&3u16.to_be_bytes());
    let mut shared = leak.clone();
    let e0 = be64(&base, l2);
    shared[l2 as usize + 56..l2 as usize + 64].copy_from_slice(&e0.to_be_bytes());
    let mut eof = base.clone();
    eof[l2 as usize + 72..l2 as usize + 80]
        .copy_from_slice(&((1u64 << 63) | (64 << 20)).to_be_bytes());
    vec![
        ("clean", base),
        ("leak", leak),
        ("shared", shared),
        ("eof", eof),
    ]
}

#[test]
fn check_output_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Dir::new("out");
    for (name, img) in images(&dir) {
        std::fs::write(dir.0.join("i.qcow2"), &img).unwrap();
        for extra in [
            &[][..],
            &["--output=json"],
            &["-q"],
            &["-f", "qcow2", "--output", "json"],
        ] {
            let mut args = vec!["check"];
            args.extend_from_slice(extra);
            args.push("i.qcow2");
            let want = dir.run("qemu-img", &args);
            let got = dir.run(BLK, &args);
            assert_eq!(got, want, "{name} {extra:?}");
        }
    }
}

#[test]
fn repair_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Dir::new("repair");
    for (name, img) in images(&dir) {
        for mode in ["leaks", "all"] {
            for out in ["human", "json"] {
                std::fs::write(dir.0.join("q.qcow2"), &img).unwrap();
                std::fs::write(dir.0.join("b.qcow2"), &img).unwrap();
                let o = format!("--output={out}");
                let (qc, qo, qe) = dir.run("qemu-img", &["check", "-r", mode, &o, "q.qcow2"]);
                let (bc, bo, be) = dir.run(BLK, &["check", "-r", mode, &o, "b.qcow2"]);
                let what = format!("{name} -r {mode} {out}");
                assert_eq!(
                    (bc, bo.replace("b.qcow2", "q.qcow2"), be),
                    (qc, qo, qe),
                    "{what}"
                );
                let q = std::fs::read(dir.0.join("q.qcow2")).unwrap();
                let b = std::fs::read(dir.0.join("b.qcow2")).unwrap();
                assert!(q == b, "{what}: repaired images differ");
            }
        }
    }
}

#[test]
fn non_qcow2_and_missing_files() {
    let dir = Dir::new("misc");
    std::fs::write(dir.0.join("raw.img"), vec![0u8; 65536]).unwrap();
    let (c, _, e) = dir.run(BLK, &["check", "raw.img"]);
    assert_eq!(
        (c, e.as_str()),
        (63, "qemu-img: This image format does not support checks\n")
    );
    let (c, _, _) = dir.run(BLK, &["check", "missing.qcow2"]);
    assert_eq!(c, 1);
    let (c, _, _) = dir.run(BLK, &["check", "-r", "some", "raw.img"]);
    assert_eq!(c, 1);
}

/// Images `qemu-img convert -c` wrote with zlib and zstd, cluster sizes 512 B to 2 MiB:
/// `blk check` prints what `qemu-img check` prints (compressed cluster counts included).
#[test]
fn check_of_compressed_images_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Dir::new("compressed");
    // Half compressible text, half zeroes and a pattern: compressed, fragmented and
    // unallocated clusters in one image.
    let mut raw: Vec<u8> = (0..3u32 << 20)
        .map(|i| b"qcow2 zstd deflate "[(i as usize * 7 + (i as usize >> 9)) % 19])
        .collect();
    raw[1 << 20..2 << 20].fill(0);
    raw[(2 << 20) + 4096..(2 << 20) + 200_000].fill(0x33);
    std::fs::write(dir.0.join("src.raw"), &raw).unwrap();
    for ct in ["zlib", "zstd"] {
        for cs in ["512", "4k", "64k", "2M"] {
            let img = format!("{ct}-{cs}.qcow2");
            let opts = format!("cluster_size={cs},compression_type={ct}");
            let (c, _, e) = dir.run(
                "qemu-img",
                &["convert", "-c", "-O", "qcow2", "-o", &opts, "src.raw", &img],
            );
            assert_eq!(c, 0, "{e}");
            for out in ["--output=human", "--output=json"] {
                let want = dir.run("qemu-img", &["check", out, &img]);
                assert!(
                    want.1.contains("compressed"),
                    "{img}: qemu-img reports no compressed clusters: {}",
                    want.1
                );
                let got = dir.run(BLK, &["check", out, &img]);
                assert_eq!(got, want, "{img} {out}");
            }
        }
    }
}

/// Images with the corrupt bit set (as blk or QEMU leave them after refusing a write over
/// metadata), alone and with real damage: every variant of `images`, an L2 entry pointing at
/// the L1 table, and a data cluster whose refcount is 0 (rebuild needed). `blk check` and
/// `-r leaks|all` open them in check mode despite the bit and give qemu-img's output, exit
/// status and repaired bytes (the bit is cleared once no corruption is left).
#[test]
fn repair_of_images_marked_corrupt_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Dir::new("corrupt");
    let mut variants = images(&dir);
    let base = variants[0].1.clone();
    let l1 = be64(&base, 40);
    let l2 = be64(&base, l1) & 0x00ff_ffff_ffff_fe00;
    let mut into_l1 = base.clone();
    into_l1[l2 as usize + 80..l2 as usize + 88].copy_from_slice(&((1u64 << 63) | l1).to_be_bytes());
    variants.push(("into L1", into_l1));
    let rb = be64(&base, be64(&base, 48));
    let data = be64(&base, l2) & 0x00ff_ffff_ffff_fe00;
    let mut zero_ref = base.clone();
    let at = (rb + 2 * (data >> 16)) as usize;
    zero_ref[at..at + 2].copy_from_slice(&0u16.to_be_bytes());
    variants.push(("refcount 0", zero_ref));
    for (name, mut img) in variants {
        img[79] |= 2;
        for mode in [None, Some("leaks"), Some("all")] {
            for out in ["human", "json"] {
                std::fs::write(dir.0.join("q.qcow2"), &img).unwrap();
                std::fs::write(dir.0.join("b.qcow2"), &img).unwrap();
                let o = format!("--output={out}");
                let mut args = vec!["check", o.as_str()];
                if let Some(m) = mode {
                    args.extend_from_slice(&["-r", m]);
                }
                let what = format!("corrupt {name} -r {mode:?} {out}");
                let q = dir.run("qemu-img", &[&args[..], &["q.qcow2"]].concat());
                let b = dir.run(BLK, &[&args[..], &["b.qcow2"]].concat());
                let b = (b.0, b.1.replace("b.qcow2", "q.qcow2"), b.2);
                if q.2.contains("Rebuilding refcount structure") {
                    // Both rebuild; QEMU places the new structure differently and then
                    // repairs the old one as leaks, so only the outcome is compared.
                    assert_eq!((b.0, &b.1), (q.0, &q.1), "{what}: {}", b.2);
                    assert!(b.2.contains("Rebuilding refcount structure"), "{what}");
                    let (c, out, _) = dir.run("qemu-img", &["check", "b.qcow2"]);
                    assert_eq!(c, 0, "{what}: qemu-img check after blk's rebuild: {out}");
                    let (c, out, err) = dir.run("qemu-img", &["compare", "q.qcow2", "b.qcow2"]);
                    assert_eq!(c, 0, "{what}: {out}{err}");
                    assert_eq!(std::fs::read(dir.0.join("b.qcow2")).unwrap()[79] & 2, 0);
                    continue;
                }
                assert_eq!(b, q, "{what}");
                let q = std::fs::read(dir.0.join("q.qcow2")).unwrap();
                let b = std::fs::read(dir.0.join("b.qcow2")).unwrap();
                assert!(q == b, "{what}: images differ afterwards");
                if mode.is_none() {
                    assert_eq!(b[79] & 2, 2, "{what}: a plain check changed the bit");
                }
            }
        }
    }
}
