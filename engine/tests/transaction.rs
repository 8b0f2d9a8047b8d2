//! QMP `transaction` on the simulator's files: all actions take effect or none does. Each
//! refusal (class and message from qemu-storage-daemon 10.0.2) leaves the graph, the jobs, the
//! bitmaps (contents and recording state) and the image files exactly as they were, and no
//! overlay file behind. Then what commits: snapshot and bitmap taken at one point, backups
//! created in prepare and started in commit, grouped completion.

use crate::support;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::io::{IoBuf, ReqFlags};
use engine::job::JobStatus;
use serde_json::{Value, json};
use support::chain::{build, chain_names, mkimg};
use support::{host_files, qmp, qmp_ok, refused, run};

const G: &str = "GenericError";
const FILES: [&str; 5] = [
    "base.qcow2",
    "mid.qcow2",
    "top.qcow2",
    "s1.qcow2",
    "s2.qcow2",
];

fn txn(actions: Value) -> Value {
    json!({"execute": "transaction", "arguments": {"actions": actions}})
}

fn act(kind: &str, data: Value) -> Value {
    json!({"type": kind, "data": data})
}

fn snap_sync(file: &str, name: &str) -> Value {
    act(
        "blockdev-snapshot-sync",
        json!({"device": "drive0", "snapshot-file": file, "snapshot-node-name": name,
               "format": "qcow2"}),
    )
}

fn bitmap(kind: &str, node: &str, name: &str) -> Value {
    act(kind, json!({"node": node, "name": name}))
}

/// Guest writes through drive0 at `offs` (64 KiB each, pattern `pat`).
async fn write(engine: &Engine, offs: &[u64], pat: u8) {
    let bb = engine.backend("drive0").unwrap();
    for &o in offs {
        bb.write(o, IoBuf::filled(65536, pat), ReqFlags::NONE)
            .await
            .1
            .unwrap();
    }
    bb.flush().await.unwrap();
}

/// Every bitmap of every node: (node, name, sha256, recording, busy).
fn bitmaps(engine: &Engine) -> Vec<(String, String, String, bool, bool)> {
    let mut out = Vec::new();
    for n in engine.graph().nodes() {
        for b in n.bitmaps().all() {
            out.push((
                n.name().to_string(),
                b.name(),
                b.sha256_hex(),
                b.recording(),
                b.busy(),
            ));
        }
    }
    out
}

/// The chain with bitmap b0 on top holding two writes, b1 disabled.
async fn setup(engine: &std::rc::Rc<Engine>) {
    build(engine).await;
    qmp_ok(
        engine,
        txn(json!([bitmap("block-dirty-bitmap-add", "top", "b0")])),
    )
    .await;
    qmp_ok(
        engine,
        txn(json!([bitmap("block-dirty-bitmap-add", "top", "b1")])),
    )
    .await;
    write(engine, &[0, 3 << 20], 0x44).await;
    qmp_ok(
        engine,
        txn(json!([bitmap("block-dirty-bitmap-disable", "top", "b1")])),
    )
    .await;
}

/// `actions` are refused with `desc` and nothing changed.
fn case(actions: Value, desc: &'static str) {
    run(1, move |engine| async move {
        setup(&engine).await;
        let files = host_files(&engine, &FILES).await;
        let maps = bitmaps(&engine);
        refused(&engine, txn(actions), G, desc).await;
        assert_eq!(bitmaps(&engine), maps, "bitmaps changed");
        assert_eq!(host_files(&engine, &FILES).await, files, "files changed");
    });
}

macro_rules! refusal {
    ($name:ident, $actions:expr, $desc:expr) => {
        #[test]
        fn $name() {
            case($actions, $desc);
        }
    };
}

