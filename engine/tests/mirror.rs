//! Mirror and active commit through the engine: cutover under guest writes, cancel before and
//! after READY, write-blocking mode, drains, error policies, and active commit's pivot. Data is
//! compared byte for byte on in-memory nodes; every test runs over several seeds.

use crate::support;

use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::io::{IoBuf, ReqFlags};
use engine::job::{JobOptions, JobStatus};
use engine::types::OnError;
use engine::{Engine, Errno};
use serde_json::json;
use support::{add_mem, mem, qmp_ok, run};

const MB: u64 = 1 << 20;

fn events(engine: &Engine) -> Vec<String> {
    engine
        .take_events()
        .into_iter()
        .filter(|e| e.name.starts_with("BLOCK_JOB_"))
        .map(|e| e.name["BLOCK_JOB_".len()..].to_string())
        .collect()
}

/// Fill `name` with a recognisable pattern (byte = offset / 4096 + salt).
fn fill(name: &str, salt: u8) {
    for (i, b) in mem(name).data.borrow_mut().iter_mut().enumerate() {
        *b = ((i / 4096) as u8).wrapping_add(salt);
    }
}

fn same(a: &str, b: &str) -> bool {
    *mem(a).data.borrow() == *mem(b).data.borrow()
}

/// Guest writes of `count` random 4k..64k blocks through the device.
async fn guest_writes(engine: &Rc<Engine>, seed: u64, count: u64) {
    let bb = engine.backend("drive0").unwrap();
    let len = bb.len().unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 4096 * (1 + x % 16);
        let off = (x >> 8) % (len - n) / 512 * 512;
        let mut buf = IoBuf::new(n as usize);
        buf.as_mut_slice().fill((i % 250) as u8 + 3);
        let (_, r) = bb.write(off, buf, ReqFlags::NONE).await;
        r.unwrap();
    }
}

async fn setup(engine: &Rc<Engine>, size: u64) {
    add_mem(engine, "src", json!({"size": size})).await;
    add_mem(engine, "dst", json!({"size": size})).await;
    fill("src", 1);
    fill("dst", 200);
    engine
        .device_add("drive0", "src", BackendOptions::guest_device(false, false))
        .unwrap();
}

fn root(engine: &Engine) -> String {
    engine
        .backend("drive0")
        .unwrap()
        .root_node()
        .unwrap()
        .name()
        .to_string()
}

#[test]
fn mirror_cutover_under_guest_writes_pivots_to_an_equal_target() {
    for seed in 0..6 {
        run(seed, |engine| async move {
            setup(&engine, 4 * MB).await;
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full",
                    "granularity": 65536, "filter-node-name": "mtop"}}),
            )
            .await;
            assert_eq!(root(&engine), "mtop");
            let writer = {
                let engine = engine.clone();
                async move { guest_writes(&engine, seed, 60).await }
            };
            let job = engine.find_job("m0").unwrap();
            writer.await;
            job.wait_status(|s| s == JobStatus::Ready).await;
            guest_writes(&engine, seed + 100, 20).await;
            job.user_complete().unwrap();
            job.wait_status(|s| s == JobStatus::Null).await;
            assert_eq!(
                root(&engine),
                "dst",
                "seed {seed}: the device moved to the target"
            );
            assert!(engine.graph().node("mtop").is_none(), "the filter is gone");
            assert!(
                same("src", "dst"),
                "seed {seed}: target differs from source"
            );
            let ev = events(&engine);
            assert_eq!(ev, ["READY", "COMPLETED"], "seed {seed}");
            // Guest writes now land on the target only.
            let before = mem("src").data.borrow().clone();
            guest_writes(&engine, seed + 200, 5).await;
            assert_eq!(*mem("src").data.borrow(), before);
            assert!(engine.query_jobs().as_array().unwrap().is_empty());
            // The target lost its job blocker; the source its filter parent.
            engine
                .graph()
                .node("dst")
                .unwrap()
                .check_op_blockers()
                .unwrap();
            assert!(engine.graph().node("src").unwrap().parents().is_empty());
        });
    }
}

#[test]
fn cancel_before_ready_leaves_the_source_alone() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            setup(&engine, 8 * MB).await;
            let graph_before = engine.block_graph();
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full", "speed": MB}}),
            )
            .await;
            let env = engine.env().clone();
            env.sleep_until(env.now_ns() + 50_000_000).await;
            let job = engine.find_job("m0").unwrap();
            assert_eq!(job.status(), JobStatus::Running);
            qmp_ok(
                &engine,
                json!({"execute": "block-job-cancel", "arguments": {"device": "m0"}}),
            )
            .await;
            job.wait_status(|s| s == JobStatus::Null).await;
            assert_eq!(events(&engine), ["CANCELLED"]);
            assert_eq!(root(&engine), "src");
            assert_eq!(engine.block_graph(), graph_before, "seed {seed}");
        });
    }
}

