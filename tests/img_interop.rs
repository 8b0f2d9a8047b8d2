//! `blk create|info|map|compare|convert|resize` against the real qemu-img 10: images blk
//! creates pass `qemu-img check` and `qemu-img info` agrees with `blk info`; `blk map` equals
//! `qemu-img map` on images written by qemu-io; `blk compare` exit codes and messages equal
//! `qemu-img compare`'s; `blk convert` output compares equal and checks clean; `blk resize`
//! sizes as qemu-img reports them.
//!
//! Skipped with a note when `qemu-img` is not on PATH, unless `BLK_REQUIRE_QEMU=1`.

use crate::common;

use common::{BLK, Dir, QEMU_IMG, have_qemu};

use serde_json::Value;

impl Dir {
    fn blk(&self, args: &[&str]) -> String {
        // `blk io ...` as blk; image commands through the qemu-img link (qemu-img's messages).
        let prog = if args.first() == Some(&"io") {
            BLK
        } else {
            QEMU_IMG
        };
        self.ok(prog, args)
    }

    fn info_json(&self, prog: &str, img: &str) -> Value {
        let args = ["info", "--output=json", img];
        let out = if prog == "blk" {
            self.blk(&args)
        } else {
            self.ok(prog, &args)
        };
        serde_json::from_str(&out).unwrap()
    }
}

const SHARED: [&str; 10] = [
    "virtual-size",
    "filename",
    "format",
    "cluster-size",
    "backing-filename",
    "full-backing-filename",
    "backing-filename-format",
    "format-specific",
    "dirty-flag",
    "actual-size",
];

fn assert_info_agrees(d: &Dir, img: &str) {
    let (b, q) = (d.info_json("blk", img), d.info_json("qemu-img", img));
    for k in SHARED {
        assert_eq!(b.get(k), q.get(k), "{img}: field {k}");
    }
}

#[test]
fn created_images_check_clean_and_info_agrees() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("create");
    let out = d.blk(&["create", "-f", "raw", "r.img", "1M"]);
    assert_eq!(out, "Formatting 'r.img', fmt=raw size=1048576\n");
    assert_info_agrees(&d, "r.img");
    for (i, cs) in ["512", "4k", "65536", "2M"].iter().enumerate() {
        let name = format!("c{i}.qcow2");
        d.blk(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            &name,
            "64M",
        ]);
        d.check_clean(&name);
        assert_info_agrees(&d, &name);
    }
    let line = d.blk(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "v2.qcow2",
        "1M",
    ]);
    let want = d.ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2q.qcow2",
            "1M",
        ],
    );
    assert_eq!(line.replace("v2.qcow2", "v2q.qcow2"), want);
    d.check_clean("v2.qcow2");
    assert_info_agrees(&d, "v2.qcow2");
    let o = "refcount_bits=8,lazy_refcounts=on,cluster_size=4k";
    d.blk(&["create", "-q", "-f", "qcow2", "-o", o, "l.qcow2", "1M"]);
    d.check_clean("l.qcow2");
    assert_info_agrees(&d, "l.qcow2");
    // A backing file: size taken from it, backing fields as qemu-img reports them.
    let line = d.blk(&[
        "create", "-f", "qcow2", "-b", "c1.qcow2", "-F", "qcow2", "o.qcow2",
    ]);
    assert!(
        line.contains("size=67108864 backing_file=c1.qcow2 backing_fmt=qcow2"),
        "{line}"
    );
    d.check_clean("o.qcow2");
    assert_info_agrees(&d, "o.qcow2");
    let chain = |p: &str| {
        d.ok(
            if p == "blk" { QEMU_IMG } else { p },
            &["info", "--backing-chain", "o.qcow2"],
        )
    };
    assert_eq!(chain("blk"), chain("qemu-img"));
    d.blk(&[
        "create", "-q", "-f", "qcow2", "-b", "r.img", "-F", "raw", "or.qcow2",
    ]);
    d.check_clean("or.qcow2");
    assert_info_agrees(&d, "or.qcow2");
}