refusal!(
    a_failing_last_action_undoes_every_action,
    json!([
        bitmap("block-dirty-bitmap-add", "top", "b2"),
        bitmap("block-dirty-bitmap-clear", "top", "b0"),
        bitmap("block-dirty-bitmap-enable", "top", "b1"),
        bitmap("block-dirty-bitmap-disable", "top", "b0"),
        act(
            "block-dirty-bitmap-merge",
            json!({"node": "top", "target": "b1",
            "bitmaps": ["b0"]})
        ),
        snap_sync("s1.qcow2", "s1"),
        bitmap("block-dirty-bitmap-add", "s1", "b3"),
        bitmap("block-dirty-bitmap-remove", "top", "b1"),
        act("abort", json!({})),
    ]),
    "Transaction aborted using Abort action"
);
refusal!(
    unknown_action_type,
    json!([
        bitmap("block-dirty-bitmap-add", "top", "b2"),
        act("bogus", json!({}))
    ]),
    "Parameter 'type' does not accept value 'bogus'"
);
refusal!(
    missing_data,
    json!([{"type": "block-dirty-bitmap-add"}]),
    "Parameter 'actions[0].data' is missing"
);
refusal!(
    unexpected_member_in_data,
    json!([act("abort", json!({"x": 1}))]),
    "Parameter 'actions[0].data.x' is unexpected"
);
refusal!(
    duplicate_snapshot_name,
    json!([snap_sync("s1.qcow2", "s1"), snap_sync("s2.qcow2", "s1")]),
    "New overlay node-name already in use"
);
refusal!(
    duplicate_bitmap,
    json!([
        bitmap("block-dirty-bitmap-add", "top", "b2"),
        bitmap("block-dirty-bitmap-add", "top", "b2"),
    ]),
    "Bitmap already exists: b2"
);
refusal!(
    removed_bitmap_is_busy_for_later_actions,
    json!([
        bitmap("block-dirty-bitmap-remove", "top", "b0"),
        bitmap("block-dirty-bitmap-clear", "top", "b0"),
    ]),
    "Bitmap 'b0' is currently in use by another operation and cannot be used"
);
refusal!(
    overlay_in_use,
    json!([
        bitmap("block-dirty-bitmap-add", "top", "b2"),
        act(
            "blockdev-snapshot",
            json!({"node": "top", "overlay": "mid"})
        ),
    ]),
    "The overlay is already in use"
);

#[test]
fn grouped_refused_for_actions_without_jobs() {
    run(2, |engine| async move {
        setup(&engine).await;
        let cmd = json!({"execute": "transaction", "arguments": {
            "actions": [snap_sync("s1.qcow2", "s1")],
            "properties": {"completion-mode": "grouped"}}});
        let files = host_files(&engine, &FILES).await;
        refused(
            &engine,
            cmd,
            G,
            "Action 'blockdev-snapshot-sync' does not support transaction property \
             completion-mode = grouped",
        )
        .await;
        assert_eq!(host_files(&engine, &FILES).await, files);
    });
}

#[test]
fn snapshot_and_bitmap_taken_together_then_the_bitmap_holds_the_later_writes() {
    run(3, |engine| async move {
        setup(&engine).await;
        qmp_ok(
            &engine,
            txn(json!([
                snap_sync("s1.qcow2", "s1"),
                bitmap("block-dirty-bitmap-add", "s1", "inc"),
                bitmap("block-dirty-bitmap-remove", "top", "b1"),
            ])),
        )
        .await;
        assert_eq!(chain_names(&engine, "s1"), ["s1", "top", "mid", "base"]);
        let (_, inc) = engine.bitmap("s1", "inc").unwrap();
        assert_eq!(inc.count(), 0);
        assert!(engine.bitmap("top", "b1").is_err(), "b1 removed at commit");
        write(&engine, &[1 << 20], 0x55).await;
        assert_eq!(inc.count(), 65536, "exactly the write after the snapshot");
    });
}

/// A qcow2 node `name` on `name.qcow2`, as large as the chain, for backups.
async fn target(engine: &Engine, name: &str) {
    mkimg(engine, &format!("{name}.qcow2"), None).await;
    qmp_ok(
        engine,
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": name,
            "file": {"driver": "file", "filename": format!("{name}.qcow2")}}}),
    )
    .await;
}

