//! Permissions, two-phase rollback, graph edits and blockdev-add/-del validation.

use crate::support;

use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::graph::{self, ReplaceOptions};
use engine::types::Perms;
use engine::{Engine, ErrorClass};
use serde_json::json;
use support::{add_mem, run};

/// Every edge of the graph with its permissions, in a stable order.
fn edges(engine: &Engine) -> Vec<(String, String, Perms, Perms)> {
    let mut out = Vec::new();
    for n in engine.graph().nodes() {
        for e in n.parents() {
            out.push((n.name().to_string(), e.describe_use(), e.perm(), e.shared()));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[test]
fn conflicting_writers_are_refused_naming_both_users_and_nothing_changes() {
    run(1, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r1", "file": "m"}))
            .await
            .unwrap();
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r2", "file": "m"}))
            .await
            .unwrap();
        engine
            .device_add("d1", "r1", BackendOptions::guest_device(false, false))
            .unwrap();
        let before = edges(&engine);
        // d2 writes through r2 into m, where d1 (through r1) does not share 'write'.
        let err = engine
            .device_add("d2", "r2", BackendOptions::guest_device(false, false))
            .err()
            .expect("second writer must be refused");
        let msg = err.message();
        assert!(msg.contains("'write'"), "{msg}");
        assert!(
            msg.contains("node 'r1'") && msg.contains("node 'r2'"),
            "names both users: {msg}"
        );
        assert!(msg.contains("node 'm'"), "names the node: {msg}");
        assert_eq!(
            edges(&engine),
            before,
            "an aborted change leaves every edge as it was"
        );
        assert!(engine.backend("d2").is_err());
        // A reader that shares writes is fine alongside.
        engine
            .device_add("d3", "r2", BackendOptions::guest_device(true, true))
            .unwrap();
    });
}

#[test]
fn share_rw_lets_two_writers_coexist() {
    run(2, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        engine
            .device_add("a", "m", BackendOptions::guest_device(false, true))
            .unwrap();
        engine
            .device_add("b", "m", BackendOptions::guest_device(false, true))
            .unwrap();
        let m = engine.node("m").unwrap();
        assert!(m.cumulative_perms().0.contains(Perms::WRITE));
    });
}

#[test]
fn read_only_nodes_refuse_writers() {
    run(3, |engine| async move {
        add_mem(&engine, "m", json!({"read-only": true})).await;
        let err = engine
            .device_add("d", "m", BackendOptions::guest_device(false, false))
            .err()
            .unwrap();
        assert!(err.message().contains("read-only"), "{err}");
        engine
            .device_add("d", "m", BackendOptions::guest_device(true, false))
            .unwrap();
    });
}

#[test]
fn blockdev_del_refuses_nodes_in_use() {
    run(4, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        engine
            .device_add("d", "m", BackendOptions::guest_device(false, false))
            .unwrap();
        let err = engine.blockdev_del("m").await.unwrap_err();
        assert_eq!(err.message(), "Node m is in use");
        engine.device_del("d").await.unwrap();

        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": "m"}))
            .await
            .unwrap();
        let err = engine.blockdev_del("m").await.unwrap_err();
        assert_eq!(err.message(), "Block device m is in use");

        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r2",
                "file": {"driver": "testmem"}}))
            .await
            .unwrap();
        let implicit = engine
            .node("r2")
            .unwrap()
            .child("file")
            .unwrap()
            .child_node();
        assert!(implicit.is_implicit() && implicit.name().starts_with("#block"));
        let err = engine.blockdev_del(implicit.name()).await.unwrap_err();
        assert_eq!(
            err.message(),
            format!("Node {} is not owned by the monitor", implicit.name())
        );

        let err = engine.blockdev_del("nope").await.unwrap_err();
        assert_eq!(err.message(), "Cannot find node nope");

        // Deleting the parent releases its implicit child too.
        let implicit_name = implicit.name().to_string();
        drop(implicit);
        engine.blockdev_del("r2").await.unwrap();
        assert!(engine.graph().node(&implicit_name).is_none());
        engine.blockdev_del("r").await.unwrap();
        engine.blockdev_del("m").await.unwrap();
        assert!(engine.graph().nodes().is_empty());
    });
}

#[test]
fn bad_node_names_and_options_are_rejected() {
    run(5, |engine| async move {
        let cases = [
            (
                json!({"driver": "testmem", "node-name": "1abc"}),
                "Invalid node-name: '1abc'",
            ),
            (
                json!({"driver": "testmem", "node-name": "a b"}),
                "Invalid node-name: 'a b'",
            ),
            (
                json!({"driver": "testmem", "node-name": "x".repeat(32)}),
                "Node name too long",
            ),
            (
                json!({"driver": "testmem"}),
                "'node-name' must be specified for the root node",
            ),
            (json!({"node-name": "a"}), "Parameter 'driver' is missing"),
            (
                json!({"driver": "nosuch", "node-name": "a"}),
                "Unknown driver 'nosuch'",
            ),
            (
                json!({"driver": "testmem", "node-name": "a", "bogus": 1}),
                "Parameter 'bogus' is unexpected",
            ),
            (
                json!({"driver": "raw", "node-name": "a", "file": {"driver": "testmem", "bogus": 1}}),
                "Parameter 'file.bogus' is unexpected",
            ),
            (
                json!({"driver": "raw", "node-name": "a", "file": "missing"}),
                "nor node-name='missing'",
            ),
            (
                json!({"driver": "testmem", "node-name": "a", "read-only": "maybe"}),
                "'read-only'",
            ),
            (
                json!({"driver": "testmem", "node-name": "a", "detect-zeroes": "unmap"}),
                "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
            ),
            (
                json!({"driver": "testmem", "node-name": "a", "detect-zeroes": "sometimes"}),
                "'detect-zeroes'",
            ),
            (
                json!({"driver": "testmem", "node-name": "a", "cache": {"direct": true, "x": 1}}),
                "Parameter 'cache.x' is unexpected",
            ),
            (
                json!({"driver": "raw", "node-name": "a", "size": 1000, "file": {"driver": "testmem"}}),
                "not a multiple of 512",
            ),
        ];
        for (opts, want) in cases {
            let err = engine
                .blockdev_add(opts.clone())
                .await
                .err()
                .unwrap_or_else(|| panic!("{opts} accepted"));
            assert_eq!(err.class(), ErrorClass::GenericError);
            assert!(
                err.message().contains(want),
                "{opts}: got '{err}', want '{want}'"
            );
            assert!(
                engine.graph().nodes().is_empty(),
                "{opts}: a failed add left nodes behind"
            );
        }
        add_mem(&engine, "a", json!({})).await;
        let err = engine
            .blockdev_add(json!({"driver": "testmem", "node-name": "a"}))
            .await
            .unwrap_err();
        assert_eq!(err.message(), "Duplicate nodes with node-name='a'");
    });
}

