//! Shared by the CLI interop tests: finding QEMU's tools, and a scratch directory in which
//! commands run with relative names and whose output is captured.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The blk binary under test.
pub const BLK: &str = env!("CARGO_BIN_EXE_blk");

/// blk through a link named `qemu-img` (it then behaves, and names itself, as qemu-img), for
/// tests that compare its messages with qemu-img's byte for byte. Made by `links()`, which
/// `Dir::new` calls.
pub const QEMU_IMG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/blk-as/qemu-img");

/// blk through a link named `qemu-io`, the same way.
pub const QEMU_IO: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/blk-as/qemu-io");

/// Create the `blk-as/` links (once per process; an existing link is kept).
pub fn links() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for link in [QEMU_IMG, QEMU_IO] {
            let link = std::path::Path::new(link);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            if std::fs::read_link(link).ok().as_deref() != Some(std::path::Path::new(BLK)) {
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(BLK, link).unwrap();
            }
        }
    });
}

#[path = "../../engine/tests/qemu_tools/mod.rs"]
mod qemu_tools;
#[allow(unused_imports)] // each test module uses some of them
pub use qemu_tools::{have_qemu, have_tools};

/// qemu-io output without its timing lines (`64 KiB, 1 ops; 00.00 sec (...)`), which differ
/// from run to run.
pub fn without_timing(s: &str) -> String {
    s.lines()
        .filter(|l| !l.contains(" ops; "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A scratch directory, removed on drop; commands run inside it with relative names.
pub struct Dir(pub PathBuf);

/// A finished command.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Dir {
    /// A fresh directory under the target's tmp dir, unique per process and call (the test
    /// files share one binary, so two of them may pick the same `tag`).
    pub fn new(tag: &str) -> Dir {
        links();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// Run `prog` in the directory.
    pub fn run(&self, prog: &str, args: &[&str]) -> Out {
        let o = Command::new(prog)
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Run `prog`, which must succeed; its stdout.
    pub fn ok(&self, prog: &str, args: &[&str]) -> String {
        let o = self.run(prog, args);
        assert_eq!(
            o.code, 0,
            "{prog} {args:?} failed: {}{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// `qemu-img check` finds no errors.
    pub fn check_clean(&self, img: &str) {
        let o = self.run("qemu-img", &["check", img]);
        assert_eq!(o.code, 0, "qemu-img check {img}: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains("No errors were found"), "{}", o.stdout);
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
