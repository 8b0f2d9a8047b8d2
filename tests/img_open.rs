//! Image names and open options on the command line, against QEMU's own tools: `json:` names,
//! `blkdebug:CONFIG:IMAGE`, `file:`, `--image-opts` and `--object` give qemu-img's and
//! qemu-io's output, messages and exit codes.

use crate::common;

use common::{Dir, QEMU_IMG, QEMU_IO, have_qemu};

/// `qemu-img SUB ARGS` and `blk SUB ARGS` in `dir`: the same exit code, stdout and stderr
/// (blk's program name aside).
fn same_img(dir: &Dir, args: &[&str]) {
    let q = dir.run("qemu-img", args);
    let b = dir.run(QEMU_IMG, args);
    assert_eq!(
        (q.code, &q.stdout),
        (b.code, &b.stdout),
        "qemu-img {args:?}"
    );
    assert_eq!(q.stderr, b.stderr, "qemu-img {args:?}");
}

/// The same for `qemu-io ARGS` and blk as `qemu-io ARGS` (timing figures left out).
fn same_io(dir: &Dir, args: &[&str]) {
    let q = dir.run("qemu-io", args);
    let b = dir.run(QEMU_IO, args);
    let strip = crate::common::without_timing;
    assert_eq!(
        (q.code, strip(&q.stdout), &q.stderr),
        (b.code, strip(&b.stdout), &b.stderr),
        "qemu-io {args:?}"
    );
}

#[test]
fn json_blkdebug_and_file_names_open_as_in_qemu() {
    if !have_qemu("image name tests") {
        return;
    }
    let d = Dir::new("img-open-names");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"],
    );
    d.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 64k", "b.qcow2"],
    );
    std::fs::write(
        d.0.join("bd.conf"),
        "[set-state]\nevent = \"read_aio\"\nnew_state = \"2\"\n",
    )
    .unwrap();
    let nested = r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"b.qcow2"}}"#;
    same_img(&d, &["map", "--output=json", nested]);
    same_img(
        &d,
        &[
            "map",
            "--output=json",
            r#"json:{"file.filename":"b.qcow2"}"#,
        ],
    );
    same_img(&d, &["map", "--output=json", "-f", "qcow2", "file:b.qcow2"]);
    for bad in [
        "json:{bad}",
        "json:[1]",
        "json:{}",
        r#"json:{"a":"#,
        "raw:b.qcow2",
    ] {
        same_img(&d, &["map", bad]);
    }
    same_img(&d, &["map", "-f", "qcow2", "blkdebug:bd.conf"]);
    same_img(&d, &["map", "-f", "qcow2", "blkdebug:none.conf:b.qcow2"]);
    same_io(
        &d,
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x11 0 64k",
            "blkdebug:bd.conf:b.qcow2",
        ],
    );
    same_io(
        &d,
        &[
            "-c",
            "read -P 0x11 0 4k",
            r#"json:{"driver":"qcow2","file.filename":"b.qcow2"}"#,
        ],
    );
    same_io(
        &d,
        &[
            "-c",
            "read 0 1",
            r#"json:{"driver":"qcow2","file.filename":"none"}"#,
        ],
    );
}

#[test]
fn image_opts_and_objects_as_in_qemu() {
    if !have_qemu("--image-opts/--object tests") {
        return;
    }
    let d = Dir::new("img-open-opts");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"],
    );
    d.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x22 64k 64k", "b.qcow2"],
    );
    let opts = "driver=qcow2,file.filename=b.qcow2";
    same_img(&d, &["map", "--output=json", "--image-opts", opts]);
    same_img(
        &d,
        &[
            "map",
            "--output=json",
            "--image-opts",
            "file.filename=b.qcow2",
        ],
    );
    same_img(&d, &["map", "--image-opts", "-f", "qcow2", opts]);
    same_img(&d, &["compare", "--image-opts", opts, opts]);
    same_io(&d, &["--image-opts", "-c", "read -P 0x22 64k 64k", opts]);
    let bad_cache = format!("{opts},cache-size=1M,l2-cache-size=2M");
    same_io(&d, &["--image-opts", "-c", "read 0 1", &bad_cache]);
    same_io(
        &d,
        &[
            "--image-opts",
            "-c",
            "read 0 1",
            &format!("{opts},overlap-check=x"),
        ],
    );
    for obj in [
        "secret,id=s0,data=pw",
        "secret,id=s0,data=cHc=,format=base64",
        "secret,id=s0",
        "secret,id=s0,data=x,format=hex",
        "secret,id=0s,data=x",
        "secret,id=s0,file=none.txt",
        "bogus,id=x",
    ] {
        same_img(&d, &["map", "--object", obj, "--output=json", "b.qcow2"]);
    }
    same_img(
        &d,
        &[
            "map",
            "--object",
            "secret,id=s,data=a",
            "--object",
            "secret,id=s,data=b",
            "b.qcow2",
        ],
    );
    same_io(
        &d,
        &["--object", "secret,id=s", "-c", "read 0 1", "b.qcow2"],
    );
}