#[test]
fn cancel_after_ready_finishes_the_copy_without_pivot() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            setup(&engine, 2 * MB).await;
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full"}}),
            )
            .await;
            let job = engine.find_job("m0").unwrap();
            job.wait_status(|s| s == JobStatus::Ready).await;
            guest_writes(&engine, seed, 10).await;
            qmp_ok(
                &engine,
                json!({"execute": "block-job-cancel", "arguments": {"device": "m0"}}),
            )
            .await;
            job.wait_status(|s| s == JobStatus::Null).await;
            assert_eq!(events(&engine), ["READY", "COMPLETED"]);
            assert_eq!(root(&engine), "src");
            assert!(
                same("src", "dst"),
                "seed {seed}: the target is a consistent copy"
            );
        });
    }
}

#[test]
fn force_cancel_after_ready_reports_cancelled() {
    run(1, |engine| async move {
        setup(&engine, MB).await;
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                "device": "drive0", "target": "dst", "sync": "full"}}),
        )
        .await;
        let job = engine.find_job("m0").unwrap();
        job.wait_status(|s| s == JobStatus::Ready).await;
        qmp_ok(
            &engine,
            json!({"execute": "block-job-cancel",
            "arguments": {"device": "m0", "force": true}}),
        )
        .await;
        job.wait_status(|s| s == JobStatus::Null).await;
        assert_eq!(events(&engine), ["READY", "CANCELLED"]);
        assert_eq!(root(&engine), "src");
    });
}

#[test]
fn write_blocking_writes_reach_the_target_before_the_guest_sees_completion() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            setup(&engine, 2 * MB).await;
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full",
                    "copy-mode": "write-blocking", "speed": 4 * MB}}),
            )
            .await;
            let job = engine.find_job("m0").unwrap();
            let bb = engine.backend("drive0").unwrap();
            // While the background copy is still going: each completed guest write is already on
            // the target.
            for i in 0..20u64 {
                let off = (i * 37 % 30) * 65536;
                let mut buf = IoBuf::new(65536);
                buf.as_mut_slice().fill(0xa0 + i as u8);
                bb.write(off, buf, ReqFlags::NONE).await.1.unwrap();
                let d = mem("dst").data.borrow()[off as usize..(off + 65536) as usize].to_vec();
                assert!(
                    d.iter().all(|&b| b == 0xa0 + i as u8),
                    "seed {seed}: write {i}"
                );
            }
            assert_eq!(job.status(), JobStatus::Running);
            job.wait_status(|s| s == JobStatus::Ready).await;
            job.user_complete().unwrap();
            job.wait_status(|s| s == JobStatus::Null).await;
            assert!(same("src", "dst"));
            assert_eq!(root(&engine), "dst");
        });
    }
}

#[test]
fn a_drained_source_pauses_the_mirror() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            setup(&engine, 8 * MB).await;
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full", "speed": 4 * MB}}),
            )
            .await;
            let env = engine.env().clone();
            env.sleep_until(env.now_ns() + 100_000_000).await;
            let src = engine.graph().node("src").unwrap();
            let dst = engine.graph().node("dst").unwrap();
            let section = src.drained_begin().await;
            let job = engine.find_job("m0").unwrap();
            job.wait_status(|s| s == JobStatus::Paused).await;
            assert_eq!(src.in_flight() + dst.in_flight(), 0);
            mem("src").take_log();
            mem("dst").take_log();
            env.sleep_until(env.now_ns() + 2_000_000_000).await;
            assert!(mem("src").take_log().is_empty(), "seed {seed}");
            assert!(mem("dst").take_log().is_empty(), "seed {seed}");
            drop(section);
            job.wait_status(|s| s == JobStatus::Ready).await;
            job.user_complete().unwrap();
            job.wait_status(|s| s == JobStatus::Null).await;
            assert!(same("src", "dst"));
        });
    }
}