/// zstd: `blk create -o compression_type=zstd` makes the image qemu-img makes (same
/// "Formatting" line, info and a clean check); `blk info` of a QEMU-compressed zstd image
/// agrees with qemu-img's; the option's bad values and a v2 image are refused as qemu-img does.
#[test]
fn zstd_images_create_and_info_match_qemu_img() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("zstd");
    let args = |name: &'static str| {
        [
            "create",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd,cluster_size=4k",
            name,
            "3M",
        ]
    };
    let line = d.blk(&args("b.qcow2"));
    let want = d.ok("qemu-img", &args("q.qcow2"));
    assert_eq!(line.replace("b.qcow2", "q.qcow2"), want);
    d.check_clean("b.qcow2");
    assert_info_agrees(&d, "b.qcow2");
    assert_eq!(
        d.blk(&["info", "b.qcow2"]),
        d.ok("qemu-img", &["info", "b.qcow2"])
    );
    // QEMU compresses into blk's empty zstd image; both read the same, info agrees.
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "3M"]);
    d.ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x61 0 1M", "r.img"],
    );
    d.ok(
        "qemu-img",
        &[
            "convert", "-n", "-c", "-f", "raw", "-O", "qcow2", "r.img", "b.qcow2",
        ],
    );
    assert_info_agrees(&d, "b.qcow2");
    let cmp = ["compare", "-f", "raw", "-F", "qcow2", "r.img", "b.qcow2"];
    assert_eq!(d.blk(&cmp), d.ok("qemu-img", &cmp));
    // Bad values: same exit status and message as qemu-img.
    for (o, name) in [
        ("compression_type=lz4", "x1.qcow2"),
        ("compression_type=zstd,compat=0.10", "x2.qcow2"),
    ] {
        let a = ["create", "-q", "-f", "qcow2", "-o", o, name, "1M"];
        let (b, q) = (d.run(QEMU_IMG, &a), d.run("qemu-img", &a));
        assert_eq!(b.code, q.code, "{o}: {} / {}", b.stderr, q.stderr);
        assert_eq!(b.stderr.replace("blk: ", "qemu-img: "), q.stderr, "{o}");
    }
}

/// A depth-3 chain on real files with backing names relative to each overlay's directory,
/// `..` included, used from another working directory: `blk info --backing-chain` equals
/// qemu-img's, blk reads the chain as QEMU does, and `blk io` writes into the top (copy on
/// write from the lower layers) leave an image qemu-img checks clean and compares equal.
#[test]
fn relative_backing_chain_on_real_files() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("relchain");
    std::fs::create_dir_all(d.0.join("a/b/c")).unwrap();
    let create = |args: &[&str]| {
        let mut a = vec!["create", "-q", "-f", "qcow2"];
        a.extend_from_slice(args);
        d.ok("qemu-img", &a);
    };
    create(&["-o", "cluster_size=4k", "a/base.qcow2", "4M"]);
    d.ok("qemu-io", &["-c", "write -P 0x11 0 4M", "a/base.qcow2"]);
    create(&["-b", "../base.qcow2", "-F", "qcow2", "a/b/mid.qcow2"]);
    d.ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 1M 1M",
            "-c",
            "write -z 3M 64k",
            "a/b/mid.qcow2",
        ],
    );
    create(&[
        "-o",
        "cluster_size=512",
        "-b",
        "../mid.qcow2",
        "-F",
        "qcow2",
        "a/b/c/top.qcow2",
    ]);
    d.ok(
        "qemu-io",
        &["-c", "write -P 0x33 1500k 1k", "a/b/c/top.qcow2"],
    );
    let top = "a/b/c/top.qcow2";
    let chain = |p: &str| {
        d.ok(
            if p == "blk" { QEMU_IMG } else { p },
            &["info", "--backing-chain", top],
        )
    };
    assert_eq!(chain("blk"), chain("qemu-img"));
    d.ok("qemu-img", &["convert", "-O", "raw", top, "want.raw"]);
    let cmp = ["compare", "-f", "raw", "-F", "qcow2", "want.raw", top];
    assert_eq!(d.blk(&cmp), d.ok("qemu-img", &cmp));
    // Writes through blk into clusters held by base, mid, mid's zero cluster and top.
    let mut want = std::fs::read(d.0.join("want.raw")).unwrap();
    let writes = [
        (100_000u64, 0x91u8),
        (1_100_000, 0x92),
        (3_200_000, 0x93),
        (1_536_500, 0x94),
    ];
    let mut args = vec!["-f".to_string(), "qcow2".to_string()];
    for (off, pat) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pat} {off} 3000"));
        want[off as usize..off as usize + 3000].fill(pat);
    }
    args.push(top.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let base_before = std::fs::read(d.0.join("a/base.qcow2")).unwrap();
    let mid_before = std::fs::read(d.0.join("a/b/mid.qcow2")).unwrap();
    let mut io = vec!["io"];
    io.extend_from_slice(&args);
    d.blk(&io);
    d.check_clean(top);
    std::fs::write(d.0.join("want2.raw"), &want).unwrap();
    let cmp = ["compare", "-f", "raw", "-F", "qcow2", "want2.raw", top];
    let o = d.run("qemu-img", &cmp);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let lower = |f: &str| std::fs::read(d.0.join(f)).unwrap();
    assert!(
        lower("a/base.qcow2") == base_before && lower("a/b/mid.qcow2") == mid_before,
        "a lower layer changed"
    );
}

