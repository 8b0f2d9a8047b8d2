//! blkdebug events raised where QEMU raises them, each shown by a blkdebug rule that fails the
//! request after it: `reftable_load` (qcow2 open, before the refcount table is read),
//! `cor_write` (copy-on-read, before the copied data is written), `l1_shrink_write_table` and
//! `l1_shrink_free_l2_clusters` (shrinking past an L2 table's reach), `empty_image_prepare`
//! (an image rebuilt empty, as `qemu-img commit` leaves its top; `reftable_update` when its
//! header then switches to the new tables), `vmstate_save` and
//! `vmstate_load` (qemu-io `write -b`/`read -b`, before the VM state is touched),
//! `l2_alloc_cow_read` (a write into an L2 table shared with an internal snapshot, before the
//! table is copied).

use crate::support;

use engine::backend::BackendOptions;
use engine::io::IoBuf;
use engine::{Engine, Errno};
use serde_json::{Value, json};
use support::chain::{SIZE, add_layer, fill, mkimg};
use support::run;

/// qcow2 `name` on `name.qcow2` through a blkdebug node with `rules`.
fn over_blkdebug(name: &str, backing: Value, rules: Value) -> Value {
    json!({"driver": "qcow2", "node-name": name, "backing": backing,
           "file": {"driver": "blkdebug", "node-name": format!("{name}-dbg"),
                    "inject-error": rules,
                    "image": {"driver": "file", "filename": format!("{name}.qcow2")}}})
}

async fn add_err(engine: &Engine, opts: Value) -> Option<Errno> {
    engine
        .blockdev_add(opts)
        .await
        .err()
        .and_then(|e| e.errno())
}

#[test]
fn reftable_load_is_raised_when_qcow2_opens() {
    run(1, |engine| async move {
        mkimg(&engine, "top.qcow2", None).await;
        let rules = json!([{"event": "reftable_load", "errno": 5, "once": true}]);
        let opts = over_blkdebug("top", Value::Null, rules);
        assert_eq!(add_err(&engine, opts).await, Some(Errno::EIO));
        // Without the rule the same image opens.
        add_layer(&engine, "top", None).await;
    });
}

#[test]
fn cor_write_is_raised_before_copy_on_read_writes() {
    run(2, |engine| async move {
        mkimg(&engine, "base.qcow2", None).await;
        mkimg(&engine, "top.qcow2", Some("base.qcow2")).await;
        add_layer(&engine, "base", None).await;
        fill(&engine, "base", 0, 64 << 10, 0x5a).await;
        // The blkdebug filter is the node doing copy-on-read: the event is raised on it.
        engine
            .blockdev_add(json!({"driver": "blkdebug", "node-name": "dbg",
                "inject-error": [{"event": "cor_write", "errno": 28, "once": true}],
                "image": {"driver": "qcow2", "node-name": "top", "backing": "base",
                          "file": {"driver": "file", "filename": "top.qcow2"}}}))
            .await
            .unwrap();
        let opts = BackendOptions {
            copy_on_read: true,
            ..BackendOptions::tool(false)
        };
        let bb = engine.device_add("d", "dbg", opts).unwrap();
        let (_, r) = bb.read(0, IoBuf::new(4096)).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOSPC));
        // Once: the next copy-on-read succeeds and copies the backing data up.
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x5a));
    });
}

#[test]
fn l1_shrink_events_are_raised_when_a_shrink_drops_l2_tables() {
    for (event, seed) in [
        ("l1_shrink_write_table", 3),
        ("l1_shrink_free_l2_clusters", 4),
    ] {
        run(seed, move |engine| async move {
            mkimg(&engine, "top.qcow2", None).await;
            let rules = json!([{"event": event, "errno": 5, "once": true}]);
            engine
                .blockdev_add(over_blkdebug("top", Value::Null, rules))
                .await
                .unwrap();
            fill(&engine, "top", SIZE - (64 << 10), 64 << 10, 0x77).await;
            // Down to nothing: the only L2 table goes.
            let r = engine.block_resize(None, Some("top"), 0).await;
            assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO), "{event}");
        });
    }
}

/// An image rebuilt empty (`make_empty`) fails with EIO when a blkdebug rule on `event` fails
/// the request after it: the event was raised on the way.
fn make_empty_raises(seed: u64, event: &'static str) {
    run(seed, move |engine| async move {
        mkimg(&engine, "top.qcow2", None).await;
        let rules = json!([{"event": event, "errno": 5, "once": true}]);
        engine
            .blockdev_add(over_blkdebug("top", Value::Null, rules))
            .await
            .unwrap();
        fill(&engine, "top", 0, 64 << 10, 0x66).await;
        let node = engine.node("top").unwrap();
        let r = engine::request::make_empty(&node).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO), "{event}");
    });
}

#[test]
fn empty_image_prepare_is_raised_when_an_image_is_rebuilt_empty() {
    make_empty_raises(5, "empty_image_prepare");
}

#[test]
fn vmstate_events_are_raised_before_the_vm_state_is_touched() {
    run(5, |engine| async move {
        mkimg(&engine, "top.qcow2", None).await;
        let rules = json!([{"event": "vmstate_save", "errno": 28, "once": true},
                           {"event": "vmstate_load", "errno": 5, "once": true}]);
        engine
            .blockdev_add(over_blkdebug("top", Value::Null, rules))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "top", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb.save_vmstate(0, IoBuf::filled(4096, 7)).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::ENOSPC));
        // Once: the state is then saved; loading it fails once (the read of the saved data is
        // the request after the event), then loads back.
        bb.save_vmstate(0, IoBuf::filled(4096, 7)).await.1.unwrap();
        let (_, r) = bb.load_vmstate(0, IoBuf::new(4096)).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO));
        let (buf, r) = bb.load_vmstate(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 7));
    });
}

#[test]
fn reftable_update_is_raised_when_an_empty_image_switches_its_tables() {
    make_empty_raises(6, "reftable_update");
}

#[test]
fn l2_alloc_cow_read_is_raised_before_a_shared_l2_table_is_copied() {
    run(6, |engine| async move {
        mkimg(&engine, "top.qcow2", None).await;
        let rules = json!([{"event": "l2_alloc_cow_read", "errno": 5, "once": true}]);
        engine
            .blockdev_add(over_blkdebug("top", Value::Null, rules))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "top", BackendOptions::tool(false))
            .unwrap();
        // A fresh L2 table is allocated, not copied: no event.
        bb.write(0, IoBuf::filled(4096, 1), engine::io::ReqFlags::NONE)
            .await
            .1
            .unwrap();
        engine.snapshot_internal_create("d", "s").await.unwrap();
        let (_, r) = bb
            .write(0, IoBuf::filled(4096, 2), engine::io::ReqFlags::NONE)
            .await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO));
        // Once: the table is copied now; the snapshot keeps the old data.
        bb.write(0, IoBuf::filled(4096, 2), engine::io::ReqFlags::NONE)
            .await
            .1
            .unwrap();
        let node = engine.node("top").unwrap();
        let rep = engine::drivers::qcow2::check_node(&node, None)
            .await
            .unwrap();
        assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{:#?}", rep.messages);
        engine.snapshot_internal_goto("d", "s").await.unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 1));
    });
}
