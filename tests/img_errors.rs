//! Bad inputs to the image tools exit 1 (compare: 2) with a message naming what is wrong.
//! Needs no QEMU.

use std::process::Command;

const BLK: &str = env!("CARGO_BIN_EXE_blk");

fn run(args: &[&str]) -> (i32, String) {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let o = Command::new(BLK)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> String {
    let p = format!(
        "{}/img-err-{}-{name}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let (code, err) = run(&["create", "-q", "-f", "raw", &p, "1M"]);
    assert_eq!(code, 0, "{err}");
    p
}

fn assert_fails(args: &[&str], code: i32, msg: &str) {
    let (c, err) = run(args);
    assert_eq!(c, code, "{args:?}: {err}");
    assert!(err.contains(msg), "{args:?}: expected '{msg}' in: {err}");
}

#[test]
fn bad_inputs_exit_with_clear_messages() {
    let img = scratch("a");
    let missing = "/nonexistent/blk-missing.img";
    assert_fails(
        &["info", missing],
        1,
        "Could not open '/nonexistent/blk-missing.img'",
    );
    assert_fails(&["map", missing], 1, "No such file or directory");
    assert_fails(&["resize", missing, "1M"], 1, "No such file or directory");
    assert_fails(
        &["convert", missing, "/tmp/x"],
        1,
        "No such file or directory",
    );
    assert_fails(&["compare", missing, &img], 2, "No such file or directory");
    assert_fails(
        &["create", "-f", "vmdkx", &img, "1M"],
        1,
        "Unknown file format 'vmdkx'",
    );
    assert_fails(&["info", "-f", "vmdkx", &img], 1, "Unknown driver 'vmdkx'");
    assert_fails(
        &["convert", "-O", "vmdkx", &img, "/tmp/x"],
        1,
        "Unknown file format 'vmdkx'",
    );
    assert_fails(
        &["info", "-f", "qcow2", &img],
        1,
        "Image is not in qcow2 format",
    );
    assert_fails(
        &["create", "-f", "raw", &img, "12Q"],
        1,
        "Invalid image size specified: '12Q'",
    );
    assert_fails(
        &["create", "-f", "qcow2", &img],
        1,
        "Image creation needs a size parameter",
    );
    assert_fails(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3000",
            &img,
            "1M",
        ],
        1,
        "Cluster size must be a power of two",
    );
    assert_fails(
        &["create", "-f", "qcow2", "-o", "foo=1", &img, "1M"],
        1,
        "Invalid parameter 'foo'",
    );
    assert_fails(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=sometimes",
            &img,
            "1M",
        ],
        1,
        "Parameter 'preallocation' does not accept value 'sometimes'",
    );
    assert_fails(
        &["create", "-f", "qcow2", "-b", &img, &img],
        1,
        "Backing file specified without backing format",
    );
    // Nothing above touched the image.
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 20);
    assert_fails(&["resize", &img, "abc"], 1, "Parameter 'size' expects");
    assert_fails(
        &["resize", &img, "512k"],
        1,
        "Use the --shrink option to perform a shrink operation.",
    );
    assert_fails(
        &["resize", &img, "-4M"],
        1,
        "New image size must be positive",
    );
    assert_fails(
        &["convert", "-c", "-O", "raw", &img, "/tmp/x"],
        1,
        "Compression not supported for this file format",
    );
    assert_fails(
        &["info", "--output=xml", &img],
        1,
        "--output must be used with human or json",
    );
    assert_fails(
        &["map", "--bogus", &img],
        1,
        "unrecognized option '--bogus'",
    );
    let _ = std::fs::remove_file(&img);
}

#[test]
fn a_refused_create_leaves_no_file_behind() {
    let p = format!(
        "{}/img-err-{}-refused.qcow2",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let _ = std::fs::remove_file(&p);
    assert_fails(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,compression_type=zstd",
            &p,
            "1M",
        ],
        1,
        "Non-zlib compression type is only supported with compatibility level 1.1",
    );
    assert!(
        !std::path::Path::new(&p).exists(),
        "a refused create left {p} behind"
    );
}