/// External data files: `blk create -o data_file=..[,data_file_raw=on]` prints qemu-img's line
/// and makes an image (and data file) that checks clean with the same info; after qemu-io and
/// `blk io` writes, `blk map`, `blk check` and `blk info` print what qemu-img prints, and the
/// two tools' images compare equal. Bad option combinations fail with qemu-img's messages.
#[test]
fn data_file_images_match_qemu_img() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("datafile");
    for (i, raw) in ["off", "on"].iter().enumerate() {
        let o = format!("data_file=bd{i}.raw,data_file_raw={raw}");
        let b = d.blk(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &o,
            &format!("b{i}.qcow2"),
            "4M",
        ]);
        let oq = format!("data_file=qd{i}.raw,data_file_raw={raw}");
        let q = d.ok(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                &oq,
                &format!("q{i}.qcow2"),
                "4M",
            ],
        );
        assert_eq!(
            b.replace(&format!("bd{i}"), "Y")
                .replace(&format!("b{i}"), "X"),
            q.replace(&format!("qd{i}"), "Y")
                .replace(&format!("q{i}"), "X")
        );
        let (bi, qi) = (format!("b{i}.qcow2"), format!("q{i}.qcow2"));
        d.check_clean(&bi);
        assert_info_agrees(&d, &bi);
        let cmds = ["write -P 0x11 0 100k", "write -z 1M 128k", "discard 2M 64k"];
        for img in [&bi, &qi] {
            let mut a = vec!["-f", "qcow2"];
            for c in cmds {
                a.extend_from_slice(&["-c", c]);
            }
            a.push(img);
            d.ok("qemu-io", &a);
        }
        // The same requests through blk on its image and through qemu-io on QEMU's.
        let ops = [
            "write -P 0x22 3000k 70k",
            "write -z 5000 3000",
            "discard 3M 64k",
            "write -z 1536k 128k",
        ];
        for (prog, img) in [(BLK, &bi), ("qemu-io", &qi)] {
            let mut a = vec!["-f", "qcow2"];
            if prog == BLK {
                a.insert(0, "io");
            }
            for c in ops {
                a.extend_from_slice(&["-c", c]);
            }
            a.push(img);
            d.ok(prog, &a);
            d.check_clean(img);
            for args in [
                &["map", "--output=json"][..],
                &["map"],
                &["check"],
                &["check", "--output=json"],
                &["info"],
            ] {
                let a = [args, &[img.as_str()]].concat();
                assert_eq!(d.blk(&a), d.ok("qemu-img", &a), "{img}: {args:?}");
            }
        }
        // Same mapping (offsets are guest offsets in both data files) and same contents.
        let map = |img: &str| d.ok("qemu-img", &["map", "--output=json", img]);
        assert_eq!(
            map(&bi),
            map(&qi),
            "blk's requests map differently from QEMU's"
        );
        let o = d.run("qemu-img", &["compare", &bi, &qi]);
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        if *raw == "on" {
            // The raw data file is the guest disk.
            let o = d.run(
                "qemu-img",
                &[
                    "compare",
                    "-f",
                    "raw",
                    "-F",
                    "qcow2",
                    &format!("bd{i}.raw"),
                    &bi,
                ],
            );
            assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        }
    }
    for o in ["data_file_raw=on", "data_file=x.raw,compat=0.10"] {
        let a = ["create", "-q", "-f", "qcow2", "-o", o, "bad.qcow2", "1M"];
        let (b, q) = (d.run(QEMU_IMG, &a), d.run("qemu-img", &a));
        assert_eq!((b.code, &b.stderr), (q.code, &q.stderr), "{o}");
    }
    let a = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=y.raw,data_file_raw=on",
        "-b",
        "b0.qcow2",
        "-F",
        "qcow2",
        "bad.qcow2",
        "4M",
    ];
    let (b, q) = (d.run(QEMU_IMG, &a), d.run("qemu-img", &a));
    assert_eq!((b.code, &b.stderr), (q.code, &q.stderr));
}

