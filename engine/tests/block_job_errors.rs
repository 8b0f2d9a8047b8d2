//! Bad input to block-stream and block-commit: every validation of QEMU 5.x's
//! `qmp_block_stream` / `qmp_block_commit` in its order, with QEMU's error class and message,
//! and the graph exactly as before (nodes, edges, permissions, frozen flags), no job left.

use crate::support;

use engine::Engine;
use serde_json::{Value, json};
use support::chain::{add_layer, build, mkimg};
use support::run;

async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

async fn snapshot(engine: &Engine) -> (Value, Value, Value) {
    (
        qmp(engine, json!({"execute": "x-debug-query-block-graph"})).await,
        qmp(engine, json!({"execute": "query-named-block-nodes"})).await,
        qmp(engine, json!({"execute": "query-block-jobs"})).await,
    )
}

/// Run `command` with `args`; it must fail with `class` and exactly `desc`, changing nothing.
async fn refused(engine: &Engine, command: &str, args: Value, class: &str, desc: &str) {
    let before = snapshot(engine).await;
    let r = qmp(
        engine,
        json!({"execute": command, "arguments": args.clone()}),
    )
    .await;
    assert_eq!(
        (r["error"]["class"].as_str(), r["error"]["desc"].as_str()),
        (Some(class), Some(desc)),
        "{command} {args}: {r}"
    );
    let after = snapshot(engine).await;
    assert_eq!(before, after, "{command} {args} changed the graph");
}

/// The chain plus `solo.qcow2` (node "solo", no backing) and a slow commit job "busy" when
/// `with_job`.
async fn setup(engine: &std::rc::Rc<Engine>) {
    build(engine).await;
    mkimg(engine, "solo.qcow2", None).await;
    add_layer(engine, "solo", None).await;
}

#[test]
fn block_stream_validation_in_qemus_order() {
    run(1, |engine| async move {
        setup(&engine).await;
        let g = "GenericError";
        refused(
            &engine,
            "block-stream",
            json!({"device": "nope"}),
            g,
            "Cannot find device=nope nor node_name=nope",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base": "base.qcow2",
                                                "base-node": "base"}),
            g,
            "'base' and 'base-node' cannot be specified at the same time",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base": "nothere.qcow2"}),
            g,
            "Base 'nothere.qcow2' not found",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base-node": "ghost"}),
            g,
            "Cannot find device= nor node_name=ghost",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base-node": "top"}),
            g,
            "Node 'top' is not a backing image of 'drive0'",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base-node": "solo"}),
            g,
            "Node 'solo' is not a backing image of 'drive0'",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "backing-file": "x.qcow2"}),
            g,
            "backing file specified, but streaming the entire chain",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "job-id": "1bad"}),
            g,
            "Invalid job ID '1bad'",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "speed": -1}),
            g,
            "Invalid parameter 'speed'",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "mid"}),
            g,
            "An explicit job ID is required",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "on-error": "never"}),
            g,
            "Parameter 'on-error' does not accept value 'never'",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "top": "x"}),
            g,
            "Parameter 'top' is unexpected",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"base": "x"}),
            g,
            "Parameter 'device' is missing",
        )
        .await;
        // Op blockers on every node from the device down to the base, and job ids in use.
        let r = qmp(
            &engine,
            json!({"execute": "block-commit",
                                    "arguments": {"device": "drive0", "job-id": "busy",
                                                  "top-node": "mid", "speed": 1024}}),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
        refused(
            &engine,
            "block-stream",
            json!({"device": "drive0", "base-node": "base"}),
            g,
            "Node 'top' is busy: block device is in use by block job: commit",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "mid", "job-id": "s1"}),
            g,
            "Node 'mid' is busy: block device is in use by block job: commit",
        )
        .await;
        refused(
            &engine,
            "block-stream",
            json!({"device": "solo", "job-id": "busy"}),
            g,
            "Job ID 'busy' already in use",
        )
        .await;
        let _ = qmp(
            &engine,
            json!({"execute": "block-job-cancel",
                                    "arguments": {"device": "busy", "force": true}}),
        )
        .await;
    });
}

