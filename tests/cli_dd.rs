//! `blk dd` without QEMU: the bytes it copies against a byte model of qemu-img's arithmetic
//! (count counts from the input's start, skip moves the start, sizes round up to sectors),
//! its help, and that neither dd nor convert truncates an image the command itself has open.
//! (The QEMU-compatibility cases in tests/compat/qemu-img-dd.txt compare it with qemu-img.)

use crate::common::{BLK, Dir, QEMU_IMG};

/// A raw input of `len` bytes whose every byte differs from its neighbours'.
fn input(d: &Dir, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(d.0.join("in.raw"), &data).unwrap();
    data
}

#[test]
fn dd_copies_what_qemu_img_copies() {
    let d = Dir::new("dd-model");
    let data = input(&d, 200_000);
    // (bs, count, skip) and the input range qemu-img copies for them.
    let cases: [(u64, Option<u64>, Option<u64>); 6] = [
        (512, None, None),
        (4000, Some(5), Some(3)),
        (65536, Some(2), Some(1)),
        (1000, Some(1), None),
        (3, None, Some(7)),
        (1024, Some(400), Some(195)),
    ];
    for (i, (bs, count, skip)) in cases.into_iter().enumerate() {
        let out = format!("o{i}.raw");
        let mut args = vec![
            "dd".to_string(),
            "-f".into(),
            "raw".into(),
            format!("bs={bs}"),
        ];
        args.extend(count.map(|c| format!("count={c}")));
        args.extend(skip.map(|s| format!("skip={s}")));
        args.extend(["if=in.raw".to_string(), format!("of={out}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.ok(BLK, &args);
        // The input as qemu-img sees it: 200000 bytes rounded up to whole sectors.
        let len = 200_000u64.div_ceil(512) * 512;
        let end = count.map_or(len, |c| (c * bs).min(len));
        let start = skip.unwrap_or(0) * bs;
        let mut want: Vec<u8> = data.clone();
        want.resize(len as usize, 0);
        let mut want = want[start as usize..end as usize].to_vec();
        want.resize(want.len().div_ceil(512) * 512, 0);
        let got = std::fs::read(d.0.join(&out)).unwrap();
        assert_eq!(got.len(), want.len(), "{args:?}: output size");
        assert!(got == want, "{args:?}: output bytes differ from the model");
    }
}

#[test]
fn dd_help_lists_its_options() {
    let d = Dir::new("dd-help");
    let out = d.run(QEMU_IMG, &["dd", "--help"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for opt in [
        "-f",
        "--image-opts",
        "--object",
        "-O",
        "-U",
        "bs=",
        "count=",
        "skip=",
        "if=",
        "of=",
    ] {
        assert!(
            out.stdout.contains(opt),
            "dd --help lacks {opt}:\n{}",
            out.stdout
        );
    }
    let top = d.ok(QEMU_IMG, &["--help"]);
    assert!(top.contains("  dd - Copy input to output"), "{top}");
}

/// Regression: dd and convert created their output over a file the command had open as its
/// input (directly, through a link, or as a backing file), destroying the input, and convert
/// -n wrote into it. qemu-img's file locks refuse that; blk refuses it with the same messages.
#[test]
fn dd_and_convert_refuse_to_overwrite_their_input() {
    let d = Dir::new("dd-self");
    d.ok(BLK, &["create", "-q", "-f", "qcow2", "in.qcow2", "1M"]);
    d.ok(BLK, &["io", "-c", "write -P 0xab 0 64k", "in.qcow2"]);
    d.ok(BLK, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    let top = [
        "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
    ];
    d.ok(BLK, &top);
    std::os::unix::fs::symlink("in.qcow2", d.0.join("lnk")).unwrap();
    let before = std::fs::read(d.0.join("in.qcow2")).unwrap();
    let refusals: [(&[&str], &str); 4] = [
        (
            &["dd", "if=in.qcow2", "of=in.qcow2"],
            "in.qcow2: error while creating output image: ",
        ),
        (
            &["dd", "if=lnk", "of=in.qcow2"],
            "in.qcow2: error while creating output image: ",
        ),
        (
            &["dd", "if=t.qcow2", "of=b.qcow2"],
            "b.qcow2: error while creating output image: ",
        ),
        (
            &["convert", "in.qcow2", "in.qcow2"],
            "in.qcow2: error while converting raw: ",
        ),
    ];
    for (args, prefix) in refusals {
        let out = d.run(QEMU_IMG, args);
        let target = if args.contains(&"of=b.qcow2") {
            "b.qcow2"
        } else {
            "in.qcow2"
        };
        let want = format!(
            "qemu-img: {prefix}Failed to get \"write\" lock\nIs another process using the image [{target}]?\n"
        );
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (1, want.as_str()),
            "{args:?}"
        );
    }
    // Writing into it (-n: no create) is refused at open.
    let out = d.run(
        QEMU_IMG,
        &["convert", "-n", "-O", "qcow2", "in.qcow2", "in.qcow2"],
    );
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "qemu-img: Could not open 'in.qcow2': Failed to get \"write\" lock\nIs another process \
             using the image [in.qcow2]?\n"
        )
    );
    assert!(
        std::fs::read(d.0.join("in.qcow2")).unwrap() == before,
        "the input was changed"
    );
    let info = d.ok(BLK, &["info", "t.qcow2"]);
    assert!(info.contains("backing file: b.qcow2"), "{info}");
}

/// Regression: an empty file name was reported as a missing file; QEMU names the problem.
#[test]
fn empty_file_names_are_refused_as_qemu_img_refuses_them() {
    let d = Dir::new("dd-empty");
    let cases: [(&[&str], &str); 3] = [
        (
            &["info", ""],
            "The 'file' block driver requires a file name",
        ),
        (
            &["dd", "if=", "of=x"],
            "The 'file' block driver requires a file name",
        ),
        (
            &["dd", "--image-opts", "if=", "of=x"],
            "Must specify either driver or file",
        ),
    ];
    for (args, msg) in cases {
        let out = d.run(QEMU_IMG, args);
        assert_eq!(out.code, 1, "{args:?}");
        assert_eq!(
            out.stderr,
            format!("qemu-img: Could not open '': {msg}\n"),
            "{args:?}"
        );
    }
    assert!(!d.0.join("x").exists(), "a refused dd created its output");
}
