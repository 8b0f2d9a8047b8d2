//! The structure errors carry through the engine: which node, operation and range a failed
//! request names, option errors naming their path from the node being added, wrapped causes,
//! and the QMP reply built from the class and the full text.

use crate::support;

use std::error::Error as _;

use engine::error::{ErrorClass, Op, ParamProblem};
use engine::io::{IoBuf, ReqFlags};
use engine::{Errno, Error, qmp};
use serde_json::json;
use support::run;

/// raw "r" over blkdebug "dbg" (with `rules`) over a 64 KiB testmem "m", and a device "d".
async fn stack(
    engine: &engine::Engine,
    rules: serde_json::Value,
) -> std::rc::Rc<engine::backend::BlockBackend> {
    let mut dbg = json!({"driver": "blkdebug", "node-name": "dbg",
                         "image": {"driver": "testmem", "node-name": "m", "size": 65536}});
    dbg.as_object_mut()
        .unwrap()
        .extend(rules.as_object().unwrap().clone());
    engine
        .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": dbg}))
        .await
        .unwrap();
    engine
        .device_add("d", "r", engine::backend::BackendOptions::tool(false))
        .unwrap()
}

#[test]
fn a_failed_read_names_the_node_the_operation_and_the_range() {
    run(1, |engine| async move {
        // Sector 9 is byte 4608: a read of [4096, 8192) covers it.
        let bb = stack(
            &engine,
            json!({"inject-error": [{"event": "read_aio", "errno": 5, "sector": 9}]}),
        )
        .await;
        let (_, r) = bb.read(4096, IoBuf::new(4096)).await;
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "Input/output error", "the text is unchanged");
        assert_eq!(e.errno(), Some(Errno::EIO));
        assert_eq!(e.node(), Some("dbg"), "the node nearest the failure");
        assert_eq!(e.op(), Some(Op::Read));
        assert_eq!(e.offset_len(), Some((4096, 4096)));
    });
}

#[test]
fn a_failed_write_names_its_operation() {
    run(2, |engine| async move {
        let bb = stack(
            &engine,
            json!({"inject-error": [{"event": "write_aio", "errno": 28, "iotype": "write"}]}),
        )
        .await;
        let e = bb
            .write(512, IoBuf::filled(1024, 7), ReqFlags::NONE)
            .await
            .1
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOSPC));
        assert_eq!(e.node(), Some("dbg"));
        assert_eq!(e.op(), Some(Op::Write));
        assert_eq!(e.offset_len(), Some((512, 1024)));
    });
}

#[test]
fn an_option_error_names_its_path_from_the_node_added() {
    run(3, |engine| async move {
        let e = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r",
                "file": {"driver": "blkdebug",
                         "image": {"driver": "testmem", "size": 4096, "bogus": 1}}}))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Parameter 'file.image.bogus' is unexpected");
        assert_eq!(
            e.param_problem(),
            Some(("file.image.bogus", &ParamProblem::Unexpected))
        );
        let e = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r2", "file": {"driver": "file"}}))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Parameter 'file.filename' is missing");
        assert_eq!(e.option_path(), Some("file.filename"));
    });
}

#[test]
fn a_failed_open_names_the_file_option_and_wraps_the_host_error() {
    run(4, |engine| async move {
        let e = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r",
                "file": {"driver": "file", "filename": "/no/such.img"}}))
            .await
            .unwrap_err();
        // The driver's wrapping around whatever the environment said about the file.
        let cause = e.cause().expect("the host error is the source");
        assert_eq!(
            e.to_string(),
            format!("Could not open '/no/such.img': {cause}")
        );
        assert!(
            cause.to_string().ends_with("No such file or directory"),
            "{cause}"
        );
        assert_eq!(e.op(), Some(Op::Open));
        assert_eq!(e.option_path(), Some("file.filename"));
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        assert_eq!(cause.option_path(), None);
    });
}

#[test]
fn a_qmp_reply_is_built_from_the_class_and_the_whole_text() {
    let inner = Error::io(Errno::ENOENT);
    let e = Error::with_class(ErrorClass::DeviceNotFound, "No node 'x'");
    assert_eq!(
        qmp::error_reply(&e),
        json!({"error": {"class": "DeviceNotFound", "desc": "No node 'x'"}})
    );
    let wrapped = inner.context("Could not open 'x.img'");
    assert_eq!(
        qmp::error_reply(&wrapped),
        json!({"error": {"class": "GenericError",
                         "desc": "Could not open 'x.img': No such file or directory"}})
    );
    assert_eq!(
        wrapped.source().map(ToString::to_string).as_deref(),
        Some("No such file or directory")
    );
}
