//! `blk bitmap` and the bitmaps of `blk info`, without QEMU: actions in order (a failing one
//! stops the command, what the earlier ones did stays), the refusals, and the listing in both
//! output formats. tests/compat/qemu-img-bitmap.txt compares the same against qemu-img.

use crate::common::Dir;

const BLK: &str = env!("CARGO_BIN_EXE_blk");

fn blk(d: &Dir, args: &[&str]) -> (i32, String, String) {
    let o = d.run(BLK, args);
    (o.code, o.stdout, o.stderr)
}

/// Run `blk io` on the qcow2 image `f` (read-write), wait until a write went through, and kill
/// it (SIGKILL): what a crash leaves.
fn killed_while_open(d: &Dir, f: &str) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(BLK)
        .args(["io", "-f", "qcow2", f])
        .current_dir(&d.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"write 4096 512\n").unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let wrote = out
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.contains("wrote"));
    assert!(wrote, "blk io never wrote");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bitmap_actions_and_info() {
    let d = Dir::new("bitmap");
    assert_eq!(
        blk(&d, &["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]).0,
        0
    );
    assert_eq!(blk(&d, &["bitmap", "--add", "a.qcow2", "b"]).0, 0);
    assert_eq!(
        blk(
            &d,
            &["bitmap", "--add", "-g", "512", "--disable", "a.qcow2", "c"]
        )
        .0,
        0
    );
    // The second --add fails; the first one's bitmap stays.
    let (code, _, err) = blk(&d, &["bitmap", "--add", "--add", "a.qcow2", "d"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "blk: Operation add on bitmap d failed: Bitmap already exists: d\n"
    );
    let (code, _, err) = blk(&d, &["bitmap", "--merge", "b", "--clear", "a.qcow2", "c"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, out, _) = blk(&d, &["info", "a.qcow2"]);
    assert_eq!(code, 0);
    let block = "    lazy refcounts: false
    bitmaps:
        [0]:
            flags:
                [0]: auto
            name: b
            granularity: 65536
        [1]:
            flags:
            name: c
            granularity: 512
        [2]:
            flags:
                [0]: auto
            name: d
            granularity: 65536
    refcount bits: 16
";
    assert!(out.contains(block), "{out}");
    let (_, json, _) = blk(&d, &["info", "--output=json", "a.qcow2"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c", "d"]);
    assert_eq!(blk(&d, &["bitmap", "--remove", "a.qcow2", "c"]).0, 0);
    let (code, out, _) = blk(&d, &["check", "a.qcow2"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("No errors were found on the image."),
        "{out}"
    );
}

#[test]
fn bitmap_refusals() {
    let d = Dir::new("bitmap-bad");
    assert_eq!(
        blk(&d, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]).0,
        0
    );
    assert_eq!(blk(&d, &["create", "-q", "-f", "raw", "r.raw", "1M"]).0, 0);
    let v2 = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "v2.qcow2",
        "1M",
    ];
    assert_eq!(blk(&d, &v2).0, 0);
    let cases: &[(&[&str], &str)] = &[
        (
            &["bitmap", "a.qcow2", "b"],
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ),
        (
            &["bitmap", "--add", "a.qcow2"],
            "Expecting filename and bitmap name",
        ),
        (
            &["bitmap", "--clear", "-g", "64k", "a.qcow2", "b"],
            "granularity only supported with --add",
        ),
        (
            &["bitmap", "-F", "raw", "--add", "a.qcow2", "b"],
            "-F only supported with -b",
        ),
        (
            &["bitmap", "-b", "r.raw", "--add", "a.qcow2", "b"],
            "Merge bitmap source file only supported with --merge",
        ),
        (
            &["bitmap", "--add", "-g", "x", "a.qcow2", "b"],
            "Invalid granularity specified: 'x'.",
        ),
        (
            &["bitmap", "--add", "-g", "1000", "a.qcow2", "b"],
            "Operation add on bitmap b failed: Granularity must be power of 2 and at least 512",
        ),
        (
            &["bitmap", "--remove", "a.qcow2", "nope"],
            "Operation remove on bitmap nope failed: Dirty bitmap 'nope' not found",
        ),
        (
            &["bitmap", "-f", "raw", "--add", "r.raw", "b"],
            "Operation add on bitmap b failed: Can't store persistent bitmaps to ",
        ),
        (
            &["bitmap", "--add", "v2.qcow2", "b"],
            "persistent in 'img0': Cannot store dirty bitmaps in qcow2 v2 files",
        ),
    ];
    for (args, want) in cases {
        let (code, _, err) = blk(&d, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was stored by the refused commands.
    let (_, out, _) = blk(&d, &["info", "a.qcow2"]);
    assert!(!out.contains("bitmaps:"), "{out}");
}

/// `convert --bitmaps` copies the consistent bitmaps with their bits; an inconsistent one
/// (here: left in use by a `blk io` killed while it had the image open read-write) is
/// refused before the target is created, or skipped with a warning.
#[test]
fn convert_copies_bitmaps() {
    let d = Dir::new("bitmap-convert");
    assert_eq!(
        blk(&d, &["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]).0,
        0
    );
    assert_eq!(
        blk(&d, &["bitmap", "--add", "--disable", "a.qcow2", "frozen"]).0,
        0
    );
    assert_eq!(blk(&d, &["bitmap", "--add", "a.qcow2", "live"]).0, 0);
    assert_eq!(
        blk(&d, &["bitmap", "--add", "-g", "4k", "a.qcow2", "src"]).0,
        0
    );
    let copy = ["convert", "-O", "qcow2", "--bitmaps", "a.qcow2", "c.qcow2"];
    assert_eq!(blk(&d, &copy).0, 0);
    let (_, info, _) = blk(&d, &["info", "c.qcow2"]);
    for name in ["frozen", "live", "src"] {
        assert!(info.contains(&format!("name: {name}\n")), "{info}");
    }
    // A clean run records its write and stores the bitmaps clean again; a killed one leaves
    // them in use.
    let w = ["io", "-f", "qcow2", "-c", "write 0 512", "a.qcow2"];
    assert_eq!(blk(&d, &w).0, 0);
    let (_, info, _) = blk(&d, &["info", "a.qcow2"]);
    assert!(!info.contains("in-use"), "{info}");
    killed_while_open(&d, "a.qcow2");
    let (_, info, _) = blk(&d, &["info", "a.qcow2"]);
    assert!(info.contains("in-use"), "{info}");
    // Added afterwards: consistent. QEMU names the newest inconsistent bitmap first.
    assert_eq!(blk(&d, &["bitmap", "--add", "a.qcow2", "late"]).0, 0);
    let (code, _, err) = blk(
        &d,
        &["convert", "-O", "qcow2", "--bitmaps", "a.qcow2", "x.qcow2"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "blk: Cannot copy inconsistent bitmap 'src'\nTry --skip-broken-bitmaps, or use \
         'qemu-img bitmap --remove' to delete it\n"
    );
    assert!(!d.0.join("x.qcow2").exists(), "the target was created");
    let skip = [
        "convert",
        "-O",
        "qcow2",
        "--bitmaps",
        "--skip-broken-bitmaps",
        "a.qcow2",
        "y.qcow2",
    ];
    let (code, _, err) = blk(&d, &skip);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "blk: warning: Skipping inconsistent bitmap 'src'\n\
         blk: warning: Skipping inconsistent bitmap 'live'\n\
         blk: warning: Skipping inconsistent bitmap 'frozen'\n"
    );
    let (_, info, _) = blk(&d, &["info", "y.qcow2"]);
    assert!(
        info.contains("name: late\n") && !info.contains("name: live\n"),
        "{info}"
    );
}
