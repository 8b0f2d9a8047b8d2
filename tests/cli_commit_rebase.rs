//! `blk commit` and `blk rebase` against the real qemu-img 10: chains built by qemu-img and
//! qemu-io, committed or rebased by blk, then judged by `qemu-img check` and `qemu-img compare`
//! against the content before; the same operations done by qemu-img on a copy give the same
//! guest view and backing chain; messages, exit codes and progress lines match qemu-img's.
//!
//! Skipped with a note when qemu-img/qemu-io are not on PATH, unless `BLK_REQUIRE_QEMU=1`.

use crate::common;

use common::{Dir, QEMU_IMG as BLK, have_qemu};

impl Dir {
    fn same(&self, a: &str, b: &str) {
        let o = self.run("qemu-img", &["compare", a, b]);
        assert_eq!(
            o.code, 0,
            "qemu-img compare {a} {b}: {}{}",
            o.stdout, o.stderr
        );
    }

    fn backing(&self, img: &str) -> (Option<String>, Option<String>) {
        let out = self.ok("qemu-img", &["info", "--output=json", img]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["backing-filename"].as_str().map(str::to_string),
            v["backing-filename-format"].as_str().map(str::to_string),
        )
    }

    fn copy(&self, from: &str, to: &str) {
        std::fs::copy(self.0.join(from), self.0.join(to)).unwrap();
    }

    /// base <- mid <- top, each written by qemu-io; `expect.raw` is the guest view of top.
    fn chain(&self, prefix: &str) {
        let q = |a: &[&str]| self.ok("qemu-img", a);
        let io = |img: &str, cmd: &str| self.ok("qemu-io", &["-c", cmd, img]);
        let (b, m, t) = (
            format!("{prefix}base.qcow2"),
            format!("{prefix}mid.qcow2"),
            format!("{prefix}top.qcow2"),
        );
        q(&["create", "-q", "-f", "qcow2", &b, "8M"]);
        io(&b, "write -P 0x11 0 4M");
        io(&b, "write -z 5M 1M");
        q(&["create", "-q", "-f", "qcow2", "-b", &b, "-F", "qcow2", &m]);
        io(&m, "write -P 0x22 2M 4M");
        io(&m, "write -z 512k 256k");
        q(&["create", "-q", "-f", "qcow2", "-b", &m, "-F", "qcow2", &t]);
        io(&t, "write -P 0x33 3M 1M");
        io(&t, "write -P 0x44 7M 4k");
        io(&t, "write -z 2M 64k");
        q(&["convert", "-O", "raw", &t, &format!("{prefix}expect.raw")]);
    }
}

#[test]
fn blk_commit_matches_qemu_img_commit() {
    if !have_qemu("commit/rebase interop test") {
        return;
    }
    let d = Dir::new("commit");
    d.chain("");
    for f in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
        d.copy(f, &format!("q{f}"));
    }
    // The copies must point at their own chain.
    d.ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "qbase.qcow2",
            "-F",
            "qcow2",
            "qmid.qcow2",
        ],
    );
    d.ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "qmid.qcow2",
            "-F",
            "qcow2",
            "qtop.qcow2",
        ],
    );
    let blk = d.run(BLK, &["commit", "top.qcow2"]);
    let qemu = d.run("qemu-img", &["commit", "qtop.qcow2"]);
    assert_eq!(
        (blk.code, &blk.stdout, &blk.stderr),
        (qemu.code, &qemu.stdout, &qemu.stderr)
    );
    assert_eq!(blk.stdout, "Image committed.\n");
    for f in ["top.qcow2", "mid.qcow2", "base.qcow2"] {
        d.check_clean(f);
    }
    // The guest view is unchanged, the top is empty, mid now reads as the old top.
    d.same("top.qcow2", "expect.raw");
    d.same("mid.qcow2", "expect.raw");
    d.same("top.qcow2", "qtop.qcow2");
    d.same("mid.qcow2", "qmid.qcow2");
    let map = d.ok("qemu-img", &["map", "--output=json", "top.qcow2"]);
    assert!(
        !map.contains("\"depth\": 0"),
        "top still allocates data: {map}"
    );
    assert_eq!(
        d.backing("top.qcow2"),
        (Some("mid.qcow2".into()), Some("qcow2".into()))
    );
    // Issue 10 bug 10: the emptied top is rebuilt as QEMU rebuilds it (it kept its clusters,
    // 1376256 bytes against QEMU's 262144), and the zeroes committed into mid are unmapped as
    // QEMU's are (commit opens with discard=unmap).
    let len = |f: &str| std::fs::metadata(d.0.join(f)).unwrap().len();
    assert_eq!(
        len("top.qcow2"),
        len("qtop.qcow2"),
        "emptied top's file length"
    );
    // One new cluster in mid (at 7M): the offsets are deterministic in QEMU too.
    let map = |f: &str| d.ok("qemu-img", &["map", "--output=json", f]);
    assert_eq!(map("mid.qcow2"), map("qmid.qcow2"), "mid's allocation");
}

