//! LUKS and qcow2 encryption against QEMU 10 both ways: volumes `qemu-img create -f luks` and
//! `-o encrypt.format=luks|aes` made and qemu-io wrote read identically through blk; volumes
//! blk made and wrote read identically through qemu-io, compare equal and check clean with
//! qemu-img; `info` is byte-identical; every refusal (wrong passphrase, missing secret,
//! damaged key slot, truncated header, unsupported cipher) is qemu-io's, byte for byte, and
//! leaves the file untouched.
//!
//! Skipped with a note when QEMU's tools are missing, unless `BLK_REQUIRE_QEMU=1`.

use crate::common;

use common::{Dir, QEMU_IMG, QEMU_IO, have_qemu, without_timing};

const SECRET: &str = "secret,id=sec0,data=abc";

fn luks_opts(img: &str) -> String {
    format!("driver=luks,key-secret=sec0,file.filename={img}")
}

fn qcow2_opts(img: &str) -> String {
    format!("driver=qcow2,encrypt.key-secret=sec0,file.filename={img}")
}

/// `prog` (qemu-io or blk as qemu-io) runs `cmds` on the image given by `opts`.
fn io(d: &Dir, prog: &str, opts: &str, cmds: &[&str]) -> String {
    let mut args = vec!["--object", SECRET, "--image-opts"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(opts);
    without_timing(&d.ok(prog, &args))
}

/// Both tools read `cmds` from the image identically, and the patterns hold.
fn reads_agree(d: &Dir, opts: &str, cmds: &[&str]) {
    let q = io(d, "qemu-io", opts, cmds);
    let b = io(d, QEMU_IO, opts, cmds);
    assert_eq!(b, q, "{opts}: blk and qemu-io read differently");
    assert!(!q.contains("verification failed"), "{q}");
}

fn same_info(d: &Dir, img: &str) {
    for out in ["human", "json"] {
        let o = format!("--output={out}");
        let q = d.ok("qemu-img", &["info", &o, img]);
        let b = d.ok(QEMU_IMG, &["info", &o, img]);
        assert_eq!(b, q, "{img}: info --output={out}");
    }
}

const WRITES: [&str; 4] = [
    // Unwritten LUKS sectors read as the decryption of zeroes, different in every volume:
    // the whole disk is written first so that two volumes can compare equal.
    "write -P 0x11 0 1M",
    "write -P 0x5a 0 64k",
    "write -P 0x33 68k 3k",
    "write -P 0x71 1020k 4k",
];
const READS: [&str; 4] = [
    "read -P 0x5a 0 64k",
    "read -P 0x33 68k 3k",
    "read -P 0x71 1020k 4k",
    "read -v 64k 1k",
];

#[test]
fn luks_volumes_interoperate_both_ways() {
    if !have_qemu("LUKS interop test") {
        return;
    }
    let d = Dir::new("luks-interop");
    for (i, extra) in [
        "",
        ",cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
        ",cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha1",
    ]
    .iter()
    .enumerate()
    {
        let o = format!("key-secret=sec0,iter-time=1{extra}");
        let (q, b) = (format!("q{i}.luks"), format!("b{i}.luks"));
        for (prog, img) in [("qemu-img", &q), (QEMU_IMG, &b)] {
            d.ok(
                prog,
                &[
                    "create", "-q", "-f", "luks", "--object", SECRET, "-o", &o, img, "1M",
                ],
            );
        }
        // QEMU writes, blk reads; blk writes, qemu-io reads.
        io(&d, "qemu-io", &luks_opts(&q), &WRITES);
        io(&d, QEMU_IO, &luks_opts(&b), &WRITES);
        reads_agree(&d, &luks_opts(&q), &READS[..3]);
        reads_agree(&d, &luks_opts(&b), &READS[..3]);
        let cmp = d.run(
            "qemu-img",
            &[
                "compare",
                "--object",
                SECRET,
                "--image-opts",
                &luks_opts(&q),
                &luks_opts(&b),
            ],
        );
        assert_eq!(cmp.code, 0, "{}{}", cmp.stdout, cmp.stderr);
        same_info(&d, &q);
        same_info(&d, &b);
    }
}

#[test]
fn encrypted_qcow2_images_interoperate_both_ways() {
    if !have_qemu("qcow2 encryption interop test") {
        return;
    }
    let d = Dir::new("qcow2-crypt");
    let cases = [
        ("qemu-img", "encrypt.format=luks,encrypt.iter-time=1"),
        ("qemu-img", "encrypt.format=aes"),
        (QEMU_IMG, "encrypt.format=luks,encrypt.iter-time=1"),
        (
            QEMU_IMG,
            "encrypt.format=luks,encrypt.iter-time=1,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv",
        ),
    ];
    for (i, (creator, o)) in cases.iter().enumerate() {
        let img = format!("e{i}.qcow2");
        let o = format!("{o},encrypt.key-secret=sec0");
        d.ok(
            creator,
            &[
                "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", &o, &img, "1M",
            ],
        );
        let opts = qcow2_opts(&img);
        io(&d, "qemu-io", &opts, &WRITES);
        reads_agree(&d, &opts, &READS);
        // blk writes over and beside QEMU's clusters (partial clusters: copy-on-write).
        io(
            &d,
            QEMU_IO,
            &opts,
            &["write -P 0x44 1k 2k", "write -P 0x45 300k 70k"],
        );
        reads_agree(
            &d,
            &opts,
            &[
                "read -P 0x5a 0 1k",
                "read -P 0x44 1k 2k",
                "read -P 0x5a 3k 61k",
                "read -P 0x45 300k 70k",
                "read -P 0x11 370k 6k",
            ],
        );
        let check = d.run(
            "qemu-img",
            &["check", "--object", SECRET, "--image-opts", &opts],
        );
        assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
        // blk's check counts the LUKS header's clusters (no leaks), and map gives no host
        // offsets, as qemu-img.
        for cmd in [
            vec!["check", "--object", SECRET, "--image-opts", &opts],
            vec![
                "map",
                "--output=json",
                "--object",
                SECRET,
                "--image-opts",
                &opts,
            ],
        ] {
            let (q, b) = (d.run("qemu-img", &cmd), d.run(QEMU_IMG, &cmd));
            assert_eq!(
                (b.code, &b.stdout, &b.stderr),
                (q.code, &q.stdout, &q.stderr),
                "{cmd:?}"
            );
        }
        if *creator == "qemu-img" {
            same_info(&d, &img);
        }
    }
}

/// Bytes of the file, to show a refused open changed nothing.
fn bytes(d: &Dir, img: &str) -> Vec<u8> {
    std::fs::read(d.0.join(img)).unwrap()
}

/// qemu-io and blk refuse `opts` alike, and the image stays as it was.
fn refused_alike(d: &Dir, img: &str, opts: &str, secret: &str) {
    let before = bytes(d, img);
    let args = ["--object", secret, "--image-opts", "-c", "write 0 4k", opts];
    let q = d.run("qemu-io", &args);
    let b = d.run(QEMU_IO, &args);
    assert_ne!(q.code, 0, "qemu-io accepted {opts}");
    assert_eq!(
        (b.code, &b.stderr, &b.stdout),
        (q.code, &q.stderr, &q.stdout),
        "{opts}"
    );
    assert_eq!(
        bytes(d, img),
        before,
        "{opts}: a refused open changed the image"
    );
}

/// Patch `img` at `at` with `data` (a corruption), truncating to `len` if given.
fn damage(d: &Dir, img: &str, patches: &[(usize, &[u8])], len: Option<usize>) -> String {
    let mut b = bytes(d, "base.luks");
    for (at, data) in patches {
        b[*at..*at + data.len()].copy_from_slice(data);
    }
    if let Some(n) = len {
        b.truncate(n);
    }
    std::fs::write(d.0.join(img), b).unwrap();
    img.to_string()
}

#[test]
fn refusals_are_qemus_and_change_nothing() {
    if !have_qemu("LUKS refusal test") {
        return;
    }
    let d = Dir::new("luks-errors");
    let o = "key-secret=sec0,iter-time=1";
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "luks",
            "--object",
            SECRET,
            "-o",
            o,
            "base.luks",
            "1M",
        ],
    );
    // Wrong passphrase, unknown secret, no key-secret at all.
    refused_alike(
        &d,
        "base.luks",
        &luks_opts("base.luks"),
        "secret,id=sec0,data=abd",
    );
    refused_alike(
        &d,
        "base.luks",
        &luks_opts("base.luks").replace("sec0", "sec1"),
        SECRET,
    );
    refused_alike(
        &d,
        "base.luks",
        "driver=luks,file.filename=base.luks",
        SECRET,
    );
    let slot0 = 208;
    let cases: Vec<String> = vec![
        // Damaged key slots: material zeroed, stripes, state, offset, iterations.
        damage(&d, "material.luks", &[(4096, &[0u8; 512])], None),
        damage(
            &d,
            "stripes.luks",
            &[(slot0 + 44, &3999u32.to_be_bytes())],
            None,
        ),
        damage(&d, "state.luks", &[(slot0, &5u32.to_be_bytes())], None),
        damage(
            &d,
            "offset.luks",
            &[(slot0 + 40, &1u32.to_be_bytes())],
            None,
        ),
        damage(
            &d,
            "overlap.luks",
            &[(slot0 + 48 + 40, &8u32.to_be_bytes())],
            None,
        ),
        damage(&d, "iters.luks", &[(slot0 + 4, &0u32.to_be_bytes())], None),
        // Truncated header, key material and payload.
        damage(&d, "trunc100.luks", &[], Some(100)),
        damage(&d, "trunc5000.luks", &[], Some(5000)),
        damage(&d, "trunc300k.luks", &[], Some(300_000)),
        // Header fields: magic, version, cipher, mode, ivgen, payload.
        damage(&d, "magic.luks", &[(0, b"LUKX")], None),
        damage(&d, "version.luks", &[(6, &[0, 2])], None),
        damage(&d, "cipher.luks", &[(8, b"foo\0")], None),
        damage(&d, "mode.luks", &[(40, b"foo-plain64\0")], None),
        damage(&d, "nodash.luks", &[(40, b"xts\0\0\0\0\0\0\0\0\0")], None),
        damage(&d, "ivgen.luks", &[(40, b"xts-foo\0\0\0\0")], None),
        damage(&d, "payload.luks", &[(104, &0u32.to_be_bytes())], None),
        damage(&d, "mkiters.luks", &[(164, &0u32.to_be_bytes())], None),
    ];
    for img in &cases {
        refused_alike(&d, img, &luks_opts(img), SECRET);
        // qemu-img info reads the header without the key: the same answer either way.
        let q = d.run("qemu-img", &["info", img]);
        let b = d.run(QEMU_IMG, &["info", img]);
        if !img.starts_with("magic") {
            assert_eq!((b.code, &b.stderr), (q.code, &q.stderr), "info {img}");
        }
    }
    // qcow2: no key, the wrong format named.
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            SECRET,
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=1",
            "e.qcow2",
            "1M",
        ],
    );
    refused_alike(&d, "e.qcow2", "driver=qcow2,file.filename=e.qcow2", SECRET);
    refused_alike(
        &d,
        "e.qcow2",
        &format!("{},encrypt.format=aes", qcow2_opts("e.qcow2")),
        SECRET,
    );
    refused_alike(
        &d,
        "e.qcow2",
        &qcow2_opts("e.qcow2"),
        "secret,id=sec0,data=x",
    );
}

