//! Bad input to blockdev-backup, drive-backup and the copy-before-write driver, through QMP:
//! each refusal gives QEMU 10's error class and message (taken from qemu-storage-daemon 10.0.2)
//! and leaves the graph exactly as it was, with no job behind. One test per refusal.

use crate::support;

use engine::Engine;
use engine::backend::BackendOptions;
use serde_json::{Value, json};
use support::{add_mem, merge_args, refused, run};

const G: &str = "GenericError";

async fn setup(engine: &Engine) {
    add_mem(engine, "src", json!({"size": 4 << 20})).await;
    add_mem(engine, "dst", json!({"size": 4 << 20})).await;
    add_mem(engine, "small", json!({"size": 1 << 20})).await;
    engine
        .device_add("drive0", "src", BackendOptions::guest_device(false, false))
        .unwrap();
}

fn bb(extra: Value) -> Value {
    let args = json!({"job-id": "b1", "device": "src", "target": "dst", "sync": "full"});
    json!({"execute": "blockdev-backup", "arguments": merge_args(args, extra)})
}

fn cbw(extra: Value) -> Value {
    let args = json!({"driver": "copy-before-write", "node-name": "c1", "file": "src",
                      "target": "dst"});
    json!({"execute": "blockdev-add", "arguments": merge_args(args, extra)})
}

/// One refusal of `cmd` with `desc`.
fn case(cmd: Value, desc: &'static str) {
    run(1, move |engine| async move {
        setup(&engine).await;
        refused(&engine, cmd, G, desc).await;
    });
}

macro_rules! refusal {
    ($name:ident, $cmd:expr, $desc:expr) => {
        #[test]
        fn $name() {
            case($cmd, $desc);
        }
    };
}

refusal!(
    unknown_device,
    bb(json!({"device": "nosuch"})),
    "Cannot find device='nosuch' nor node-name='nosuch'"
);
refusal!(
    unknown_target,
    bb(json!({"target": "nosuch"})),
    "Cannot find device='nosuch' nor node-name='nosuch'"
);
refusal!(
    missing_sync,
    bb(json!({"sync": null})),
    "Parameter 'sync' is missing"
);
refusal!(
    bad_sync,
    bb(json!({"sync": "bogus"})),
    "Parameter 'sync' does not accept value 'bogus'"
);
refusal!(
    missing_target,
    bb(json!({"target": null})),
    "Parameter 'target' is missing"
);
refusal!(
    unknown_member,
    bb(json!({"bogus": 1})),
    "Parameter 'bogus' is unexpected"
);
refusal!(
    bad_bitmap_mode,
    bb(json!({"bitmap-mode": "bogus"})),
    "Parameter 'bitmap-mode' does not accept value 'bogus'"
);
refusal!(
    sync_bitmap_without_bitmap,
    bb(json!({"sync": "bitmap"})),
    "must provide a valid bitmap name for 'bitmap' sync mode"
);
refusal!(
    sync_incremental_without_bitmap,
    bb(json!({"sync": "incremental"})),
    "must provide a valid bitmap name for 'incremental' sync mode"
);
refusal!(
    incremental_with_mode_always,
    bb(json!({"sync": "incremental", "bitmap": "b0", "bitmap-mode": "always"})),
    "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"
);
refusal!(
    unknown_bitmap,
    bb(json!({"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "never"})),
    "Bitmap 'b0' could not be found"
);
refusal!(
    bitmap_with_full,
    bb(json!({"bitmap": "b0"})),
    "Bitmap 'b0' could not be found"
);
refusal!(
    bitmap_mode_without_bitmap,
    bb(json!({"bitmap-mode": "always"})),
    "Cannot specify bitmap sync mode without a bitmap"
);
refusal!(
    same_node,
    bb(json!({"target": "src"})),
    "Source and target cannot be the same"
);
refusal!(
    compress,
    bb(json!({"compress": true})),
    "Compression is not supported for this drive dst"
);
refusal!(
    discard_source,
    bb(json!({"discard-source": true})),
    "discard-source is not supported: blk's backup never changes its source"
);
refusal!(
    max_workers_zero,
    bb(json!({"x-perf": {"max-workers": 0}})),
    "max-workers must be between 1 and 2147483647"
);
refusal!(
    max_chunk_negative,
    bb(json!({"x-perf": {"max-chunk": -1}})),
    "max-chunk must be zero (which means no limit) or positive"
);
refusal!(
    x_perf_unknown,
    bb(json!({"x-perf": {"bogus": 1}})),
    "Parameter 'x-perf.bogus' is unexpected"
);
refusal!(
    different_sizes,
    bb(json!({"target": "small"})),
    "Source and target image have different sizes"
);
refusal!(
    min_cluster_not_power_of_two,
    bb(json!({"x-perf": {"min-cluster-size": 1000}})),
    "Could not create node: Cannot create block-copy-state: min-cluster-size needs to be a power of 2"
);
refusal!(
    bad_filter_node_name,
    bb(json!({"filter-node-name": "1bad"})),
    "Could not create node: Invalid node-name: '1bad'"
);
refusal!(
    max_chunk_below_cluster,
    bb(json!({"x-perf": {"max-chunk": 1000}})),
    "Required max-chunk (1000) is less than backup cluster size (65536)"
);
refusal!(
    bad_job_id,
    bb(json!({"job-id": "1bad"})),
    "Invalid job ID '1bad'"
);
refusal!(
    no_job_id_on_a_node_without_device,
    bb(json!({"job-id": null, "device": "dst",
    "target": "src"})),
    "Invalid job ID ''"
);
refusal!(
    negative_speed,
    bb(json!({"speed": -1})),
    "Parameter 'speed' expects a non-negative value"
);
refusal!(
    cbw_missing_target,
    cbw(json!({"target": null})),
    "Parameter 'target' is missing"
);
refusal!(
    cbw_missing_file,
    cbw(json!({"file": null})),
    "Parameter 'file' is missing"
);
refusal!(
    cbw_unknown_target,
    cbw(json!({"target": "nosuch"})),
    "Cannot find device='nosuch' nor node-name='nosuch'"
);
refusal!(
    cbw_bad_on_error,
    cbw(json!({"on-cbw-error": "bogus"})),
    "Parameter 'on-cbw-error' does not accept value 'bogus'"
);
refusal!(
    cbw_negative_timeout,
    cbw(json!({"cbw-timeout": -1})),
    "Parameter 'cbw-timeout' expects uint32_t"
);
refusal!(
    cbw_bitmap_not_found,
    cbw(json!({"bitmap": {"node": "src", "name": "b0"}})),
    "Dirty bitmap 'b0' not found"
);
refusal!(
    cbw_min_cluster_size,
    cbw(json!({"min-cluster-size": 1000})),
    "Cannot create block-copy-state: min-cluster-size needs to be a power of 2"
);

#[test]
fn a_second_backup_of_a_busy_source_is_refused() {
    run(2, |engine| async move {
        setup(&engine).await;
        add_mem(&engine, "dst2", json!({"size": 4 << 20})).await;
        let r = engine::qmp::execute(&engine, &bb(json!({"sync": "none"}))).await;
        assert!(r.get("error").is_none(), "{r}");
        let env = engine.env().clone();
        env.sleep_until(env.now_ns() + 1_000_000).await;
        engine.take_events();
        refused(
            &engine,
            bb(json!({"job-id": "b2", "target": "dst2"})),
            G,
            "Node 'src' is busy: block device is in use by block job: backup",
        )
        .await;
    });
}
