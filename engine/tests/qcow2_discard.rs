//! qcow2 discard and zero writes against QEMU: a discard never makes older data visible (v2
//! images, which cannot express "reads as zeroes", keep the data over a backing file), the
//! partial last cluster of an image whose size is not cluster aligned is discarded when the
//! request reaches the end, and the allocation left behind (`qemu-img map`) is QEMU's for the
//! same requests (run with qemu-io on a copy of the same starting image).

use crate::qcow2_support;

use engine::drivers::qcow2::{Compat, CreateOptions};
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use sim::View;

/// One guest request, as blk issues it and as a qemu-io command.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Write(u64, u64, u8),
    WriteCompressed(u64, u64, u8),
    Discard(u64, u64),
    Zero(u64, u64, bool),
}

impl Step {
    fn qemu_io(self) -> String {
        match self {
            Step::Write(o, l, p) => format!("write -P {p} {o} {l}"),
            Step::WriteCompressed(o, l, p) => format!("write -c -P {p} {o} {l}"),
            Step::Discard(o, l) => format!("discard {o} {l}"),
            Step::Zero(o, l, true) => format!("write -z -u {o} {l}"),
            Step::Zero(o, l, false) => format!("write -z {o} {l}"),
        }
    }

    /// Apply the step to the byte model (a discard is checked separately: either its bytes
    /// stay or they read as zeroes).
    fn model(self, m: &mut [u8]) {
        match self {
            Step::Write(o, l, p) | Step::WriteCompressed(o, l, p) => {
                m[o as usize..(o + l) as usize].fill(p)
            }
            Step::Zero(o, l, _) => m[o as usize..(o + l) as usize].fill(0),
            Step::Discard(..) => {}
        }
    }
}

/// The image a case starts from.
pub struct Start {
    pub size: u64,
    pub compat: Compat,
    /// A raw backing file of this many 0xff bytes.
    pub backing: Option<u64>,
}

const BACKING_BYTE: u8 = 0xff;

/// Create the starting image with blk: `init.qcow2` in `dir` (and its backing file
/// `base.raw`); `prep` steps (compressed writes, which blk cannot issue) are applied with
/// qemu-io.
pub fn make_start(dir: &Scratch, start: &Start, prep: &[Step]) {
    let sim = sim_with(1, &[("img.qcow2", Vec::new())]);
    let engine = engine_of(&sim);
    let opts = CreateOptions {
        size: start.size,
        compat: start.compat,
        backing_file: start.backing.map(|_| "base.raw".into()),
        backing_fmt: start.backing.map(|_| "raw".into()),
        ..CreateOptions::default()
    };
    sim.block_on(async move { create_on(&engine, "img.qcow2", &opts).await })
        .unwrap();
    export(&sim, "img.qcow2", View::Current, dir, "init.qcow2");
    if let Some(n) = start.backing {
        std::fs::write(dir.path("base.raw"), vec![BACKING_BYTE; n as usize]).unwrap();
    }
    if !prep.is_empty() {
        qemu_io(dir, "init.qcow2", prep);
    }
}

/// Run `steps` with blk (in the simulator) on a copy of `init.qcow2`; returns what the guest
/// reads afterwards. The result is exported to `blk.qcow2`.
pub fn run_blk(dir: &Scratch, steps: &[Step]) -> Vec<u8> {
    let mut files = vec![("img.qcow2", dir.read("init.qcow2"))];
    if dir.path("base.raw").exists() {
        files.push(("base.raw", dir.read("base.raw")));
    }
    let sim = sim_with(1, &files);
    let engine = engine_of(&sim);
    let steps = steps.to_vec();
    let data = sim
        .block_on(async move {
            let bb = open_qcow2(&engine, "q", "img.qcow2", false).await.unwrap();
            for s in steps {
                let r = match s {
                    Step::Write(o, l, p) => {
                        bb.write(o, IoBuf::filled(l as usize, p), ReqFlags::NONE)
                            .await
                            .1
                    }
                    Step::WriteCompressed(..) => panic!("blk cannot write compressed clusters"),
                    Step::Discard(o, l) => bb.discard(o, l).await,
                    Step::Zero(o, l, unmap) => {
                        let f = if unmap {
                            ReqFlags::MAY_UNMAP
                        } else {
                            ReqFlags::NONE
                        };
                        bb.write_zeroes(o, l, f).await
                    }
                };
                r.unwrap_or_else(|e| panic!("{s:?}: {e}"));
            }
            let data = read_all(&bb).await;
            engine.device_del("dev-q").await.unwrap();
            engine.blockdev_del("q").await.unwrap();
            data
        })
        .unwrap();
    export(&sim, "img.qcow2", View::Current, dir, "blk.qcow2");
    data
}