#[test]
fn luks_create_refusals_match_qemu_img() {
    if !have_qemu("LUKS create test") {
        return;
    }
    let d = Dir::new("luks-create");
    for o in [
        "iter-time=1",
        "key-secret=sec0,cipher-alg=foo",
        "key-secret=sec0,cipher-mode=foo",
        "key-secret=sec0,hash-alg=foo",
        "key-secret=sec0,iter-time=abc",
        "key-secret=sec9,iter-time=1",
        "key-secret=sec0,detached-header=off",
    ] {
        let args = [
            "create", "-f", "luks", "--object", SECRET, "-o", o, "x.luks", "1M",
        ];
        let q = d.run("qemu-img", &args);
        let b = d.run(QEMU_IMG, &args);
        assert_eq!(
            (b.code, &b.stdout, &b.stderr),
            (q.code, &q.stdout, &q.stderr),
            "{o}"
        );
    }
}

#[test]
fn convert_to_and_from_luks_keeps_the_data() {
    if !have_qemu("LUKS convert test") {
        return;
    }
    let d = Dir::new("luks-convert");
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "1M"]);
    d.ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x21 0 1M",
            "-c",
            "write -P 0x5c 4k 60k",
            "r.img",
        ],
    );
    let o = "key-secret=sec0,iter-time=1";
    let args = [
        "convert", "--object", SECRET, "-f", "raw", "-O", "luks", "-o", o, "r.img", "c.luks",
    ];
    d.ok(QEMU_IMG, &args);
    let raw = "driver=raw,file.filename=r.img";
    let cmp = d.run(
        "qemu-img",
        &[
            "compare",
            "--object",
            SECRET,
            "--image-opts",
            raw,
            &luks_opts("c.luks"),
        ],
    );
    assert_eq!(cmp.code, 0, "{}{}", cmp.stdout, cmp.stderr);
    // And back out of a volume QEMU made.
    d.ok(
        "qemu-img",
        &[
            "convert", "--object", SECRET, "-f", "raw", "-O", "luks", "-o", o, "r.img", "q.luks",
        ],
    );
    let back = [
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        "-O",
        "raw",
        &luks_opts("q.luks"),
        "back.img",
    ];
    d.ok(QEMU_IMG, &back);
    assert_eq!(bytes(&d, "back.img"), bytes(&d, "r.img"));
    // Into an encrypted qcow2 image, opened with the key it was created with.
    let q = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=1";
    let args = [
        "convert", "--object", SECRET, "-f", "raw", "-O", "qcow2", "-o", q, "r.img", "c.qcow2",
    ];
    d.ok(QEMU_IMG, &args);
    let c = "driver=qcow2,encrypt.key-secret=sec0,file.filename=c.qcow2";
    let cmp = d.run(
        "qemu-img",
        &["compare", "--object", SECRET, "--image-opts", raw, c],
    );
    assert_eq!(cmp.code, 0, "{}{}", cmp.stdout, cmp.stderr);
    let check = d.run(
        "qemu-img",
        &["check", "--object", SECRET, "--image-opts", c],
    );
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    // check has nothing to check in a LUKS volume, as qemu-img says.
    let args = [
        "check",
        "--object",
        SECRET,
        "--image-opts",
        &luks_opts("c.luks"),
    ];
    let (q, b) = (d.run("qemu-img", &args), d.run(QEMU_IMG, &args));
    assert_eq!((b.code, &b.stderr), (q.code, &q.stderr));
}