#[test]
fn block_commit_validation_in_qemus_order() {
    run(2, |engine| async move {
        setup(&engine).await;
        let g = "GenericError";
        refused(
            &engine,
            "block-commit",
            json!({"device": "nope"}),
            "DeviceNotFound",
            "Device 'nope' not found",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top": "mid.qcow2",
                                                "top-node": "mid"}),
            g,
            "'top-node' and 'top' are mutually exclusive",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "ghost"}),
            g,
            "Cannot find device= nor node_name=ghost",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "solo"}),
            g,
            "'solo' is not in this backing file chain",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top": "nothere.qcow2"}),
            g,
            "Top image file nothere.qcow2 not found",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "base": "base.qcow2", "base-node": "base"}),
            g,
            "'base-node' and 'base' are mutually exclusive",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "base-node": "ghost"}),
            g,
            "Cannot find device= nor node_name=ghost",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "base-node": "top"}),
            g,
            "'top' is not in this backing file chain",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "base": "nothere.qcow2"}),
            g,
            "Base 'nothere.qcow2' not found",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "base": "mid.qcow2"}),
            g,
            "Base 'mid.qcow2' not found",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "base"}),
            g,
            "cannot commit an image into itself",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "solo"}),
            g,
            "cannot commit an image into itself",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "backing-file": "b.qcow2"}),
            g,
            "'backing-file' specified, but 'top' is the active layer",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "job-id": "bad id"}),
            g,
            "Invalid job ID 'bad id'",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "speed": -5}),
            g,
            "Invalid parameter 'speed'",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "filter-node-name": "base"}),
            g,
            "Duplicate nodes with node-name='base'",
        )
        .await;
        refused(&engine, "block-commit", json!({"device": "drive0", "top-node": "mid",
                                                "filter-node-name": "9x"}), g,
                "Invalid node-name: '9x' (use letters, digits, '-', '_' and '.', starting with a letter)").await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "granularity": 512}),
            g,
            "Parameter 'granularity' is unexpected",
        )
        .await;
        // Op blockers: the source, then top..base, then the overlay; job ids in use.
        let r = qmp(
            &engine,
            json!({"execute": "block-stream",
                                    "arguments": {"device": "solo", "job-id": "busy",
                                                  "speed": 1024}}),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid",
                                                "job-id": "busy"}),
            g,
            "Job ID 'busy' already in use",
        )
        .await;
        let r = qmp(
            &engine,
            json!({"execute": "block-stream",
                                    "arguments": {"device": "mid", "job-id": "s-mid",
                                                  "speed": 1024}}),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
        refused(
            &engine,
            "block-commit",
            json!({"device": "drive0", "top-node": "mid"}),
            g,
            "Node 'mid' is busy: block device is in use by block job: stream",
        )
        .await;
        refused(
            &engine,
            "block-commit",
            json!({"device": "mid"}),
            "GenericError",
            "Node 'mid' is busy: block device is in use by block job: stream",
        )
        .await;
        for id in ["busy", "s-mid"] {
            let _ = qmp(
                &engine,
                json!({"execute": "block-job-cancel",
                                        "arguments": {"device": id, "force": true}}),
            )
            .await;
        }
    });
}

#[test]
fn a_failure_after_the_filter_went_in_leaves_the_graph_as_it_was() {
    run(3, |engine| async move {
        // The read-only base is reopened read-write for the commit, but a reader that does not
        // share writes refuses the job's edge on it after the filter was inserted and the
        // chain frozen; all of that is undone, the base is read-only again.
        mkimg(&engine, "r0.qcow2", None).await;
        mkimg(&engine, "r1.qcow2", Some("r0.qcow2")).await;
        mkimg(&engine, "r2.qcow2", Some("r1.qcow2")).await;
        for (name, file, backing, ro) in [
            ("r0", "r0.qcow2", None, true),
            ("r1", "r1.qcow2", Some("r0"), false),
            ("r2", "r2.qcow2", Some("r1"), false),
        ] {
            let mut o = json!({"driver": "qcow2", "node-name": name, "read-only": ro,
                               "file": {"driver": "file", "filename": file}});
            o["backing"] = backing.map_or(Value::Null, |b| json!(b));
            engine.blockdev_add(o).await.unwrap();
        }
        engine
            .device_add("reader", "r0", engine::backend::BackendOptions::tool(true))
            .unwrap();
        refused(
            &engine,
            "block-commit",
            json!({"device": "r2", "job-id": "c", "top-node": "r1",
                       "filter-node-name": "cf"}),
            "GenericError",
            "Conflicts with use by device 'reader' as 'root', which does not allow 'write, \
             resize' on node 'r0' (needed by commit job 'c' as 'base')",
        )
        .await;
        assert!(engine.graph().node("cf").is_none());
        assert!(engine.graph().node("r0").unwrap().is_read_only());
    });
}