/// A backup of drive0 (j1) or, for any other job, of the backing node `mid` (a second job on
/// the device would find the first one's filter busy).
/// A qcow2 node `bad` whose data writes fail (EIO), for backups that fail.
async fn bad_target(engine: &Engine) {
    mkimg(engine, "t2.qcow2", None).await;
    qmp_ok(
        engine,
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "bad",
            "file": {"driver": "blkdebug",
                     "inject-error": [{"event": "write_aio", "errno": 5}],
                     "image": {"driver": "file", "filename": "t2.qcow2"}}}}),
    )
    .await;
}

fn backup(job: &str, target: &str, extra: Value) -> Value {
    let device = if job == "j1" { "drive0" } else { "mid" };
    let mut data = json!({"job-id": job, "device": device, "target": target, "sync": "full"});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    act("blockdev-backup", data)
}

#[test]
fn an_aborted_backup_never_starts_and_gives_its_bitmap_back() {
    run(4, |engine| async move {
        setup(&engine).await;
        target(&engine, "t1").await;
        let graph = engine.block_graph();
        let maps = bitmaps(&engine);
        engine.take_events();
        let r = qmp(
            &engine,
            txn(json!([
                backup(
                    "j1",
                    "t1",
                    json!({"sync": "bitmap", "bitmap": "b0",
                                          "bitmap-mode": "on-success"})
                ),
                act("abort", json!({})),
            ])),
        )
        .await;
        assert_eq!(r["error"]["desc"], "Transaction aborted using Abort action");
        assert_eq!(engine.block_graph(), graph, "the filter is gone");
        assert_eq!(bitmaps(&engine), maps, "b0 is back, not busy");
        assert_eq!(engine.query_jobs(), json!([]));
        let st: Vec<_> = engine
            .take_events()
            .into_iter()
            .map(|e| format!("{}:{}", e.name, e.data["status"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            st,
            [
                "JOB_STATUS_CHANGE:created",
                "JOB_STATUS_CHANGE:aborting",
                "JOB_STATUS_CHANGE:concluded",
                "JOB_STATUS_CHANGE:null"
            ]
        );
    });
}

/// Backups j1 (drive0 -> t1, limited to `speed`) and j2 (mid -> a target whose writes fail)
/// in one transaction with `properties`; the job-end events, sorted, once both are gone.
async fn two_backups(engine: &Engine, speed: u64, properties: Value) -> Vec<String> {
    target(engine, "t1").await;
    bad_target(engine).await;
    engine.take_events();
    qmp_ok(
        engine,
        json!({"execute": "transaction", "arguments": {
            "actions": [backup("j1", "t1", json!({"speed": speed})),
                        backup("j2", "bad", json!({}))],
            "properties": properties}}),
    )
    .await;
    for id in ["j1", "j2"] {
        if let Ok(j) = engine.find_job(id) {
            j.wait_status(|s| s == JobStatus::Null).await;
        }
    }
    let mut ends: Vec<_> = engine
        .take_events()
        .into_iter()
        .filter(|e| e.name.starts_with("BLOCK_JOB_"))
        .map(|e| {
            let err = e.data.get("error").is_some();
            format!("{}:{}:{err}", e.name, e.data["device"].as_str().unwrap())
        })
        .collect();
    ends.sort();
    ends
}

#[test]
fn grouped_backups_one_target_fails_the_other_is_cancelled() {
    run(5, |engine| async move {
        setup(&engine).await;
        let ends = two_backups(&engine, 1 << 20, json!({"completion-mode": "grouped"})).await;
        assert_eq!(
            ends,
            [
                "BLOCK_JOB_CANCELLED:j1:false",
                "BLOCK_JOB_COMPLETED:j2:true",
                "BLOCK_JOB_ERROR:j2:false"
            ]
        );
    });
}

#[test]
fn individual_backups_in_one_transaction_end_on_their_own() {
    run(6, |engine| async move {
        setup(&engine).await;
        let ends = two_backups(&engine, 0, json!({})).await;
        assert_eq!(
            ends,
            [
                "BLOCK_JOB_COMPLETED:j1:false",
                "BLOCK_JOB_COMPLETED:j2:true",
                "BLOCK_JOB_ERROR:j2:false"
            ]
        );
    });
}

/// Names of the internal snapshots of drive0's image.
fn internal_snapshots(engine: &Engine) -> Vec<String> {
    let list = engine.snapshot_internal_list("drive0").unwrap();
    list.into_iter().map(|s| s.name).collect()
}

/// `blockdev-snapshot-internal-sync` as an action: committed with the others, or deleted again
/// when a later action fails (the bitmaps stay as they were too).
#[test]
fn an_internal_snapshot_action_commits_or_is_deleted_on_abort() {
    run(1, |engine| async move {
        setup(&engine).await;
        let isnap = |name: &str| {
            act(
                "blockdev-snapshot-internal-sync",
                json!({"device": "drive0", "name": name}),
            )
        };
        let maps = bitmaps(&engine);
        let actions = json!([
            isnap("gone"),
            bitmap("block-dirty-bitmap-add", "top", "b9"),
            act("abort", json!({}))
        ]);
        // Not `refused`: the image file keeps the clusters the snapshot grew it by (as QEMU's
        // does), though no snapshot is left.
        let r = qmp(&engine, txn(actions)).await;
        assert_eq!(r["error"]["desc"], "Transaction aborted using Abort action");
        assert_eq!(internal_snapshots(&engine), Vec::<String>::new());
        assert_eq!(bitmaps(&engine), maps, "bitmaps changed");
        let actions = json!([isnap("kept"), bitmap("block-dirty-bitmap-add", "top", "b9")]);
        qmp_ok(&engine, txn(actions)).await;
        assert_eq!(internal_snapshots(&engine), vec!["kept".to_string()]);
        assert!(bitmaps(&engine).iter().any(|b| b.1 == "b9"));
        // A duplicate name fails in prepare and leaves the first snapshot alone.
        refused(
            &engine,
            txn(json!([isnap("kept")])),
            G,
            "Snapshot with name 'kept' already exists on device 'drive0'",
        )
        .await;
        assert_eq!(internal_snapshots(&engine), vec!["kept".to_string()]);
    });
}

/// An internal snapshot and an external one in one transaction are one point in time: a guest
/// write issued while the transaction runs lands after both (in the new overlay), never in
/// the old image between them. The internal-snapshot action holds the node drained from
/// prepare to clean, as QEMU does.
#[test]
fn a_write_during_internal_and_external_snapshots_lands_after_both() {
    run(1, |engine| async move {
        setup(&engine).await;
        let env = engine.env();
        let landed = std::rc::Rc::new(std::cell::Cell::new(false));
        {
            let (engine, landed) = (engine.clone(), landed.clone());
            env.spawn(
                "guest",
                Box::pin(async move {
                    write(&engine, &[2 << 20], 0x77).await;
                    landed.set(true);
                }),
            );
        }
        let actions = json!([
            act(
                "blockdev-snapshot-internal-sync",
                json!({"device": "drive0", "name": "pt"})
            ),
            snap_sync("s1.qcow2", "s1"),
        ]);
        qmp_ok(&engine, txn(actions)).await;
        while !landed.get() {
            env.sleep_until(env.now_ns() + 1_000_000).await;
        }
        assert_eq!(chain_names(&engine, "s1"), ["s1", "top", "mid", "base"]);
        let peek = engine
            .device_add("peek", "top", BackendOptions::guest_device(true, true))
            .unwrap();
        let in_top = peek.block_status(2 << 20, 65536).await.unwrap();
        assert!(
            !in_top.mapping.is_allocated(),
            "the write landed in top, between the two snapshots"
        );
    });
}