/// QEMU writes a compressed cluster into an encrypted image *unencrypted* (and fails one over
/// an allocated cluster with EIO). blk reads such clusters as QEMU does, but refuses every
/// compressed write to an encrypted image (EIO, image untouched) rather than store guest data
/// in the clear; `convert -c` into an encrypted image is refused by both alike.
#[test]
fn compression_and_encryption_are_refused_together() {
    if !have_qemu("LUKS compression test") {
        return;
    }
    let d = Dir::new("luks-compress");
    let o = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=1";
    d.ok(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", o, "e.qcow2", "1M",
        ],
    );
    let opts = qcow2_opts("e.qcow2");
    io(&d, "qemu-io", &opts, &["write -c -P 0x41 0 64k"]);
    reads_agree(&d, &opts, &["read -P 0x41 0 64k", "read -P 0 64k 64k"]);
    let before = bytes(&d, "e.qcow2");
    let args = [
        "--object",
        SECRET,
        "--image-opts",
        "-c",
        "write -c 64k 64k",
        &opts,
    ];
    let b = d.run(QEMU_IO, &args);
    assert_eq!(
        (b.code, b.stdout.as_str()),
        (1, "write failed: Input/output error\n")
    );
    assert_eq!(bytes(&d, "e.qcow2"), before);
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "1M"]);
    let args = [
        "convert", "-c", "--object", SECRET, "-f", "raw", "-O", "qcow2", "-o", o, "r.img",
        "c.qcow2",
    ];
    let (q, b) = (d.run("qemu-img", &args), d.run(QEMU_IMG, &args));
    assert_eq!(
        (b.code, &b.stdout, &b.stderr),
        (q.code, &q.stdout, &q.stderr)
    );
}
