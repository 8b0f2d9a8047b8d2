//! block-stream and intermediate block-commit on a qcow2 chain in the simulator: the data the
//! guest sees is unchanged, the chain in the graph and in the image headers is shortened, the
//! job's events follow QEMU's, the commit filter sits above the top while the job runs, and the
//! frozen chain refuses conflicting graph changes.

use crate::support;

use std::rc::Rc;

use engine::Engine;
use engine::io::{IoBuf, ReqFlags};
use serde_json::{Value, json};
use support::chain::{SIZE, build, chain_names, header_backing, read_dev, view_of};
use support::run;

async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

async fn ok(engine: &Engine, cmd: Value) {
    let r = qmp(engine, cmd.clone()).await;
    assert!(r.get("error").is_none(), "{cmd} failed: {r}");
}

/// Job events as "NAME status" strings.
fn job_events(engine: &Engine) -> Vec<String> {
    engine
        .take_events()
        .into_iter()
        .filter_map(|e| match e.name {
            "JOB_STATUS_CHANGE" => Some(e.data["status"].as_str()?.to_string()),
            n if n.starts_with("BLOCK_JOB_") => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// True when no node of the graph uses `driver` (a job's filter is gone).
fn no_node_of(engine: &Engine, driver: &str) -> bool {
    engine
        .graph()
        .nodes()
        .iter()
        .all(|n| n.driver_name() != driver)
}

/// Let `ms` milliseconds of virtual time pass.
async fn sleep_ms(engine: &Engine, ms: u64) {
    engine
        .env()
        .sleep_until(engine.env().now_ns() + ms * 1_000_000)
        .await;
}

async fn wait_gone(engine: &Engine, id: &str) {
    if let Some(job) = engine.jobs().get(id) {
        job.wait_concluded().await;
    }
}

#[test]
fn stream_with_base_node_copies_mid_into_top_and_drops_it() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            let view = build(&engine).await;
            engine.take_events();
            ok(
                &engine,
                json!({"execute": "block-stream",
                               "arguments": {"device": "drive0", "base-node": "base"}}),
            )
            .await;
            wait_gone(&engine, "drive0").await;
            assert_eq!(
                job_events(&engine),
                [
                    "created",
                    "running",
                    "waiting",
                    "pending",
                    "BLOCK_JOB_COMPLETED",
                    "concluded",
                    "null"
                ]
            );
            assert_eq!(chain_names(&engine, "top"), ["top", "base"]);
            assert!(
                read_dev(&engine, "drive0").await == view,
                "guest view changed"
            );
            assert_eq!(
                header_backing(&engine, "top.qcow2").await,
                json!("base.qcow2")
            );
            // The top now holds mid's data itself: the same view without mid.
            let fresh = Engine::new(engine.env().clone());
            fresh
                .blockdev_add(
                    json!({"driver": "qcow2", "node-name": "t", "read-only": true,
                                     "file": {"driver": "file", "filename": "top.qcow2"}}),
                )
                .await
                .unwrap();
            fresh
                .device_add("d", "t", engine::backend::BackendOptions::tool(true))
                .unwrap();
            assert!(
                read_dev(&fresh, "d").await == view,
                "reopened chain reads differently"
            );
            let _ = fresh.shutdown().await;
        });
    }
}

#[test]
fn stream_of_the_whole_chain_leaves_no_backing_file() {
    run(7, |engine| async move {
        let view = build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-stream",
                           "arguments": {"device": "drive0", "job-id": "s0", "speed": 0}}),
        )
        .await;
        wait_gone(&engine, "s0").await;
        assert_eq!(chain_names(&engine, "top"), ["top"]);
        assert!(read_dev(&engine, "drive0").await == view);
        assert_eq!(header_backing(&engine, "top.qcow2").await, Value::Null);
    });
}

#[test]
fn stream_backing_file_string_goes_into_the_header() {
    run(8, |engine| async move {
        build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-stream",
                           "arguments": {"device": "drive0", "base": "base.qcow2",
                                         "backing-file": "./base.qcow2"}}),
        )
        .await;
        wait_gone(&engine, "drive0").await;
        assert_eq!(
            header_backing(&engine, "top.qcow2").await,
            json!("./base.qcow2")
        );
    });
}

#[test]
fn stream_keeps_guest_writes_made_while_it_copies() {
    for seed in 0..6 {
        run(seed, |engine| async move {
            let mut view = build(&engine).await;
            // Slow enough that the guest writes land in the middle of the copy.
            ok(
                &engine,
                json!({"execute": "block-stream",
                               "arguments": {"device": "drive0", "base-node": "base",
                                             "speed": 4 << 20}}),
            )
            .await;
            let bb = engine.backend("drive0").unwrap();
            for i in 0..16u64 {
                let off = (1 << 20) + i * (128 << 10) + 4096 * (seed % 4);
                let pat = 0x80 + i as u8;
                let (_, r) = bb
                    .write(off, IoBuf::filled(8192, pat), ReqFlags::NONE)
                    .await;
                r.unwrap();
                view[off as usize..off as usize + 8192].fill(pat);
                engine
                    .env()
                    .sleep_until(engine.env().now_ns() + 7_000_000)
                    .await;
            }
            wait_gone(&engine, "drive0").await;
            assert_eq!(chain_names(&engine, "top"), ["top", "base"]);
            assert!(
                read_dev(&engine, "drive0").await == view,
                "seed {seed}: a guest write was lost"
            );
        });
    }
}