#[test]
fn blk_commit_with_base_and_keep_and_rate_and_progress() {
    if !have_qemu("commit/rebase interop test") {
        return;
    }
    let d = Dir::new("commit-b");
    d.chain("");
    // -b base implies -d: top keeps its data; base gets top+mid.
    let out = d.ok(
        BLK,
        &[
            "commit",
            "-p",
            "-r",
            "64M",
            "-t",
            "none",
            "-b",
            "base.qcow2",
            "top.qcow2",
        ],
    );
    assert!(out.starts_with("    (0.00/100%)\r"), "{out:?}");
    assert!(
        out.ends_with("    (100.00/100%)\r\nImage committed.\n"),
        "{out:?}"
    );
    for f in ["top.qcow2", "mid.qcow2", "base.qcow2"] {
        d.check_clean(f);
    }
    d.same("top.qcow2", "expect.raw");
    d.same("base.qcow2", "expect.raw");
    let map = d.ok("qemu-img", &["map", "--output=json", "top.qcow2"]);
    assert!(map.contains("\"depth\": 0"), "top lost its data: {map}");
    // -d -q: silent, top keeps its data.
    d.chain("d-");
    assert_eq!(d.ok(BLK, &["commit", "-d", "-q", "d-top.qcow2"]), "");
    d.same("d-mid.qcow2", "d-expect.raw");
    d.same("d-top.qcow2", "d-expect.raw");
}

