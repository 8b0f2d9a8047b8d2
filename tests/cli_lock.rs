//! Image locks between blk and QEMU's tools, as real processes on one image: while a QEMU
//! process holds it, blk's qemu-img and qemu-io are refused (or let in with `-U`, or with
//! `locking=off`) with the same words and status as QEMU's own tools; while `blk serve` holds
//! it, QEMU's tools see exactly what they see while qemu-storage-daemon holds it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BLK, Dir, QEMU_IMG, QEMU_IO, have_tools, without_timing};

/// A process holding the image, killed on drop.
struct Holder(Child);

impl Holder {
    /// Start `prog args` in `dir` and wait until `img` is locked: until `/proc/locks` lists a
    /// lock on its inode (a probe that opened the image itself could refuse the holder's open).
    fn start(dir: &Dir, prog: &str, args: &[&str], img: &str) -> Holder {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(dir.0.join(img)).unwrap().ino();
        let child = Command::new(prog)
            .args(args)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut h = Holder(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let locked = || {
            std::fs::read_to_string("/proc/locks")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&format!(":{ino} ")))
        };
        while !locked() {
            assert!(
                Instant::now() < deadline,
                "{prog} {args:?} never locked {img} (exited: {:?})",
                h.0.try_wait()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The holder takes its bytes one after the other: let it finish.
        std::thread::sleep(Duration::from_millis(100));
        h
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (status, stdout without timing, stderr) of `prog args` in `dir`, with the tool's own name
/// as the message prefix either way.
fn outcome(dir: &Dir, prog: &str, args: &[&str]) -> (i32, String, String) {
    let o = dir.run(prog, args);
    (o.code, without_timing(&o.stdout), o.stderr)
}

/// Every case, run by `tool` (qemu-img or qemu-io: QEMU's, or blk through its link).
const CASES: &[(&str, &[&str])] = &[
    ("img", &["info", "a.qcow2"]),
    ("img", &["info", "-U", "a.qcow2"]),
    ("img", &["check", "a.qcow2"]),
    ("img", &["resize", "a.qcow2", "2M"]),
    ("img", &["create", "-f", "qcow2", "a.qcow2", "1M"]),
    ("img", &["convert", "-O", "raw", "a.qcow2", "c.raw"]),
    ("img", &["convert", "-U", "-O", "raw", "a.qcow2", "c.raw"]),
    (
        "img",
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.driver=file,file.filename=a.qcow2,file.locking=off",
        ],
    ),
    ("io", &["-c", "read 0 512", "a.qcow2"]),
    ("io", &["-r", "-c", "read 0 512", "a.qcow2"]),
    ("io", &["-U", "-c", "read 0 512", "a.qcow2"]),
    ("io", &["-r", "-U", "-c", "read 0 512", "a.qcow2"]),
    ("io", &["-r", "-c", "reopen -w", "a.qcow2"]),
];

/// Run every case with QEMU's tools and with blk's, while `holder` holds the image.
fn compare_under(dir: &Dir, holder: &[&str]) {
    let _h = Holder::start(dir, "qemu-io", holder, "a.qcow2");
    let before = std::fs::read(dir.0.join("a.qcow2")).unwrap();
    for (tool, args) in CASES {
        let (qemu, blk) = match *tool {
            "img" => ("qemu-img", QEMU_IMG),
            _ => ("qemu-io", QEMU_IO),
        };
        let want = outcome(dir, qemu, args);
        let _ = std::fs::remove_file(dir.0.join("c.raw"));
        let got = outcome(dir, blk, args);
        let _ = std::fs::remove_file(dir.0.join("c.raw"));
        assert_eq!(
            got, want,
            "{qemu} {args:?} while qemu-io {holder:?} holds the image"
        );
    }
    // Nothing refused changed the image (a refused create never truncates it).
    assert_eq!(std::fs::read(dir.0.join("a.qcow2")).unwrap(), before);
}

#[test]
fn blk_tools_are_refused_as_qemus_while_qemu_holds_the_image() {
    if !have_tools(&["qemu-img", "qemu-io"], "image locks against QEMU") {
        return;
    }
    let dir = Dir::new("lock-qemu-holds");
    dir.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    // A writer, then a reader, holding it.
    compare_under(&dir, &["-c", "sleep 60000", "a.qcow2"]);
    compare_under(&dir, &["-r", "-c", "sleep 60000", "a.qcow2"]);
}

#[test]
fn qemu_sees_blk_serve_holding_an_image_as_qemu_storage_daemon() {
    if !have_tools(
        &["qemu-img", "qemu-io", "qemu-storage-daemon"],
        "image locks of blk serve",
    ) {
        return;
    }
    let dir = Dir::new("lock-serve-holds");
    dir.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    let blockdevs = [
        "--blockdev",
        "driver=file,filename=a.qcow2,node-name=f",
        "--blockdev",
        "driver=qcow2,file=f,node-name=q",
    ];
    let cases: &[(&str, &[&str])] = &[
        ("qemu-img", &["info", "a.qcow2"]),
        ("qemu-img", &["info", "-U", "a.qcow2"]),
        ("qemu-io", &["-c", "read 0 512", "a.qcow2"]),
        ("qemu-io", &["-r", "-U", "-c", "read 0 512", "a.qcow2"]),
    ];
    let mut seen = Vec::new();
    for daemon in ["qemu-storage-daemon", BLK] {
        let mut args = if daemon == BLK { vec!["serve"] } else { vec![] };
        args.extend(blockdevs);
        let _h = Holder::start(&dir, daemon, &args, "a.qcow2");
        let outcomes: Vec<_> = cases
            .iter()
            .map(|(prog, a)| outcome(&dir, prog, a))
            .collect();
        seen.push(outcomes);
    }
    assert_eq!(
        seen[1], seen[0],
        "QEMU's tools against blk serve vs qemu-storage-daemon"
    );
    assert_eq!(
        seen[1][0].2,
        "qemu-img: Could not open 'a.qcow2': Failed to get shared \"write\" lock\n\
         Is another process using the image [a.qcow2]?\n"
    );
    assert_eq!(seen[1][1].0, 0, "-U lets qemu-img in: {:?}", seen[1][1]);
    // And a blk serve refused by a holder says what qemu-storage-daemon says.
    let _h = Holder::start(
        &dir,
        "qemu-io",
        &["-c", "sleep 60000", "a.qcow2"],
        "a.qcow2",
    );
    let link = dir.0.join("qemu-storage-daemon");
    std::os::unix::fs::symlink(BLK, &link).unwrap();
    let want = outcome(&dir, "qemu-storage-daemon", &blockdevs);
    let got = outcome(&dir, link.to_str().unwrap(), &blockdevs);
    assert_eq!(got, want);
    assert_eq!(want.0, 1);
}