#[test]
fn map_equals_qemu_img_map() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("map");
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "4M"]);
    d.ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 8k 8k",
            "-c",
            "write -P 2 1M 64k",
            "r.img",
        ],
    );
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
    );
    d.ok(
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -z 128k 64k",
            "-c",
            "write -P 3 2M 1M",
            "base.qcow2",
        ],
    );
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    d.ok(
        "qemu-io",
        &[
            "-c",
            "write -P 2 192k 64k",
            "-c",
            "write -z 256k 64k",
            "-c",
            "write -z 2M 64k",
            "mid.qcow2",
        ],
    );
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    d.ok(
        "qemu-io",
        &[
            "-c",
            "write -P 5 300k 10k",
            "-c",
            "write -P 6 3M 4k",
            "top.qcow2",
        ],
    );
    for img in ["r.img", "base.qcow2", "mid.qcow2", "top.qcow2"] {
        for fmt in ["--output=json", "--output=human"] {
            let args = ["map", fmt, img];
            assert_eq!(d.blk(&args), d.ok("qemu-img", &args), "map {fmt} {img}");
        }
        let args = [
            "map",
            "--output=json",
            "--start-offset=100000",
            "--max-length=2200000",
            img,
        ];
        assert_eq!(d.blk(&args), d.ok("qemu-img", &args), "ranged map {img}");
    }
}

#[test]
fn map_and_info_of_compressed_and_dirty_images() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("special");
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "r.img", "1M"]);
    d.ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 64k 128k", "r.img"],
    );
    d.ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "r.img", "c.qcow2"],
    );
    let args = ["map", "--output=json", "c.qcow2"];
    assert_eq!(d.blk(&args), d.ok("qemu-img", &args));
    // The human map cannot show compressed clusters: same partial output, same error.
    let (b, q) = (
        d.run(QEMU_IMG, &["map", "c.qcow2"]),
        d.run("qemu-img", &["map", "c.qcow2"]),
    );
    assert_eq!(
        (b.code, &b.stdout, &b.stderr),
        (q.code, &q.stdout, &q.stderr)
    );
    // An image left dirty by a killed writer (lazy refcounts).
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "d.qcow2",
            "1M",
        ],
    );
    let _ = d.run(
        "qemu-io",
        &["-c", "write 0 64k", "-c", "sigraise 9", "d.qcow2"],
    );
    assert_eq!(d.info_json("blk", "d.qcow2")["dirty-flag"], true);
    assert_info_agrees(&d, "d.qcow2");
    assert_eq!(
        d.blk(&["info", "d.qcow2"]),
        d.ok("qemu-img", &["info", "d.qcow2"])
    );
}

#[test]
fn compare_matches_qemu_img_compare() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("compare");
    for (name, size) in [
        ("a.img", "1M"),
        ("b.img", "1M"),
        ("c.img", "2M"),
        ("e.img", "2M"),
    ] {
        d.ok("qemu-img", &["create", "-q", "-f", "raw", name, size]);
    }
    d.ok("qemu-io", &["-f", "raw", "-c", "write -P 7 4k 4k", "a.img"]);
    d.ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 7 1536k 1k", "e.img"],
    );
    d.ok("qemu-img", &["convert", "-O", "qcow2", "a.img", "a.qcow2"]);
    let cases: [&[&str]; 9] = [
        &["a.img", "a.qcow2"],
        &["a.img", "b.img"],
        &["b.img", "c.img"],
        &["-s", "b.img", "c.img"],
        &["b.img", "e.img"],
        &["e.img", "b.img"],
        &["-q", "a.img", "b.img"],
        &["-f", "raw", "-F", "qcow2", "a.img", "a.qcow2"],
        &["missing.img", "b.img"],
    ];
    for c in cases {
        let mut args = vec!["compare"];
        args.extend_from_slice(c);
        let (b, q) = (d.run(QEMU_IMG, &args), d.run("qemu-img", &args));
        assert_eq!(b.code, q.code, "exit code of compare {c:?}");
        assert_eq!(b.stdout, q.stdout, "stdout of compare {c:?}");
        assert_eq!(b.stderr, q.stderr, "stderr of compare {c:?}");
    }
}

