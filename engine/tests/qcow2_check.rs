//! qcow2 `check`: images written by QEMU, with leaks and corruptions injected into their
//! refcount blocks and L2 tables, give the same numbers as `qemu-img check --output=json`;
//! repairs (`-r leaks`, `-r all`) give QEMU's numbers and leave images `qemu-img check` finds
//! clean.

use crate::qcow2_support;

use engine::drivers::qcow2::{CheckReport, Repair, check_node};
use qcow2_support::*;
use serde_json::Value;

const CS: u64 = 65536;

fn be64(img: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(img[off as usize..off as usize + 8].try_into().unwrap())
}

fn put64(img: &mut [u8], off: u64, v: u64) {
    img[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// Set the 16-bit refcount of host cluster `c` (first refcount block).
fn set_refcount(img: &mut [u8], c: u64, v: u16) {
    let rb = be64(img, be64(img, 48));
    let o = (rb + 2 * c) as usize;
    img[o..o + 2].copy_from_slice(&v.to_be_bytes());
}

/// Offset of L2 entry `i` of the first L2 table.
fn l2_entry_off(img: &[u8], i: u64) -> u64 {
    let l1 = be64(img, 40);
    (be64(img, l1) & 0x00ff_ffff_ffff_fe00) + 8 * i
}

/// A 4 MiB image with 64 KiB clusters, written by qemu-io: three data clusters out of order
/// (fragmented) and one compressed cluster.
fn base_image(dir: &Scratch) -> Vec<u8> {
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
    );
    dir.run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -P 2 192k 64k",
            "-c",
            "write -P 3 64k 64k",
            "-c",
            "write -c -P 4 1M 64k",
            "base.qcow2",
        ],
    );
    dir.read("base.qcow2")
}

/// `qemu-img check` of a host image: (exit code, JSON without the file name).
fn qemu_check(dir: &Scratch, f: &str, repair: Option<&str>) -> (i32, Option<Value>) {
    let mut args = vec!["check", "-f", "qcow2", "--output=json"];
    if let Some(r) = repair {
        args.extend(["-r", r]);
    }
    args.push(f);
    let out = std::process::Command::new("qemu-img")
        .args(&args)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("filename");
            v
        });
    (code, json)
}

/// blk's check of `img` on the simulator: the report (without the file name) and the image
/// bytes afterwards.
fn blk_check(img: Vec<u8>, repair: Option<Repair>) -> (Result<CheckReport, String>, Vec<u8>) {
    let sim = sim_with(7, &[("i.qcow2", img)]);
    let engine = engine_of(&sim);
    let rep = sim
        .block_on(async move {
            let bb = open_qcow2(&engine, "q", "i.qcow2", repair.is_none())
                .await
                .unwrap();
            let r = check_node(&bb.root().unwrap().node(), repair)
                .await
                .map_err(|e| e.message().to_string());
            engine.shutdown().await.unwrap();
            r
        })
        .unwrap();
    (rep, sim.fs().file_bytes("i.qcow2").unwrap())
}

fn json_of(r: &CheckReport) -> Value {
    let mut v = r.to_json();
    v.as_object_mut().unwrap().remove("filename");
    v
}

type Inject = fn(&mut Vec<u8>);

fn cases() -> Vec<(&'static str, Inject)> {
    vec![
        ("clean", |_| {}),
        ("header leaked", |i| set_refcount(i, 0, 3)),
        ("data refcount 2", |i| {
            let host = be64(i, l2_entry_off(i, 0)) & 0x00ff_ffff_ffff_fe00;
            set_refcount(i, host / CS, 2)
        }),
        ("data refcount 0", |i| {
            let host = be64(i, l2_entry_off(i, 3)) & 0x00ff_ffff_ffff_fe00;
            set_refcount(i, host / CS, 0)
        }),
        ("shared data cluster", |i| {
            let e = be64(i, l2_entry_off(i, 0));
            let o = l2_entry_off(i, 7);
            put64(i, o, e)
        }),
        ("misaligned L2 entry", |i| {
            let e = be64(i, l2_entry_off(i, 1));
            let o = l2_entry_off(i, 1);
            put64(i, o, e + 512)
        }),
        ("L2 entry beyond EOF", |i| {
            let o = l2_entry_off(i, 9);
            put64(i, o, (1 << 63) | (64 << 20))
        }),
        ("L2 entry into the L1 table", |i| {
            let l1 = be64(i, 40);
            let o = l2_entry_off(i, 10);
            put64(i, o, (1 << 63) | l1)
        }),
        ("refcount block refcount 0", |i| {
            let rb = be64(i, be64(i, 48));
            set_refcount(i, rb / CS, 0)
        }),
        ("L2 COPIED flag cleared", |i| {
            let l1 = be64(i, 40);
            let e = be64(i, l1);
            put64(i, l1, e & !(1 << 63))
        }),
    ]
}