/// Run qemu-io commands for `steps` on `img` in `dir`.
fn qemu_io(dir: &Scratch, img: &str, steps: &[Step]) {
    let cmds: Vec<String> = steps.iter().map(|s| s.qemu_io()).collect();
    let mut args = vec!["-f", "qcow2"];
    for c in &cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    dir.run("qemu-io", &args);
}

/// Run the same steps with qemu-io on a copy of `init.qcow2` (`qemu.qcow2`).
pub fn run_qemu(dir: &Scratch, steps: &[Step]) {
    std::fs::copy(dir.path("init.qcow2"), dir.path("qemu.qcow2")).unwrap();
    qemu_io(dir, "qemu.qcow2", steps);
}

/// `qemu-img map --output=json` of an image in `dir`.
pub fn map(dir: &Scratch, img: &str) -> String {
    dir.run("qemu-img", &["map", "--output=json", "-f", "qcow2", img])
}

/// Run `steps` with blk and with QEMU (where installed); blk's result must pass
/// `qemu-img check`, read the same in QEMU, and be mapped as QEMU's is.
fn same_as_qemu(name: &str, start: &Start, prep: &[Step], steps: &[Step]) -> Vec<u8> {
    let dir = Scratch::new(name);
    make_start(&dir, start, prep);
    let data = run_blk(&dir, steps);
    if have_qemu() {
        run_qemu(&dir, steps);
        dir.check("blk.qcow2", false);
        assert_qemu_reads(&dir, "blk.qcow2", &data, name);
        assert_eq!(
            map(&dir, "blk.qcow2"),
            map(&dir, "qemu.qcow2"),
            "{name}: qemu-img map"
        );
    }
    data
}

/// Bytes a discard may leave: the latest data or zeroes, never older data (the backing
/// file's under a cluster written since).
fn assert_no_older_data(name: &str, start: &Start, prep: &[Step], steps: &[Step], data: &[u8]) {
    let mut model = vec![0u8; start.size as usize];
    if let Some(n) = start.backing {
        model[..n as usize].fill(BACKING_BYTE);
    }
    for s in prep.iter().chain(steps) {
        s.model(&mut model);
    }
    for s in steps {
        if let Step::Discard(o, l) = s {
            for i in *o as usize..(*o + *l) as usize {
                let ok = data[i] == model[i] || data[i] == 0;
                assert!(
                    ok,
                    "{name}: byte {i} reads {:#x} after the discard, wrote {:#x}",
                    data[i], model[i]
                );
            }
        }
    }
}

/// Issue 10 bug 3: discarding written clusters of a v2 overlay left them unallocated, so the
/// backing file's older data showed through (QEMU keeps the data: v2 has no zero flag).
#[test]
fn v2_discard_over_backing_keeps_the_data() {
    let start = Start {
        size: 1 << 20,
        compat: Compat::V2,
        backing: Some(1 << 20),
    };
    let steps = [Step::Write(0, 128 << 10, 1), Step::Discard(0, 128 << 10)];
    let data = same_as_qemu("v2-backing", &start, &[], &steps);
    assert!(
        data[..128 << 10].iter().all(|b| *b == 1),
        "the backing's data shows through"
    );
}