#[test]
fn convert_round_trips_and_checks_clean() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("convert");
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "src.img", "8M"]);
    d.ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -P 2 3M 100k",
            "src.img",
        ],
    );
    d.blk(&["convert", "-O", "qcow2", "src.img", "q.qcow2"]);
    d.check_clean("q.qcow2");
    d.ok("qemu-img", &["compare", "src.img", "q.qcow2"]);
    // Sparse: nothing allocated for the zero megabytes.
    let map: Value = serde_json::from_str(&d.blk(&["map", "--output=json", "q.qcow2"])).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(data <= 4 * 65536, "{map}");
    d.blk(&["convert", "-p", "-W", "-O", "raw", "q.qcow2", "back.img"]);
    d.ok("qemu-img", &["compare", "-s", "src.img", "back.img"]);
    d.blk(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k,compat=0.10",
        "q.qcow2",
        "q2.qcow2",
    ]);
    d.check_clean("q2.qcow2");
    d.ok("qemu-img", &["compare", "src.img", "q2.qcow2"]);
    // A chain converted whole, and converted over a backing file.
    d.ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "q.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    d.ok(
        "qemu-io",
        &[
            "-c",
            "write -P 9 3M 64k",
            "-c",
            "write -z 0 4k",
            "top.qcow2",
        ],
    );
    d.blk(&["convert", "-O", "qcow2", "top.qcow2", "flat.qcow2"]);
    d.check_clean("flat.qcow2");
    d.ok("qemu-img", &["compare", "top.qcow2", "flat.qcow2"]);
    d.blk(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        "q.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
        "ov.qcow2",
    ]);
    d.check_clean("ov.qcow2");
    d.ok("qemu-img", &["compare", "top.qcow2", "ov.qcow2"]);
    let info = d.info_json("qemu-img", "ov.qcow2");
    assert_eq!(info["backing-filename"], "q.qcow2");
    // `-o backing_file` is `-B`: only the top layer is copied (it copied the backing's too).
    d.blk(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "backing_file=q.qcow2,backing_fmt=qcow2",
        "top.qcow2",
        "ov-o.qcow2",
    ]);
    let map = |img| d.ok("qemu-img", &["map", "--output=json", img]);
    assert_eq!(map("ov-o.qcow2"), map("ov.qcow2"));
    // A backing file needs its format named, as qemu-img 10 requires.
    let o = d.run(
        BLK,
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "q.qcow2",
            "top.qcow2",
            "nf.qcow2",
        ],
    );
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "blk: Use of backing file requires explicit backing format\n"
        )
    );
    // -n into an existing image with other contents.
    d.ok("qemu-img", &["create", "-q", "-f", "raw", "n.img", "8M"]);
    d.ok("qemu-io", &["-f", "raw", "-c", "write -P 8 0 8M", "n.img"]);
    d.blk(&["convert", "-n", "-O", "raw", "top.qcow2", "n.img"]);
    d.ok("qemu-img", &["compare", "top.qcow2", "n.img"]);
}

#[test]
fn resize_grows_and_shrinks() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("resize");
    d.blk(&["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    d.blk(&["create", "-q", "-f", "raw", "r.img", "1M"]);
    for img in ["q.qcow2", "r.img"] {
        assert_eq!(d.blk(&["resize", img, "+3M"]), "Image resized.\n");
        assert_eq!(d.info_json("qemu-img", img)["virtual-size"], 4 << 20);
        let o = d.run(QEMU_IMG, &["resize", img, "2M"]);
        assert_eq!(o.code, 1);
        // (The raw image, probed, is preceded by QEMU's probing warning, as qemu-img prints.)
        assert!(
            o.stderr.contains("qemu-img: Use the --shrink option"),
            "{}",
            o.stderr
        );
        d.blk(&["resize", "--shrink", img, "-1M"]);
        assert_eq!(d.info_json("qemu-img", img)["virtual-size"], 3 << 20);
    }
    d.check_clean("q.qcow2");
}

#[test]
fn preallocated_qcow2_images_match_qemus_own() {
    if !have_qemu("qemu-img interop test") {
        return;
    }
    let d = Dir::new("prealloc");
    for mode in ["metadata", "falloc", "full"] {
        let (ours, theirs) = (format!("b-{mode}.qcow2"), format!("q-{mode}.qcow2"));
        let opts = format!("preallocation={mode},cluster_size=4k");
        d.blk(&["create", "-q", "-f", "qcow2", "-o", &opts, &ours, "8M"]);
        d.ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, &theirs, "8M"],
        );
        d.check_clean(&ours);
        d.ok("qemu-img", &["compare", &ours, &theirs]);
        let (a, b) = (
            d.info_json("qemu-img", &ours),
            d.info_json("qemu-img", &theirs),
        );
        assert_eq!(a["virtual-size"], b["virtual-size"], "{mode}");
        // Every cluster is mapped in both.
        let map = d.ok("qemu-img", &["map", "--output=json", &ours]);
        assert!(!map.contains("\"present\": false"), "{mode}: {map}");
    }
}