#[test]
fn intermediate_commit_moves_mid_into_base_and_drops_it() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            let view = build(&engine).await;
            engine.take_events();
            ok(
                &engine,
                json!({"execute": "block-commit",
                               "arguments": {"device": "drive0", "job-id": "c0",
                                             "top-node": "mid", "base-node": "base"}}),
            )
            .await;
            wait_gone(&engine, "c0").await;
            assert_eq!(
                job_events(&engine),
                [
                    "created",
                    "running",
                    "waiting",
                    "pending",
                    "BLOCK_JOB_COMPLETED",
                    "concluded",
                    "null"
                ]
            );
            assert_eq!(chain_names(&engine, "top"), ["top", "base"]);
            assert!(
                read_dev(&engine, "drive0").await == view,
                "guest view changed"
            );
            assert_eq!(
                header_backing(&engine, "top.qcow2").await,
                json!("base.qcow2")
            );
            // The base alone now reads as base + mid.
            engine
                .device_add("b", "base", engine::backend::BackendOptions::tool(true))
                .unwrap();
            assert!(read_dev(&engine, "b").await == view_of(&["base", "mid"]));
            // No filter node is left behind.
            assert!(
                engine
                    .graph()
                    .nodes()
                    .iter()
                    .all(|n| n.driver_name() != "commit_top")
            );
        });
    }
}

#[test]
fn commit_with_filenames_defaults_base_to_the_bottom() {
    run(3, |engine| async move {
        let view = build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-commit",
                           "arguments": {"device": "drive0", "top": "mid.qcow2"}}),
        )
        .await;
        wait_gone(&engine, "drive0").await;
        assert_eq!(chain_names(&engine, "top"), ["top", "base"]);
        assert!(read_dev(&engine, "drive0").await == view);
    });
}

#[test]
fn commit_filter_is_above_top_while_the_job_runs_and_the_chain_is_frozen() {
    run(5, |engine| async move {
        build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-commit",
                           "arguments": {"device": "drive0", "job-id": "c0", "top-node": "mid",
                                         "filter-node-name": "cfilter", "speed": 1 << 20}}),
        )
        .await;
        let f = engine.node("cfilter").expect("filter node exists");
        assert_eq!(f.driver_name(), "commit_top");
        assert_eq!(
            chain_names(&engine, "top"),
            ["top", "cfilter", "mid", "base"]
        );
        let graph = qmp(&engine, json!({"execute": "x-debug-query-block-graph"})).await;
        let frozen = graph["return"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["frozen"] == json!(true))
            .count();
        assert_eq!(frozen, 2, "cfilter->mid and mid->base are frozen: {graph}");
        // A second job on the chain is refused with QEMU's busy error.
        let r = qmp(
            &engine,
            json!({"execute": "block-stream",
                                    "arguments": {"device": "mid", "job-id": "s1"}}),
        )
        .await;
        assert_eq!(
            r["error"]["desc"],
            json!("Node 'mid' is busy: block device is in use by block job: commit")
        );
        // A graph change across the frozen chain is refused.
        let e = engine::graph::set_backing(&engine.node("mid").unwrap(), None)
            .await
            .unwrap_err();
        assert!(e.message().contains("frozen"), "{e}");
        ok(
            &engine,
            json!({"execute": "block-job-set-speed",
                           "arguments": {"device": "c0", "speed": 0}}),
        )
        .await;
        wait_gone(&engine, "c0").await;
        assert!(engine.graph().node("cfilter").is_none());
        assert_eq!(chain_names(&engine, "top"), ["top", "base"]);
    });
}

#[test]
fn cancelled_commit_removes_the_filter_and_keeps_the_chain() {
    run(6, |engine| async move {
        let view = build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-commit",
                           "arguments": {"device": "drive0", "job-id": "c0", "top-node": "mid",
                                         "speed": 1 << 20}}),
        )
        .await;
        sleep_ms(&engine, 100).await;
        ok(
            &engine,
            json!({"execute": "block-job-cancel", "arguments": {"device": "c0"}}),
        )
        .await;
        wait_gone(&engine, "c0").await;
        let events = job_events(&engine);
        assert!(
            events.contains(&"BLOCK_JOB_CANCELLED".to_string()),
            "{events:?}"
        );
        assert_eq!(chain_names(&engine, "top"), ["top", "mid", "base"]);
        assert!(no_node_of(&engine, "commit_top"));
        assert!(read_dev(&engine, "drive0").await == view);
        assert_eq!(
            header_backing(&engine, "top.qcow2").await,
            json!("mid.qcow2")
        );
        let graph = qmp(&engine, json!({"execute": "x-debug-query-block-graph"})).await;
        assert!(!graph.to_string().contains("\"frozen\":true"));
    });
}