/// Every discard and zero path (v2/v3, with and without backing, normal and compressed
/// clusters, partial clusters) never exposes older data and allocates as QEMU does.
#[test]
fn discard_never_exposes_older_data() {
    let (k64, k128) = (64u64 << 10, 128u64 << 10);
    for compat in [Compat::V2, Compat::V3] {
        for backing in [None, Some(1u64 << 20)] {
            for compressed in [false, true] {
                if compressed && !have_qemu() {
                    continue;
                }
                let start = Start {
                    size: 1 << 20,
                    compat,
                    backing,
                };
                let prep = if compressed {
                    vec![Step::WriteCompressed(0, 4 * k64, 7)]
                } else {
                    vec![Step::Write(0, 4 * k64, 7)]
                };
                let steps = [
                    Step::Discard(0, k128),
                    Step::Discard(k128 + 512, k64),
                    Step::Write(5 * k64, k64, 9),
                    Step::Zero(5 * k64, k64, true),
                    Step::Write(6 * k64, k64, 3),
                    Step::Zero(6 * k64, k64, false),
                    Step::Discard(0, 1 << 20),
                ];
                let name = format!("{compat:?}-{backing:?}-{compressed}").replace(['(', ')'], "");
                let data = same_as_qemu(&name, &start, &prep, &steps);
                assert_no_older_data(&name, &start, &prep, &steps, &data);
            }
        }
    }
}

/// Issue 10 bug 4: a discard reaching the end of an image whose size is not cluster aligned
/// left the partial last cluster's data (QEMU discards that cluster).
#[test]
fn discard_to_an_unaligned_end_drops_the_last_cluster() {
    for compat in [Compat::V2, Compat::V3] {
        let start = Start {
            size: 66048,
            compat,
            backing: None,
        };
        let steps = [Step::Write(65536, 512, 0xcd), Step::Discard(0, 66048)];
        let data = same_as_qemu(&format!("tail-{compat:?}"), &start, &[], &steps);
        assert!(
            data.iter().all(|b| *b == 0),
            "{compat:?}: the last cluster kept its data"
        );
    }
    // Over a backing file a v3 image reads zeroes there; a v2 image keeps the data.
    for (compat, want) in [(Compat::V3, 0u8), (Compat::V2, 0xcd)] {
        let start = Start {
            size: 66048,
            compat,
            backing: Some(66048),
        };
        let steps = [Step::Write(65536, 512, 0xcd), Step::Discard(0, 66048)];
        let data = same_as_qemu(&format!("tail-backing-{compat:?}"), &start, &[], &steps);
        assert!(
            data[65536..].iter().all(|b| *b == want),
            "{compat:?} over a backing file"
        );
    }
}

/// Issue 10 bug 10: zero writes allocated otherwise than QEMU. A v3 image gives every cluster
/// of the range the zero flag (unallocated ones too, and a partly covered unallocated cluster
/// that reads as zeroes); a v2 image without a backing file deallocates whole clusters and
/// leaves a partial one that reads as zeroes alone; a zero cluster that keeps its host cluster
/// is written in place. `qemu-img map` of blk's image equals QEMU's for each.
#[test]
fn zero_writes_allocate_as_qemu() {
    let (k4, k64) = (4u64 << 10, 64u64 << 10);
    let cases: [(&str, &[Step]); 8] = [
        ("partial-unallocated", &[Step::Zero(0, k4, false)]),
        ("all-unmap", &[Step::Zero(0, 1 << 20, true)]),
        ("all-keep", &[Step::Zero(0, 1 << 20, false)]),
        ("unaligned", &[Step::Zero(100 << 10, 100 << 10, false)]),
        ("allocated-unmap", &[Step::Zero(2 * k64, k64, true)]),
        (
            "zero-then-write",
            &[Step::Zero(2 * k64, k64, false), Step::Write(2 * k64, k4, 3)],
        ),
        (
            "unmapped-then-write",
            &[Step::Zero(2 * k64, k64, true), Step::Write(2 * k64, k4, 3)],
        ),
        ("full-unallocated", &[Step::Zero(0, k64, false)]),
    ];
    for compat in [Compat::V2, Compat::V3] {
        for backing in [None, Some(1u64 << 20)] {
            let start = Start {
                size: 1 << 20,
                compat,
                backing,
            };
            let prep = [Step::Write(2 * k64, 2 * k64, 1)];
            for (what, steps) in cases {
                let name = format!("zero-{what}-{compat:?}-{}", backing.is_some());
                let data = same_as_qemu(&name, &start, &prep, steps);
                let mut model = vec![0u8; 1 << 20];
                if backing.is_some() {
                    model.fill(BACKING_BYTE);
                }
                prep.iter().chain(steps).for_each(|s| s.model(&mut model));
                assert!(data == model, "{name}: contents");
            }
        }
    }
}
