//! blk's image tools on NBD names (`nbd+unix:///EXPORT?socket=PATH`) against exports of
//! qemu-nbd: the same output as qemu-img and qemu-io, byte for byte.

use std::process::{Child, Command};

use crate::common::{Dir, QEMU_IMG, QEMU_IO, have_tools, without_timing};

/// qemu-nbd serving `img` (format `fmt`) as `exp` on `sock` in `dir`, until dropped.
struct QemuNbd(Child);

impl QemuNbd {
    /// `sock` must be absolute (qemu-nbd refuses a relative path).
    fn start(d: &Dir, fmt: &str, img: &str, sock: &str) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                fmt,
                "-k",
                sock,
                "-x",
                "exp",
                "--persistent",
                "--shared=8",
                img,
            ])
            .current_dir(&d.0)
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if std::path::Path::new(sock).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        QemuNbd(child)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `args` through blk (as `prog_as`) and through QEMU's `prog`: same code, stdout and stderr;
/// the exit code is `code`.
fn same(d: &Dir, code: i32, prog: &str, prog_as: &str, args: &[&str]) {
    let ours = d.run(prog_as, args);
    let theirs = d.run(prog, args);
    assert_eq!(theirs.code, code, "{prog} {args:?}: {}", theirs.stderr);
    assert_eq!(
        (ours.code, without_timing(&ours.stdout), ours.stderr),
        (theirs.code, without_timing(&theirs.stdout), theirs.stderr),
        "{prog} {args:?}"
    );
}

#[test]
fn image_tools_on_nbd_names_match_qemu() {
    if !have_tools(&["qemu-img", "qemu-io", "qemu-nbd"], "the NBD CLI test") {
        return;
    }
    let d = Dir::new("nbd-cli");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"],
    );
    d.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 1M", "a.qcow2"],
    );
    let sock = d.0.join("s.sock").to_string_lossy().into_owned();
    let _server = QemuNbd::start(&d, "qcow2", "a.qcow2", &sock);
    let uri = format!("nbd+unix:///exp?socket={sock}");
    same(&d, 0, "qemu-img", QEMU_IMG, &["info", &uri]);
    same(
        &d,
        0,
        "qemu-img",
        QEMU_IMG,
        &["info", "--output=json", &uri],
    );
    same(&d, 0, "qemu-img", QEMU_IMG, &["map", "--output=json", &uri]);
    same(&d, 0, "qemu-img", QEMU_IMG, &["map", &uri]);
    // Without a format the export is probed (raw here): the same warning on writes.
    same(
        &d,
        0,
        "qemu-io",
        QEMU_IO,
        &["-c", "write -P 0x22 2M 64k", &uri],
    );
    same(
        &d,
        0,
        "qemu-io",
        QEMU_IO,
        &["-c", "read -P 0x22 2M 64k", "-c", "read -P 0x11 0 1M", &uri],
    );
    let bad = format!("nbd+unix:///nope?socket={sock}");
    same(&d, 1, "qemu-img", QEMU_IMG, &["info", &bad]);
    let gone = format!("nbd+unix:///exp?socket={sock}.none");
    same(&d, 1, "qemu-img", QEMU_IMG, &["info", &gone]);
    // blk's convert reads the export; the copy equals it.
    d.ok(
        crate::common::BLK,
        &["convert", "-f", "raw", "-O", "qcow2", &uri, "copy.qcow2"],
    );
    d.ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", &uri, "copy.qcow2"],
    );
}
