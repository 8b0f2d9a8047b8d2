//! Bad input to blockdev-mirror and drive-mirror, through QMP: every validation gives QEMU's
//! error class and message, and leaves the graph exactly as it was, with no job behind.

use crate::support;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use engine::env::LocalBoxFuture;
use engine::graph::{Child, OpenCtx};
use engine::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use engine::types::ChildRole;
use engine::util::Options;
use serde_json::{Value, json};
use support::{add_mem, merge_args, refused, run};

/// A test-only filter whose size differs from its child's (so the `replaces` size check can be
/// reached: every built-in node one may replace through has its child's size).
struct Win {
    child: Child,
    size: u64,
}

const WIN_CAPS: DriverCaps = DriverCaps {
    name: "testwin",
    kind: DriverKind::Filter,
    supports_backing: false,
    write_flags: ReqFlags::NONE,
    zero_flags: ReqFlags::NONE,
    reopen: false,
};

fn open_win(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, engine::Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let size = opts.take_u64("size")?.unwrap_or(0);
        let file = opts.take("file").unwrap_or(Value::Null);
        opts.finish()?;
        let child = ctx
            .open_child("file", ChildRole::FILTERED | ChildRole::PRIMARY, file)
            .await?;
        Ok(Box::new(Win { child, size }) as Box<dyn BlockDriver>)
    })
}

impl BlockDriver for Win {
    fn caps(&self) -> &DriverCaps {
        &WIN_CAPS
    }
    fn limits(&self) -> Limits {
        self.child.node().limits()
    }
    fn len(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, buf: IoBuf, f: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { self.child.read(offset, buf, f).await })
    }
    fn write(&self, offset: u64, buf: IoBuf, f: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { self.child.write(offset, buf, f).await })
    }
    fn write_zeroes(&self, o: u64, l: u64, f: ReqFlags) -> LocalBoxFuture<'_, engine::Result<()>> {
        Box::pin(async move { self.child.write_zeroes(o, l, f).await })
    }
    fn discard(&self, o: u64, l: u64) -> LocalBoxFuture<'_, engine::Result<()>> {
        Box::pin(async move { self.child.discard(o, l).await })
    }
    fn flush(&self) -> LocalBoxFuture<'_, engine::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn block_status(&self, o: u64, l: u64) -> LocalBoxFuture<'_, engine::Result<BlockStatus>> {
        Box::pin(async move { self.child.block_status(o, l).await })
    }
    fn truncate(&self, _l: u64, _e: bool, _p: Prealloc) -> LocalBoxFuture<'_, engine::Result<()>> {
        Box::pin(async { Err(engine::Error::generic("no")) })
    }
    fn filename(&self) -> String {
        "testwin".into()
    }
}

async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

async fn setup(engine: &Engine) {
    engine.graph().register_driver("testwin", open_win);
    add_mem(engine, "src", json!({"size": 4 << 20})).await;
    add_mem(engine, "dst", json!({"size": 4 << 20})).await;
    add_mem(engine, "other", json!({"size": 4 << 20})).await;
    add_mem(engine, "free", json!({"size": 4 << 20})).await;
    engine
        .blockdev_add(
            json!({"driver": "testwin", "node-name": "win", "size": 1 << 20,
                             "file": {"driver": "testmem", "node-name": "under", "size": 4 << 20}}),
        )
        .await
        .unwrap();
    engine
        .device_add("drive0", "src", BackendOptions::guest_device(false, false))
        .unwrap();
    engine
        .device_add(
            "drive1",
            "other",
            BackendOptions::guest_device(false, false),
        )
        .unwrap();
}

fn bm(extra: Value) -> Value {
    let args = json!({"job-id": "m1", "device": "drive0", "target": "dst", "sync": "full"});
    json!({"execute": "blockdev-mirror", "arguments": merge_args(args, extra)})
}

fn dm(extra: Value) -> Value {
    let args = json!({"job-id": "m1", "device": "drive0", "target": "new.img", "sync": "full",
               "format": "raw"});
    json!({"execute": "drive-mirror", "arguments": merge_args(args, extra)})
}

const G: &str = "GenericError";

