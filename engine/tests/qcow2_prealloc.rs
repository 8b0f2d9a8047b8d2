//! qcow2 preallocation: images created with `metadata`, `falloc` and `full` map every guest
//! cluster, read as zeroes, take writes in place and pass `qemu-img check` with the same
//! allocation numbers as QEMU's own preallocated images; a growing resize with preallocation
//! maps the new clusters the same way, even when it reuses freed clusters holding old data.

use crate::qcow2_support;

use engine::driver::Prealloc;
use engine::drivers::qcow2::{CreateOptions, check_node};
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::Value;
use sim::View;

const SIZE: u64 = (3 << 20) + 1536;

fn check_json(dir: &Scratch, f: &str) -> Value {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "--output=json", f])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn create_with_preallocation() {
    let have = have_qemu();
    let dir = Scratch::new("prealloc-create");
    for (i, (mode, name)) in [
        (Prealloc::Metadata, "metadata"),
        (Prealloc::Falloc, "falloc"),
        (Prealloc::Full, "full"),
    ]
    .into_iter()
    .enumerate()
    {
        for cs in [4096u64, 65536] {
            let sim = sim_with(i as u64, &[("p.qcow2", Vec::new())]);
            let engine = engine_of(&sim);
            sim.block_on(async move {
                let opts = CreateOptions {
                    size: SIZE,
                    cluster_size: cs,
                    preallocation: mode,
                    ..CreateOptions::default()
                };
                create_on(&engine, "p.qcow2", &opts).await;
                let bb = open_qcow2(&engine, "q", "p.qcow2", false).await.unwrap();
                assert!(
                    read_all(&bb).await.iter().all(|&b| b == 0),
                    "{name}: not zeroes"
                );
                bb.write(70_000, IoBuf::filled(10_000, 0x77), ReqFlags::NONE)
                    .await
                    .1
                    .unwrap();
                let rep = check_node(&engine.node("q").unwrap(), None).await.unwrap();
                assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{:#?}", rep.messages);
                assert_eq!(rep.allocated_clusters, SIZE.div_ceil(cs), "{name}");
                engine.shutdown().await.unwrap();
            })
            .unwrap();
            if have {
                let ours = format!("ours-{name}-{cs}.qcow2");
                export(&sim, "p.qcow2", View::Current, &dir, &ours);
                let theirs = format!("qemu-{name}-{cs}.qcow2");
                dir.run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &format!("cluster_size={cs},preallocation={name}"),
                        &theirs,
                        &SIZE.to_string(),
                    ],
                );
                let (a, b) = (check_json(&dir, &ours), check_json(&dir, &theirs));
                assert_eq!(
                    a["allocated-clusters"], b["allocated-clusters"],
                    "{name} {cs}"
                );
                assert_eq!(a["total-clusters"], b["total-clusters"], "{name} {cs}");
                let raw = format!("{ours}.raw");
                dir.run("qemu-img", &["convert", "-O", "raw", &ours, &raw]);
                let data = dir.read(&raw);
                assert!(data[70_000..80_000].iter().all(|&b| b == 0x77));
                assert!(data[..70_000].iter().all(|&b| b == 0));
                assert!(data[80_000..].iter().all(|&b| b == 0));
            }
        }
    }
}

/// Grow with preallocation after discarding data: the freed clusters are reused and must
/// still read as zeroes.
#[test]
fn growing_resize_with_preallocation() {
    let have = have_qemu();
    let dir = Scratch::new("prealloc-grow");
    for (i, mode) in [Prealloc::Metadata, Prealloc::Falloc, Prealloc::Full]
        .into_iter()
        .enumerate()
    {
        let sim = sim_with(20 + i as u64, &[("g.qcow2", Vec::new())]);
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let opts = CreateOptions {
                size: 1 << 20,
                ..CreateOptions::default()
            };
            create_on(&engine, "g.qcow2", &opts).await;
            let bb = open_qcow2(&engine, "q", "g.qcow2", false).await.unwrap();
            bb.write(0, IoBuf::filled(1 << 20, 0xaa), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            bb.flush().await.unwrap();
            bb.discard(512 << 10, 512 << 10).await.unwrap();
            bb.flush().await.unwrap();
            bb.root()
                .unwrap()
                .truncate(4 << 20, true, mode)
                .await
                .unwrap();
            let all = read_all(&bb).await;
            assert_eq!(all.len(), 4 << 20);
            assert!(all[..512 << 10].iter().all(|&b| b == 0xaa));
            assert!(
                all[512 << 10..].iter().all(|&b| b == 0),
                "{mode:?}: stale data"
            );
            let rep = check_node(&engine.node("q").unwrap(), None).await.unwrap();
            assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{:#?}", rep.messages);
            // 8 clusters kept + 48 preallocated (the discarded ones stay unallocated).
            assert_eq!(rep.allocated_clusters, 8 + 48, "{mode:?}");
            let e = bb
                .root()
                .unwrap()
                .truncate(1 << 20, true, mode)
                .await
                .unwrap_err();
            assert!(
                e.message().to_lowercase().contains("preallocation"),
                "{}",
                e.message()
            );
            engine.shutdown().await.unwrap();
        })
        .unwrap();
        if have {
            let out = format!("g{i}.qcow2");
            export(&sim, "g.qcow2", View::Current, &dir, &out);
            dir.check(&out, false);
        }
    }
}

/// Zero-seeking block status (map, convert, compare) of a metadata-preallocated image: the
/// written cluster is data, the preallocated clusters over holes of the file are data that
/// reads as zeroes (QEMU's `"data": true, "zero": true`); plain block status (what jobs ask)
/// still calls them data. A fully written image is not taken for a preallocated one.
#[test]
fn metadata_preallocated_clusters_over_holes_read_as_zero_data() {
    use engine::io::Mapping;
    for (mode, written) in [(Prealloc::Metadata, 65536u64), (Prealloc::Off, SIZE)] {
        let sim = sim_with(9, &[("p.qcow2", Vec::new())]);
        let engine = engine_of(&sim);
        sim.block_on(async move {
            let opts = CreateOptions {
                size: SIZE,
                preallocation: mode,
                ..CreateOptions::default()
            };
            create_on(&engine, "p.qcow2", &opts).await;
            let bb = open_qcow2(&engine, "q", "p.qcow2", false).await.unwrap();
            bb.write(0, IoBuf::filled(written as usize, 0x55), ReqFlags::NONE)
                .await
                .1
                .unwrap();
            bb.flush().await.unwrap();
            let root = bb.root().unwrap();
            let head = root.chain_status_want_zero(0, SIZE, None).await.unwrap();
            assert!(
                matches!(head.mapping, Mapping::Data { .. }),
                "{mode:?} {head:?}"
            );
            assert_eq!(head.len, written.min(SIZE), "{mode:?}");
            if written < SIZE {
                let tail = root
                    .chain_status_want_zero(written, SIZE, None)
                    .await
                    .unwrap();
                assert!(
                    matches!(tail.mapping, Mapping::DataZero { host: Some(_) }),
                    "{tail:?}"
                );
                assert_eq!(tail.len, SIZE - written);
                let plain = root.chain_status(written, SIZE, None).await.unwrap();
                assert!(matches!(plain.mapping, Mapping::Data { .. }), "{plain:?}");
            }
            engine.shutdown().await.unwrap();
        })
        .unwrap();
    }
}