#[test]
fn check_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("check");
    let base = base_image(&dir);
    for (name, inject) in cases() {
        let mut img = base.clone();
        inject(&mut img);
        std::fs::write(dir.path("c.qcow2"), &img).unwrap();
        let (code, want) = qemu_check(&dir, "c.qcow2", None);
        let (got, _) = blk_check(img, None);
        let got = got.unwrap_or_else(|e| panic!("{name}: check failed: {e}"));
        assert_eq!(Some(json_of(&got)), want, "{name}: {:#?}", got.messages);
        let blk_code = if got.check_errors > 0 {
            1
        } else if got.corruptions > 0 {
            2
        } else if got.leaks > 0 {
            3
        } else {
            0
        };
        assert_eq!(blk_code, code, "{name}");
    }
}

#[test]
fn repair_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("repair");
    let base = base_image(&dir);
    for (name, inject) in cases() {
        for (mode, flag) in [(Repair::Leaks, "leaks"), (Repair::All, "all")] {
            let mut img = base.clone();
            inject(&mut img);
            std::fs::write(dir.path("r.qcow2"), &img).unwrap();
            let (code, want) = qemu_check(&dir, "r.qcow2", Some(flag));
            let (got, after) = blk_check(img, Some(mode));
            let what = format!("{name} -r {flag}");
            let got = match got {
                Ok(g) if g.failed.is_none() => g,
                r => {
                    // QEMU fails the same way ("Check failed"), printing no report.
                    assert_eq!((code, want), (1, None), "{what}: blk failed: {r:?}");
                    continue;
                }
            };
            let mut got_json = json_of(&got);
            let mut want = want.unwrap_or_else(|| panic!("{what}: qemu-img printed no report"));
            let rebuilt = got
                .messages
                .iter()
                .any(|m| m == "Rebuilding refcount structure");
            if rebuilt {
                // Both rebuild the refcount structure, but place it differently.
                got_json.as_object_mut().unwrap().remove("image-end-offset");
                want.as_object_mut().unwrap().remove("image-end-offset");
            }
            assert_eq!(got_json, want, "{what}: {:#?}", got.messages);
            // The repaired image is as clean for qemu-img as QEMU's own repair.
            std::fs::write(dir.path("after.qcow2"), &after).unwrap();
            let (after_code, _) = qemu_check(&dir, "after.qcow2", None);
            assert_eq!(after_code, code, "{what}: qemu-img check of blk's repair");
        }
    }
}

/// A repaired image still reads what QEMU wrote.
#[test]
fn repair_keeps_data() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("repairdata");
    let mut img = base_image(&dir);
    set_refcount(&mut img, 0, 5);
    let (rep, after) = blk_check(img, Some(Repair::Leaks));
    let rep = rep.unwrap();
    assert_eq!((rep.leaks, rep.leaks_fixed), (0, 1));
    std::fs::write(dir.path("a.qcow2"), &after).unwrap();
    dir.check("a.qcow2", false);
    let raw = dir.path("a.raw");
    dir.run(
        "qemu-img",
        &["convert", "-O", "raw", "a.qcow2", raw.to_str().unwrap()],
    );
    let data = std::fs::read(raw).unwrap();
    assert!(data[..65536].iter().all(|&b| b == 1));
    assert!(data[65536..131072].iter().all(|&b| b == 3));
    assert!(data[196608..262144].iter().all(|&b| b == 2));
    assert!(data[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 4));
}

/// Persistent dirty bitmaps (directory, tables, data clusters) count as references, and
/// internal snapshots' tables too: numbers equal qemu-img's, clean and with a leak.
#[test]
fn bitmaps_and_snapshots_are_counted() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("check-bm");
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "bm.qcow2", "4M"],
    );
    dir.run("qemu-img", &["bitmap", "--add", "bm.qcow2", "b0"]);
    dir.run(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", "bm.qcow2", "b1"],
    );
    dir.run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write 0 64k",
            "-c",
            "write 2M 64k",
            "bm.qcow2",
        ],
    );
    dir.run("qemu-img", &["snapshot", "-c", "s1", "bm.qcow2"]);
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 9 0 128k", "bm.qcow2"],
    );
    let base = dir.read("bm.qcow2");
    let mut leaky = base.clone();
    set_refcount(&mut leaky, 0, 4);
    for (name, img) in [("clean", base), ("leak", leaky)] {
        std::fs::write(dir.path("c.qcow2"), &img).unwrap();
        let (_, want) = qemu_check(&dir, "c.qcow2", None);
        let (got, _) = blk_check(img, None);
        let got = got.unwrap();
        assert_eq!(Some(json_of(&got)), want, "{name}: {:#?}", got.messages);
    }
}