#[test]
fn filters_insert_and_remove_and_frozen_edges_refuse_change() {
    run(6, |engine| async move {
        let m = add_mem(&engine, "m", json!({})).await;
        let bb = engine
            .device_add("d", "m", BackendOptions::guest_device(false, false))
            .unwrap();
        let f = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "f", "file": "m"}))
            .await
            .unwrap();
        graph::insert_filter(&f, &m).await.unwrap();
        assert_eq!(bb.root_node().unwrap().name(), "f");
        assert!(f.cumulative_perms().0.contains(Perms::WRITE));
        // Data written through the filter lands in m.
        let (_, r) = bb
            .write(
                0,
                engine::io::IoBuf::filled(512, 7),
                engine::io::ReqFlags::NONE,
            )
            .await;
        r.unwrap();
        assert_eq!(support::mem("m").data.borrow()[..512], [7u8; 512]);

        let root_edge = bb.root().unwrap().edge().clone();
        graph::freeze(&root_edge);
        let err = graph::remove_filter(&f).await.unwrap_err();
        assert!(err.message().contains("frozen"), "{err}");
        assert_eq!(
            bb.root_node().unwrap().name(),
            "f",
            "refused edit changed nothing"
        );
        graph::unfreeze(&root_edge);
        graph::remove_filter(&f).await.unwrap();
        assert_eq!(bb.root_node().unwrap().name(), "m");

        assert_eq!(
            f.child("file").unwrap().child_node().name(),
            "m",
            "the filter keeps its child"
        );

        // Cycles are refused, and the refusal changes nothing.
        let err = graph::attach_child(&m, &f, "extra", engine::types::ChildRole::DATA).unwrap_err();
        assert!(err.message().contains("cycle"), "{err}");
        assert!(m.children().is_empty());
        engine.blockdev_del("f").await.unwrap();
        assert!(Rc::strong_count(&m) >= 1);
        assert_eq!(m.refcnt(), 2, "monitor + device");
    });
}

#[test]
fn replace_node_moves_parents_and_checks_permissions_first() {
    run(7, |engine| async move {
        add_mem(&engine, "a", json!({})).await;
        let b = add_mem(&engine, "b", json!({})).await;
        let bb = engine
            .device_add("d", "a", BackendOptions::guest_device(false, false))
            .unwrap();
        // A second exclusive writer on b makes moving d there impossible.
        engine
            .device_add("x", "b", BackendOptions::guest_device(false, false))
            .unwrap();
        let a = engine.node("a").unwrap();
        let before = edges(&engine);
        let err = graph::replace_node(&a, &b, ReplaceOptions::default())
            .await
            .unwrap_err();
        assert!(err.message().contains("Conflicts with use by"), "{err}");
        assert_eq!(edges(&engine), before);
        engine.device_del("x").await.unwrap();
        graph::replace_node(&a, &b, ReplaceOptions::default())
            .await
            .unwrap();
        assert_eq!(bb.root_node().unwrap().name(), "b");
        assert_eq!(a.refcnt(), 1, "only the monitor holds a now");
    });
}

#[test]
fn reopen_device_switches_node_and_device_together_or_not_at_all() {
    run(9, |engine| async move {
        // null-co can reopen (the test memory driver cannot).
        let m = engine
            .blockdev_add(json!({"driver": "null-co", "node-name": "m", "size": 1 << 20}))
            .await
            .unwrap();
        let a = engine
            .device_add("a", "m", BackendOptions::guest_device(false, true))
            .unwrap();
        engine.reopen_device(&a, true).await.unwrap();
        assert!(m.is_read_only());
        assert!(!a.options().perm.contains(Perms::WRITE));
        engine.reopen_device(&a, false).await.unwrap();
        assert!(!m.is_read_only());
        assert!(a.options().perm.contains(Perms::WRITE));
        // Another writer keeps the node writable: the reopen is refused and the device keeps
        // the permissions it had.
        engine
            .device_add("b", "m", BackendOptions::guest_device(false, true))
            .unwrap();
        let err = engine.reopen_device(&a, true).await.unwrap_err();
        assert!(err.message().contains("read-only"), "{err}");
        assert!(!m.is_read_only());
        assert!(a.options().perm.contains(Perms::WRITE));
    });
}