#[test]
fn blockdev_mirror_refuses_bad_input_with_qemus_errors() {
    run(1, |engine| async move {
        setup(&engine).await;
        let e = &engine;
        refused(
            e,
            bm(json!({"sync": null})),
            G,
            "Parameter 'sync' is missing",
        )
        .await;
        refused(
            e,
            bm(json!({"sync": "sideways"})),
            G,
            "Parameter 'sync' does not accept value 'sideways' (expected top, full, none, incremental or bitmap)",
        )
        .await;
        refused(
            e,
            bm(json!({"on-target-error": "panic"})),
            G,
            "Parameter 'on-target-error' does not accept value 'panic' (expected report, ignore, enospc, stop)",
        )
        .await;
        refused(
            e,
            bm(json!({"copy-mode": "sync"})),
            G,
            "Parameter 'copy-mode' does not accept value 'sync' (expected background, write-blocking)",
        )
        .await;
        refused(
            e,
            bm(json!({"bogus": 1})),
            G,
            "Parameter 'bogus' is unexpected",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "nope"})),
            G,
            "Cannot find device='nope' nor node-name='nope'",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "under"})),
            G,
            "Need a root block node",
        )
        .await;
        refused(
            e,
            bm(json!({"target": "nope"})),
            G,
            "Cannot find device='nope' nor node-name='nope'",
        )
        .await;
        for g in [256, 128 << 20] {
            refused(
                e,
                bm(json!({"granularity": g})),
                G,
                "Parameter 'granularity' expects a value in range [512B, 64MB]",
            )
            .await;
        }
        refused(
            e,
            bm(json!({"granularity": 3000})),
            G,
            "Parameter 'granularity' expects power of 2",
        )
        .await;
        refused(
            e,
            bm(json!({"replaces": "nope"})),
            G,
            "Node name 'nope' not found",
        )
        .await;
        refused(
            e,
            bm(json!({"replaces": "other"})),
            G,
            "Cannot replace 'other' by a node mirrored from 'src', because it cannot be \
             guaranteed that doing so would not lead to an abrupt change of visible data",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "win", "replaces": "under"})),
            G,
            "cannot replace image with a mirror image of different size",
        )
        .await;
        refused(
            e,
            bm(json!({"sync": "incremental"})),
            G,
            "Sync mode 'incremental' not supported",
        )
        .await;
        refused(
            e,
            bm(json!({"buf-size": -1})),
            G,
            "Invalid parameter 'buf-size'",
        )
        .await;
        refused(
            e,
            bm(json!({"target": "src"})),
            G,
            "Can't mirror node into itself",
        )
        .await;
        refused(
            e,
            bm(json!({"filter-node-name": "dst"})),
            G,
            "Duplicate nodes with node-name='dst'",
        )
        .await;
        refused(e, bm(json!({"speed": -1})), G, "Invalid parameter 'speed'").await;
        refused(
            e,
            bm(json!({"job-id": null, "device": "free", "target": "dst"})),
            G,
            "An explicit job ID is required",
        )
        .await;
        refused(e, bm(json!({"job-id": "1bad"})), G, "Invalid job ID '1bad'").await;
        // The target is a device's root: the job cannot take it for writing.
        let r = qmp(e, bm(json!({"target": "other"}))).await;
        assert_eq!(r["error"]["class"], json!(G), "{r}");
        refused(
            e,
            bm(json!({"target": "other"})),
            G,
            r["error"]["desc"].as_str().unwrap(),
        )
        .await;

        // A running mirror: a second job on the same device, the same job id, or the same
        // target is refused; so is the source by node name (it is no root any more).
        let r = qmp(
            e,
            bm(json!({"job-id": "m0", "speed": 1024, "filter-node-name": "mtop"})),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
        e.take_events();
        refused(
            e,
            bm(json!({"job-id": "m2"})),
            G,
            "Node 'mtop' is busy: block device is in use by block job: mirror",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "src", "job-id": "m2"})),
            G,
            "Need a root block node",
        )
        .await;
        refused(
            e,
            bm(json!({"job-id": "m0", "device": "drive1", "target": "free"})),
            G,
            "Job ID 'm0' already in use",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "drive1", "target": "dst"})),
            G,
            "Node 'dst' is busy: block device is in use by block job: mirror",
        )
        .await;
        refused(
            e,
            bm(json!({"device": "drive1", "target": "free", "replaces": "mtop"})),
            G,
            "Node 'mtop' is busy: block device is in use by block job: mirror",
        )
        .await;
    });
}

#[test]
fn drive_mirror_refuses_bad_input_with_qemus_errors() {
    run(2, |engine| async move {
        setup(&engine).await;
        let e = &engine;
        refused(
            e,
            dm(json!({"device": "nope"})),
            G,
            "Cannot find device='nope' nor node-name='nope'",
        )
        .await;
        refused(
            e,
            dm(json!({"mode": "relative"})),
            G,
            "Parameter 'mode' does not accept value 'relative' (expected existing, absolute-paths)",
        )
        .await;
        refused(
            e,
            dm(json!({"unmap": "maybe"})),
            G,
            "Parameter 'unmap' expects 'on' or 'off'",
        )
        .await;
        refused(
            e,
            dm(json!({"replaces": "src"})),
            G,
            "a node-name must be provided when replacing a named node of the graph",
        )
        .await;
        refused(
            e,
            dm(json!({"format": "vmdk"})),
            G,
            "Unknown file format 'vmdk'",
        )
        .await;
        refused(
            e,
            dm(json!({"format": "blkdebug"})),
            G,
            "Format driver 'blkdebug' does not support image creation",
        )
        .await;
        // qemu-storage-daemon 10.0.2's text, once (the simulator's file system used to add
        // its own "Could not open" prefix in front of the file driver's).
        refused(
            e,
            dm(json!({"mode": "existing", "target": "missing.img"})),
            G,
            "Could not open 'missing.img': No such file or directory",
        )
        .await;
        // After the target was created and opened, the common checks still refuse: the new
        // node goes away again.
        refused(
            e,
            dm(json!({"granularity": 1000})),
            G,
            "Parameter 'granularity' expects power of 2",
        )
        .await;
        refused(
            e,
            dm(json!({"node-name": "src"})),
            G,
            "Duplicate nodes with node-name='src'",
        )
        .await;
        refused(
            e,
            dm(json!({"buf-size": -5})),
            G,
            "Invalid parameter 'buf-size'",
        )
        .await;
        let r = qmp(
            e,
            bm(json!({"job-id": "m0", "speed": 1024, "filter-node-name": "mtop"})),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
        e.take_events();
        refused(
            e,
            dm(json!({"job-id": "m2"})),
            G,
            "Node 'mtop' is busy: block device is in use by block job: mirror",
        )
        .await;
        refused(
            e,
            dm(json!({"job-id": "m0", "device": "drive1"})),
            G,
            "Job ID 'm0' already in use",
        )
        .await;
    });
}