/// Swarm seed 4091: an active commit cancelled before READY still held WRITE on the base when
/// its filter was taken out; the top, back under the device, does not let others write its
/// backing file, so the removal failed silently and the filter (and its hold on the base)
/// stayed in the graph for good: after a stream dropped the base, it could not be deleted.
#[test]
fn cancelled_active_commit_removes_its_filter_and_lets_go_of_the_base() {
    run(6, |engine| async move {
        let view = build(&engine).await;
        ok(
            &engine,
            json!({"execute": "block-commit",
                   "arguments": {"device": "drive0", "job-id": "a0", "base-node": "mid",
                                 "speed": 1 << 20}}),
        )
        .await;
        ok(
            &engine,
            json!({"execute": "job-pause", "arguments": {"id": "a0"}}),
        )
        .await;
        sleep_ms(&engine, 10).await;
        ok(
            &engine,
            json!({"execute": "job-cancel", "arguments": {"id": "a0"}}),
        )
        .await;
        wait_gone(&engine, "a0").await;
        assert!(
            no_node_of(&engine, "mirror_top"),
            "the active commit's filter is still in the graph"
        );
        assert_eq!(chain_names(&engine, "top"), ["top", "mid", "base"]);
        assert!(read_dev(&engine, "drive0").await == view);
        ok(
            &engine,
            json!({"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "s0"}}),
        )
        .await;
        wait_gone(&engine, "s0").await;
        ok(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "mid"}}),
        )
        .await;
        ok(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "base"}}),
        )
        .await;
        assert!(read_dev(&engine, "drive0").await == view);
    });
}

#[test]
fn set_speed_stretches_virtual_time() {
    // 2 MiB of mid above the base is copied; at 1 MiB/s that takes about two virtual seconds,
    // unlimited it takes milliseconds.
    let elapsed = |speed: u64| {
        run(9, move |engine| async move {
            build(&engine).await;
            let t0 = engine.env().now_ns();
            ok(
                &engine,
                json!({"execute": "block-commit",
                               "arguments": {"device": "drive0", "top-node": "mid",
                                             "speed": speed}}),
            )
            .await;
            wait_gone(&engine, "drive0").await;
            engine.env().now_ns() - t0
        })
    };
    let fast = elapsed(0);
    let slow = elapsed(1 << 20);
    assert!(fast < 500_000_000, "unlimited commit took {fast} ns");
    assert!(
        slow >= 1_000_000_000,
        "rate-limited commit took only {slow} ns"
    );
    let _ = SIZE;
}

#[test]
fn a_drained_top_pauses_the_stream() {
    run(11, |engine| async move {
        let view = build(&engine).await;
        engine.take_events();
        ok(
            &engine,
            json!({"execute": "block-stream",
                           "arguments": {"device": "drive0", "base-node": "base",
                                         "speed": 1 << 20}}),
        )
        .await;
        engine
            .env()
            .sleep_until(engine.env().now_ns() + 300_000_000)
            .await;
        let top = engine.node("top").unwrap();
        let drained = top.drained_begin().await;
        // The job parks at its next pause point (it may have been sleeping for the limit).
        engine
            .env()
            .sleep_until(engine.env().now_ns() + 1_000_000)
            .await;
        let job = engine.jobs().get("drive0").unwrap();
        assert_eq!(job.status().as_str(), "paused");
        let (before, _) = job.progress();
        engine
            .env()
            .sleep_until(engine.env().now_ns() + 2_000_000_000)
            .await;
        assert_eq!(
            job.progress().0,
            before,
            "the job made progress while drained"
        );
        drop(drained);
        wait_gone(&engine, "drive0").await;
        let events = job_events(&engine);
        let i = events.iter().position(|e| e == "paused").expect("paused");
        assert_eq!(events[i + 1], "running", "{events:?}");
        assert!(read_dev(&engine, "drive0").await == view);
        let _ = Rc::strong_count(&top);
    });
}

#[test]
fn stream_speed_stretches_virtual_time() {
    // mid provides 2 MiB above the base that the top lacks: at 1 MiB/s about two seconds.
    let elapsed = |speed: u64| {
        run(10, move |engine| async move {
            build(&engine).await;
            let t0 = engine.env().now_ns();
            ok(
                &engine,
                json!({"execute": "block-stream",
                               "arguments": {"device": "drive0", "base-node": "base",
                                             "speed": speed}}),
            )
            .await;
            wait_gone(&engine, "drive0").await;
            engine.env().now_ns() - t0
        })
    };
    let fast = elapsed(0);
    let slow = elapsed(1 << 20);
    assert!(fast < 500_000_000, "unlimited stream took {fast} ns");
    assert!(
        slow >= 1_000_000_000,
        "rate-limited stream took only {slow} ns"
    );
}