#[test]
fn qemu_reads_what_blk_committed_and_blk_reads_what_qemu_committed() {
    if !have_qemu("commit/rebase interop test") {
        return;
    }
    let d = Dir::new("cross");
    d.chain("");
    d.ok(BLK, &["commit", "-q", "top.qcow2"]);
    // QEMU sees the committed image as it was.
    d.ok(
        "qemu-img",
        &["convert", "-O", "raw", "mid.qcow2", "mid.raw"],
    );
    assert!(
        std::fs::read(d.0.join("mid.raw")).unwrap()
            == std::fs::read(d.0.join("expect.raw")).unwrap()
    );
    // And blk reads what qemu-img committed.
    d.chain("q-");
    d.ok("qemu-img", &["commit", "-q", "q-top.qcow2"]);
    let o = d.run(BLK, &["compare", "q-mid.qcow2", "q-expect.raw"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
}

#[test]
fn blk_rebase_safe_and_unsafe_match_qemu_img() {
    if !have_qemu("commit/rebase interop test") {
        return;
    }
    let d = Dir::new("rebase");
    d.chain("");
    d.chain("q-");
    // Safe rebase onto the base: mid's data moves into top.
    let blk = d.run(
        BLK,
        &["rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    );
    let qemu = d.run(
        "qemu-img",
        &["rebase", "-b", "q-base.qcow2", "-F", "qcow2", "q-top.qcow2"],
    );
    assert_eq!(
        (blk.code, &blk.stdout, &blk.stderr),
        (qemu.code, &qemu.stdout, &qemu.stderr)
    );
    d.check_clean("top.qcow2");
    d.same("top.qcow2", "expect.raw");
    d.same("top.qcow2", "q-top.qcow2");
    assert_eq!(
        d.backing("top.qcow2"),
        (Some("base.qcow2".into()), Some("qcow2".into()))
    );
    // Safe rebase onto nothing: the image becomes standalone.
    d.ok(BLK, &["rebase", "-p", "-b", "", "top.qcow2"]);
    d.check_clean("top.qcow2");
    assert_eq!(d.backing("top.qcow2"), (None, None));
    d.same("top.qcow2", "expect.raw");
    // Safe rebase onto an unrelated image: what differs is copied.
    d.chain("u-");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "other.qcow2", "8M"],
    );
    d.ok("qemu-io", &["-c", "write -P 0x22 0 8M", "other.qcow2"]);
    d.ok(
        BLK,
        &["rebase", "-b", "other.qcow2", "-F", "qcow2", "u-top.qcow2"],
    );
    d.check_clean("u-top.qcow2");
    d.same("u-top.qcow2", "u-expect.raw");
    // Unsafe: only the header changes (the view changes with it), as qemu-img -u.
    d.chain("x-");
    d.chain("y-");
    d.ok(
        BLK,
        &[
            "rebase",
            "-u",
            "-b",
            "x-base.qcow2",
            "-F",
            "qcow2",
            "x-top.qcow2",
        ],
    );
    d.ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "y-base.qcow2",
            "-F",
            "qcow2",
            "y-top.qcow2",
        ],
    );
    d.check_clean("x-top.qcow2");
    assert_eq!(
        d.backing("x-top.qcow2"),
        (Some("x-base.qcow2".into()), Some("qcow2".into()))
    );
    d.ok(
        "qemu-img",
        &["convert", "-O", "raw", "x-top.qcow2", "x.raw"],
    );
    d.ok(
        "qemu-img",
        &["convert", "-O", "raw", "y-top.qcow2", "y.raw"],
    );
    assert!(std::fs::read(d.0.join("x.raw")).unwrap() == std::fs::read(d.0.join("y.raw")).unwrap());
}

#[test]
fn errors_match_qemu_img() {
    if !have_qemu("commit/rebase interop test") {
        return;
    }
    let d = Dir::new("errors");
    d.chain("");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "solo.qcow2", "1M"],
    );
    let cases: &[&[&str]] = &[
        &["commit", "solo.qcow2"],
        &["commit", "-b", "nope.qcow2", "top.qcow2"],
        &["commit", "-t", "bogus", "top.qcow2"],
        &["commit", "-r", "x", "top.qcow2"],
        &["commit", "-r", "-5", "top.qcow2"],
        &["commit", "-f", "raw", "top.qcow2"],
        &["commit", "nope.qcow2"],
        &["commit"],
        &["rebase", "top.qcow2"],
        &["rebase", "-b", "base.qcow2", "top.qcow2"],
        &["rebase", "-u", "-b", "base.qcow2", "top.qcow2"],
        &["rebase", "-b", "nope.qcow2", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-b", "base.qcow2", "-F", "foo", "top.qcow2"],
        &[
            "rebase",
            "-u",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "nope.qcow2",
        ],
    ];
    for args in cases {
        let q = d.run("qemu-img", args);
        let b = d.run(BLK, args);
        let norm = |s: &str| {
            s.replace("qemu-img commit", "blk commit")
                .replace("qemu-img rebase", "blk rebase")
        };
        assert_eq!(
            (b.code, norm(&b.stderr)),
            (q.code, norm(&q.stderr)),
            "blk {args:?}"
        );
    }
    // Nothing was changed by any of them.
    d.same("top.qcow2", "expect.raw");
    assert_eq!(
        d.backing("top.qcow2"),
        (Some("mid.qcow2".into()), Some("qcow2".into()))
    );
}