#[test]
fn target_write_errors_follow_on_target_error() {
    // report: the job fails; ignore: it retries and converges once the target heals; stop: it
    // pauses until resumed; enospc: stops on ENOSPC only.
    for (policy, errno, want) in [
        ("report", Errno::EIO, "fail"),
        ("ignore", Errno::EIO, "ready"),
        ("stop", Errno::EIO, "stop"),
        ("enospc", Errno::ENOSPC, "stop"),
        ("enospc", Errno::EIO, "fail"),
    ] {
        run(3, move |engine| async move {
            setup(&engine, MB).await;
            mem("dst").fail_writes.set(Some(errno));
            qmp_ok(
                &engine,
                json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                    "device": "drive0", "target": "dst", "sync": "full",
                    "on-target-error": policy}}),
            )
            .await;
            let env = engine.env().clone();
            let job = engine.find_job("m0").unwrap();
            env.sleep_until(env.now_ns() + 20_000_000).await;
            match want {
                "fail" => {
                    job.wait_status(|s| s == JobStatus::Null).await;
                    let ev = engine.take_events();
                    let done = ev.iter().find(|e| e.name == "BLOCK_JOB_COMPLETED").unwrap();
                    assert!(done.data.get("error").is_some(), "{policy}");
                    assert_eq!(root(&engine), "src");
                }
                "ready" => {
                    assert_eq!(job.status(), JobStatus::Running);
                    mem("dst").fail_writes.set(None);
                    job.wait_status(|s| s == JobStatus::Ready).await;
                    assert!(same("src", "dst"));
                    job.cancel(true).await.unwrap();
                }
                _ => {
                    job.wait_status(|s| s == JobStatus::Paused).await;
                    let ev = engine.take_events();
                    assert!(ev.iter().any(|e| e.name == "BLOCK_JOB_ERROR"
                        && e.data["action"] == "stop"
                        && e.data["operation"] == "write"));
                    mem("dst").fail_writes.set(None);
                    job.user_resume().unwrap();
                    job.wait_status(|s| s == JobStatus::Ready).await;
                    assert!(same("src", "dst"));
                    job.cancel(true).await.unwrap();
                }
            }
        });
    }
}

#[test]
fn active_commit_pivots_the_device_to_the_base() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            // base <- top (qcow2 would do; in-memory nodes with a raw-like overlay are enough
            // here: the top is a testmem whose content is the whole image).
            add_mem(&engine, "base", json!({"size": 2 * MB})).await;
            add_mem(&engine, "top", json!({"size": 2 * MB})).await;
            fill("top", 7);
            let top = engine.graph().node("top").unwrap();
            let base = engine.graph().node("base").unwrap();
            // A chain needs a backing edge: attach base below top through the graph API.
            engine::graph::attach_child(&top, &base, "backing", engine::types::ChildRole::COW)
                .unwrap();
            engine
                .device_add("drive0", "top", BackendOptions::guest_device(false, false))
                .unwrap();
            let job = engine::job::active_commit::start(
                engine.jobs(),
                &JobOptions::new("c0"),
                &top,
                &base,
                OnError::Report,
                None,
            )
            .await
            .unwrap();
            assert_eq!(job.job_type(), "commit");
            guest_writes(&engine, seed, 20).await;
            job.wait_status(|s| s == JobStatus::Ready).await;
            guest_writes(&engine, seed + 1, 10).await;
            job.user_complete().unwrap();
            job.wait_status(|s| s == JobStatus::Null).await;
            assert_eq!(root(&engine), "base");
            assert!(same("top", "base"), "seed {seed}");
            assert_eq!(events(&engine), ["READY", "COMPLETED"]);
        });
    }
}

#[test]
fn replaces_swaps_a_node_below_a_filter_at_the_pivot() {
    run(2, |engine| async move {
        // drive0 -> fmt (raw, a filter of its file) -> under; the mirror of fmt replaces `under`.
        add_mem(&engine, "dst", json!({"size": MB})).await;
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "fmt",
                                 "file": {"driver": "testmem", "node-name": "under", "size": MB}}))
            .await
            .unwrap();
        fill("under", 9);
        engine
            .device_add("drive0", "fmt", BackendOptions::guest_device(false, false))
            .unwrap();
        qmp_ok(
            &engine,
            json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m0",
                "device": "drive0", "target": "dst", "sync": "full", "replaces": "under"}}),
        )
        .await;
        let job = engine.find_job("m0").unwrap();
        job.wait_status(|s| s == JobStatus::Ready).await;
        guest_writes(&engine, 4, 10).await;
        job.user_complete().unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        // The device still uses fmt, whose file is now the target.
        assert_eq!(root(&engine), "fmt");
        let fmt = engine.graph().node("fmt").unwrap();
        assert_eq!(fmt.child("file").unwrap().child_node().name(), "dst");
        assert!(same("under", "dst"));
    });
}

#[test]
fn drive_mirror_creates_its_target_and_pivots_to_it() {
    run(5, |engine| async move {
        add_mem(&engine, "src", json!({"size": MB})).await;
        fill("src", 3);
        engine
            .device_add("drive0", "src", BackendOptions::guest_device(false, false))
            .unwrap();
        // testmem has no image format: the new image is raw (format given).
        qmp_ok(
            &engine,
            json!({"execute": "drive-mirror", "arguments": {"device": "drive0",
                "target": "new.img", "format": "raw", "node-name": "new", "sync": "full"}}),
        )
        .await;
        // The job id defaults to the device name.
        let job = engine.find_job("drive0").unwrap();
        job.wait_status(|s| s == JobStatus::Ready).await;
        job.user_complete().unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        assert_eq!(root(&engine), "new");
        let bb = engine.backend("drive0").unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(MB as usize)).await;
        r.unwrap();
        assert_eq!(buf.as_slice(), &mem("src").data.borrow()[..]);
    });
}