/// Regression (issue: backing loops a->b->a and an image backed by itself overflowed the stack
/// in every command): opening such a chain fails with QEMU's "creates an infinite loop" message
/// naming the file, in every image command and in qemu-io, and nothing is written.
#[test]
fn backing_loops_are_refused_by_every_command() {
    if !have_qemu("backing loop test") {
        return;
    }
    let d = Dir::new("loops");
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    d.ok(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2",
        ],
    );
    d.ok(
        "qemu-img",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    );
    d.ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "s.qcow2", "1M"],
    );
    d.ok(
        "qemu-img",
        &["rebase", "-u", "-b", "s.qcow2", "-F", "qcow2", "s.qcow2"],
    );
    let before: Vec<Vec<u8>> = ["a.qcow2", "b.qcow2", "s.qcow2"]
        .iter()
        .map(|f| std::fs::read(d.0.join(f)).unwrap())
        .collect();
    for img in ["a.qcow2", "s.qcow2"] {
        for args in [
            vec!["info", "--backing-chain", img],
            vec!["map", img],
            vec!["check", img],
            vec!["convert", "-O", "raw", img, "out.raw"],
            vec!["compare", img, img],
            vec!["commit", img],
            vec!["rebase", "-b", "", img],
        ] {
            let o = d.run(QEMU_IMG, &args);
            assert_ne!(o.code, 0, "{args:?}");
            assert!(
                o.stderr.contains("creates an infinite loop."),
                "{args:?}: {}",
                o.stderr
            );
        }
        let o = d.run(BLK, &["io", "-c", "read 0 512", img]);
        assert!(
            o.stderr.contains("creates an infinite loop."),
            "{}",
            o.stderr
        );
    }
    let after: Vec<Vec<u8>> = ["a.qcow2", "b.qcow2", "s.qcow2"]
        .iter()
        .map(|f| std::fs::read(d.0.join(f)).unwrap())
        .collect();
    assert!(before == after, "a refused command changed an image");
}

/// Issue 10 bug 2: a chain of 1,000 images opens, reads and maps (every walk nests one call
/// per image: the program thread's stack is sized for `MAX_CHAIN_DEPTH` images; QEMU's own
/// qemu-io overflows its stack on this chain). The images are made from one qemu-img template
/// with fixed-width names, so only the backing file name differs.
#[test]
fn a_chain_of_1000_images_opens_reads_and_maps() {
    if !have_qemu("deep chain test") {
        return;
    }
    let d = Dir::new("deep-chain");
    let name = |k: usize| format!("i{k:04}.qcow2");
    d.ok("qemu-img", &["create", "-q", "-f", "qcow2", &name(0), "1M"]);
    d.ok("qemu-io", &["-c", "write -P 7 0 64k", &name(0)]);
    let template_args = ["create", "-q", "-f", "qcow2", "-u", "-b"];
    let mut args: Vec<&str> = template_args.to_vec();
    let base = name(0);
    args.extend([base.as_str(), "-F", "qcow2", "t.qcow2", "1M"]);
    d.ok("qemu-img", &args);
    let template = std::fs::read(d.0.join("t.qcow2")).unwrap();
    let at = template
        .windows(base.len())
        .position(|w| w == base.as_bytes())
        .unwrap();
    for k in 1..1000 {
        let mut img = template.clone();
        img[at..at + base.len()].copy_from_slice(name(k - 1).as_bytes());
        std::fs::write(d.0.join(name(k)), img).unwrap();
    }
    let top = name(999);
    d.ok("qemu-io", &["-c", "write -P 9 64k 64k", &top]);
    let out = d.blk(&[
        "io",
        "-c",
        "read -P 7 0 4k",
        "-c",
        "read -P 9 64k 4k",
        "-c",
        "read -P 0 128k 4k",
        &top,
    ]);
    assert_eq!(out.matches("read 4096/4096").count(), 3, "{out}");
    let map = d.blk(&["map", "--output=json", &top]);
    assert!(map.contains("\"depth\": 999"), "{map}");
}
