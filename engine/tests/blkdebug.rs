//! blkdebug: the rule state machine, armed error injection (sector, iotype, once, immediately,
//! errno), the config file, fake limits forcing read-modify-write and splitting, child
//! permission tweaks, option validation, and breakpoints forcing interleavings.

use crate::support;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use engine::backend::{BackendOptions, BlockBackend};
use engine::env::{Env, LocalBoxFuture, OpenOptions};
use engine::event::DebugEvent;
use engine::io::{IoBuf, ReqFlags};
use engine::{Engine, Errno, Result};
use serde_json::{Value, json};
use support::{Op, mem, run};

async fn settle(env: &Rc<dyn Env>) {
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

/// Create a sim host file of `size` bytes holding `data` at 0.
async fn host_file(engine: &Engine, path: &str, size: u64, data: &[u8]) {
    let opts = OpenOptions {
        write: true,
        create: true,
        ..Default::default()
    };
    let file = engine.env().fs().open(path, opts).unwrap();
    file.set_len(size).await.unwrap();
    if !data.is_empty() {
        let (_, r) = file.write_at(IoBuf::from_slice(data), 0, false).await;
        r.unwrap();
    }
}

/// `base` with the keys of `extra` added.
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// blkdebug "dbg" (with `extra` options) over a 64 KiB testmem "m".
fn dbg_over_mem(extra: Value) -> Value {
    merged(
        json!({"driver": "blkdebug", "node-name": "dbg",
               "image": {"driver": "testmem", "node-name": "m", "size": 65536}}),
        extra,
    )
}

/// raw "r" over `dbg`, with a tool device "d" on r.
async fn raw_over(engine: &Engine, dbg: Value) -> Rc<BlockBackend> {
    engine
        .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": dbg}))
        .await
        .unwrap();
    engine
        .device_add("d", "r", BackendOptions::tool(false))
        .unwrap()
}

/// The typical stack with rules: raw over blkdebug over testmem.
async fn stack(engine: &Engine, extra: Value) -> Rc<BlockBackend> {
    raw_over(engine, dbg_over_mem(extra)).await
}

async fn read(bb: &BlockBackend, offset: u64, len: usize) -> Result<Vec<u8>> {
    let (buf, r) = bb.read(offset, IoBuf::new(len)).await;
    r.map(|()| buf.as_slice().to_vec())
}

async fn write(bb: &BlockBackend, offset: u64, len: usize, pattern: u8) -> Result<()> {
    bb.write(offset, IoBuf::filled(len, pattern), ReqFlags::NONE)
        .await
        .1
}

fn errno<T>(r: &Result<T>) -> Option<Errno> {
    r.as_ref().err().and_then(|e| e.errno())
}

async fn add_err(engine: &Engine, opts: Value) -> String {
    match engine.blockdev_add(opts).await {
        Ok(_) => panic!("blockdev-add should have failed"),
        Err(e) => e.message().to_string(),
    }
}

#[test]
fn set_state_drives_a_state_machine_and_state_zero_matches_any_state() {
    run(1, |engine| async move {
        let bb = stack(
            &engine,
            json!({
            "set-state": [{"event": "write_aio", "state": 1, "new_state": 2},
                          {"event": "write_aio", "state": 2, "new_state": 3}],
            "inject-error": [{"event": "read_aio", "errno": 22, "sector": 100},
                             {"event": "read_aio", "state": 2, "errno": 28, "iotype": "read"},
                             {"event": "read_aio", "state": 3, "errno": 5, "iotype": "read"}]}),
        )
        .await;
        let at_100 = 100 * 512;
        // State 1: only the any-state rule exists for reads, and it needs sector 100.
        assert!(read(&bb, 0, 512).await.is_ok());
        assert_eq!(errno(&read(&bb, at_100, 512).await), Some(Errno::EINVAL));
        // One write moves 1 -> 2 only: the 2 -> 3 rule sees the state at the event's start.
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(errno(&read(&bb, 0, 512).await), Some(Errno::ENOSPC));
        assert_eq!(errno(&read(&bb, at_100, 512).await), Some(Errno::EINVAL));
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(errno(&read(&bb, 0, 512).await), Some(Errno::EIO));
        assert_eq!(errno(&read(&bb, at_100, 512).await), Some(Errno::EINVAL));
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(
            errno(&read(&bb, 0, 512).await),
            Some(Errno::EIO),
            "no rule leaves state 3"
        );
    });
}

#[test]
fn of_several_matching_set_state_rules_the_first_defined_wins() {
    run(2, |engine| async move {
        let bb = stack(
            &engine,
            json!({
            "set-state": [{"event": "write_aio", "state": 1, "new_state": 5},
                          {"event": "write_aio", "state": 1, "new_state": 7}],
            "inject-error": [{"event": "read_aio", "state": 5, "errno": 28},
                             {"event": "read_aio", "state": 7, "errno": 5}]}),
        )
        .await;
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(errno(&read(&bb, 0, 512).await), Some(Errno::ENOSPC));
    });
}

#[test]
fn set_state_and_inject_error_on_one_event_both_see_the_old_state() {
    run(3, |engine| async move {
        let bb = stack(
            &engine,
            json!({
            "set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
            "inject-error": [{"event": "write_aio", "state": 1, "errno": 5, "once": true},
                             {"event": "write_aio", "state": 2, "errno": 28, "once": true}]}),
        )
        .await;
        assert_eq!(
            errno(&write(&bb, 0, 512, 1).await),
            Some(Errno::EIO),
            "armed in state 1"
        );
        assert_eq!(
            errno(&write(&bb, 0, 512, 1).await),
            Some(Errno::ENOSPC),
            "now state 2"
        );
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(mem("m").data.borrow()[0], 1);
    });
}

#[test]
fn an_event_arms_the_error_and_the_next_matching_request_fails() {
    run(4, |engine| async move {
        // write_aio arms a read error: the write itself goes through.
        let bb = stack(
            &engine,
            json!({"inject-error": [
            {"event": "write_aio", "errno": 5, "iotype": "read", "once": true}]}),
        )
        .await;
        read(&bb, 0, 512).await.unwrap();
        write(&bb, 0, 512, 9).await.unwrap();
        assert_eq!(errno(&read(&bb, 0, 512).await), Some(Errno::EIO));
        assert_eq!(
            read(&bb, 0, 512).await.unwrap(),
            vec![9; 512],
            "once: fired and gone"
        );
    });
    run(5, |engine| async move {
        // "none" fires once when the node is created: its rule is armed before any request.
        let bb = stack(
            &engine,
            json!({"inject-error": [
            {"event": "none", "errno": 28, "once": true}]}),
        )
        .await;
        assert_eq!(errno(&write(&bb, 0, 512, 1).await), Some(Errno::ENOSPC));
        write(&bb, 0, 512, 1).await.unwrap();
    });
}

#[test]
fn the_sector_must_lie_in_the_request() {
    run(6, |engine| async move {
        let bb = stack(
            &engine,
            json!({"inject-error": [
            {"event": "none", "sector": 8, "iotype": "read"}]}),
        )
        .await;
        read(&bb, 0, 4096).await.unwrap();
        assert!(read(&bb, 4096, 512).await.is_err());
        assert!(read(&bb, 4000, 100).await.is_err(), "covers byte 4096");
        read(&bb, 4097, 1000).await.unwrap();
        write(&bb, 4096, 512, 1).await.unwrap();
    });
}

#[test]
fn the_iotype_selects_requests_and_flush_matches_only_sectorless_rules() {
    let case = |seed, rule: Value, check: fn(Rc<BlockBackend>) -> LocalBoxFuture<'static, ()>| {
        run(seed, move |engine| async move {
            let dbg = json!({"driver": "blkdebug", "node-name": "dbg", "discard": "unmap",
                "inject-error": [rule],
                "image": {"driver": "testmem", "node-name": "m", "size": 65536, "discard": "unmap"}});
            engine
                .blockdev_add(
                    json!({"driver": "raw", "node-name": "r", "discard": "unmap", "file": dbg}),
                )
                .await
                .unwrap();
            check(
                engine
                    .device_add("d", "r", BackendOptions::tool(false))
                    .unwrap(),
            )
            .await;
        })
    };
    case(7, json!({"event": "none", "iotype": "discard"}), |bb| {
        Box::pin(async move {
            read(&bb, 0, 512).await.unwrap();
            write(&bb, 0, 512, 1).await.unwrap();
            bb.write_zeroes(0, 4096, ReqFlags::NONE).await.unwrap();
            assert_eq!(errno(&bb.discard(0, 4096).await), Some(Errno::EIO));
            assert_eq!(
                mem("m")
                    .take_log()
                    .iter()
                    .filter(|o| matches!(o, Op::Discard(..)))
                    .count(),
                0
            );
        })
    });
    case(
        8,
        json!({"event": "none", "iotype": "write-zeroes"}),
        |bb| {
            Box::pin(async move {
                write(&bb, 0, 512, 1).await.unwrap();
                bb.discard(0, 4096).await.unwrap();
                assert!(bb.write_zeroes(0, 4096, ReqFlags::NONE).await.is_err());
            })
        },
    );
    case(9, json!({"event": "none"}), |bb| {
        Box::pin(async move {
            // The default mask has everything but block-status.
            bb.block_status(0, 4096).await.unwrap();
            assert!(read(&bb, 0, 512).await.is_err());
            assert!(bb.write_zeroes(0, 512, ReqFlags::NONE).await.is_err());
        })
    });
    case(
        10,
        json!({"event": "none", "iotype": "block-status"}),
        |bb| {
            Box::pin(async move {
                assert_eq!(errno(&bb.block_status(0, 4096).await), Some(Errno::EIO));
                read(&bb, 0, 512).await.unwrap();
            })
        },
    );
    case(
        11,
        json!({"event": "none", "iotype": "flush", "sector": 0}),
        |bb| {
            Box::pin(async move {
                write(&bb, 0, 512, 1).await.unwrap();
                bb.flush().await.unwrap();
                assert!(
                    mem("m").take_log().contains(&Op::Flush),
                    "a flush has no sector to match"
                );
            })
        },
    );
    case(
        12,
        json!({"event": "none", "iotype": "flush", "errno": 28}),
        |bb| {
            Box::pin(async move {
                write(&bb, 0, 512, 1).await.unwrap();
                assert_eq!(errno(&bb.flush().await), Some(Errno::ENOSPC));
                assert_eq!(
                    errno(&bb.flush().await),
                    Some(Errno::ENOSPC),
                    "sticky, still unflushed"
                );
                assert!(!mem("m").take_log().contains(&Op::Flush));
            })
        },
    );
}

#[test]
fn a_sticky_rule_fails_until_another_event_rearms_the_list() {
    run(13, |engine| async move {
        let bb = stack(
            &engine,
            json!({"inject-error": [
            {"event": "none", "iotype": "read"},
            {"event": "write_aio", "iotype": "flush", "errno": 28}]}),
        )
        .await;
        assert!(read(&bb, 0, 512).await.is_err());
        assert!(
            read(&bb, 0, 512).await.is_err(),
            "without once it stays armed"
        );
        // write_aio arms the flush rule, which clears the list: reads work again.
        write(&bb, 0, 512, 3).await.unwrap();
        assert_eq!(read(&bb, 0, 512).await.unwrap(), vec![3; 512]);
        assert_eq!(errno(&bb.flush().await), Some(Errno::ENOSPC));
    });
}

/// Poll `fut` once with a waker that does nothing.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn immediately_fails_without_yielding_otherwise_after_one_yield() {
    for (seed, immediately) in [(14, true), (15, false)] {
        run(seed, move |engine| async move {
            let bb = stack(
                &engine,
                json!({"inject-error": [
                {"event": "none", "iotype": "read", "immediately": immediately}]}),
            )
            .await;
            // testmem completes at once, so the only possible suspension point is blkdebug's.
            let mut fut = pin!(bb.read(0, IoBuf::new(512)));
            let first = poll_once(fut.as_mut());
            let r = match (immediately, first) {
                (true, Poll::Ready((_, r))) => r,
                (false, Poll::Pending) => match poll_once(fut.as_mut()) {
                    Poll::Ready((_, r)) => r,
                    Poll::Pending => panic!("more than one yield"),
                },
                (i, p) => panic!("immediately={i}: first poll ready={}", p.is_ready()),
            };
            assert_eq!(errno(&r), Some(Errno::EIO));
        });
    }
}

#[test]
fn errno_values_are_linux_numbers() {
    run(16, |engine| async move {
        // errno 0 arms a rule that matches but injects nothing (QEMU's behaviour).
        let bb = stack(
            &engine,
            json!({"inject-error": [
            {"event": "read_aio", "state": 1, "errno": 28, "once": true},
            {"event": "write_aio", "errno": 200, "once": true},
            {"event": "pwritev_zero", "errno": 0}]}),
        )
        .await;
        let err = read(&bb, 0, 512).await.unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOSPC));
        assert_eq!(err.message(), "No space left on device");
        let err = write(&bb, 0, 512, 1).await.unwrap_err();
        assert_eq!(err.errno(), Some(Errno::Other(200)));
        assert_eq!(err.message(), "Unknown error 200");
        bb.write_zeroes(0, 4096, ReqFlags::NONE).await.unwrap();
    });
}

const RULES_INI: &str = "# error on the second write\n\
[set-state]\n\
event = \"write_aio\"\n\
state = \"1\"\n\
new_state = \"2\"\n\
\n\
[inject-error]\n\
event = \"write_aio\"\n\
state = \"2\"\n\
errno = \"28\"\n\
once = \"on\"\n";

#[test]
fn rules_come_from_a_config_file_on_the_host_fs() {
    run(17, |engine| async move {
        host_file(&engine, "rules.ini", 0, RULES_INI.as_bytes()).await;
        host_file(&engine, "disk", 65536, &[]).await;
        let bb = raw_over(
            &engine,
            json!({"driver": "blkdebug", "node-name": "dbg",
            "config": "rules.ini", "image": {"driver": "file", "filename": "disk"}}),
        )
        .await;
        write(&bb, 0, 512, 1).await.unwrap();
        assert_eq!(errno(&write(&bb, 0, 512, 2).await), Some(Errno::ENOSPC));
        write(&bb, 0, 512, 3).await.unwrap();
        assert_eq!(read(&bb, 0, 512).await.unwrap(), vec![3; 512]);
        assert_eq!(
            engine.node("dbg").unwrap().driver().filename(),
            "blkdebug:rules.ini:disk"
        );
        // The legacy file name form works too.
        let n = engine
            .blockdev_add(json!({"driver": "blkdebug", "node-name": "legacy",
                                 "filename": "blkdebug:rules.ini:disk", "read-only": true}))
            .await
            .unwrap();
        assert_eq!(n.driver().filename(), "blkdebug:rules.ini:disk");
        // Bad files are refused with the line (a missing one in QEMU's words).
        let msg = add_err(
            &engine,
            json!({"driver": "blkdebug", "node-name": "x", "config": "missing.ini",
            "image": {"driver": "file", "filename": "disk", "read-only": true}}),
        )
        .await;
        assert!(
            msg.starts_with("Could not read blkdebug config file: "),
            "{msg}"
        );
        host_file(
            &engine,
            "bad.ini",
            0,
            b"[inject-error]\nevent = \"write_aio\"\n[oops]\n",
        )
        .await;
        let msg = add_err(
            &engine,
            json!({"driver": "blkdebug", "node-name": "x", "config": "bad.ini",
            "image": {"driver": "file", "filename": "disk", "read-only": true}}),
        )
        .await;
        assert_eq!(msg, "bad.ini:3: There is no option group 'oops'");
    });
}

#[test]
fn fake_alignment_forces_read_modify_write_at_the_blkdebug_node() {
    run(18, |engine| async move {
        engine
            .blockdev_add(dbg_over_mem(json!({"align": 4096, "inject-error": [
                {"event": "pwritev_rmw_head", "iotype": "read", "once": true}]})))
            .await
            .unwrap();
        assert_eq!(engine.node("dbg").unwrap().limits().request_align, 4096);
        let bb = engine
            .device_add("d", "dbg", BackendOptions::tool(false))
            .unwrap();
        let m = mem("m");
        // The RMW head read is failed by the rule armed at pwritev_rmw_head.
        assert_eq!(errno(&write(&bb, 100, 200, 7).await), Some(Errno::EIO));
        assert_eq!(m.take_log(), vec![], "nothing reached the image");
        write(&bb, 100, 200, 7).await.unwrap();
        let log = m.take_log();
        assert_eq!(
            log,
            vec![Op::Read(0, 4096), Op::Write(0, 4096, ReqFlags::NONE)]
        );
        let mut want = vec![0u8; 4096];
        want[100..300].fill(7);
        assert_eq!(&m.data.borrow()[..4096], &want[..]);
    });
}

#[test]
fn fake_max_transfer_and_zero_and_discard_limits_split_requests() {
    run(19, |engine| async move {
        let mut dbg = dbg_over_mem(json!({"align": 512, "max-transfer": 8192,
            "opt-write-zero": 4096, "max-write-zero": 8192, "opt-discard": 4096,
            "max-discard": 8192, "discard": "unmap"}));
        dbg["image"]["discard"] = json!("unmap");
        engine.blockdev_add(dbg).await.unwrap();
        let bb = engine
            .device_add("d", "dbg", BackendOptions::tool(false))
            .unwrap();
        let m = mem("m");
        write(&bb, 0, 32768, 0xff).await.unwrap();
        let want: Vec<Op> = (0..4)
            .map(|i| Op::Write(i * 8192, 8192, ReqFlags::NONE))
            .collect();
        assert_eq!(m.take_log(), want);
        assert_eq!(read(&bb, 0, 32768).await.unwrap(), vec![0xff; 32768]);
        assert!(m.take_log().iter().all(|o| matches!(o, Op::Read(_, 8192))));
        // [1024, 4096) and [20480, 20992) as zero buffers, the middle as write-zeroes pieces
        // of at most 8192, the unaligned tail by read-modify-write.
        bb.write_zeroes(1024, 20000, ReqFlags::NONE).await.unwrap();
        let zeroes: Vec<(u64, u64)> = m
            .take_log()
            .into_iter()
            .filter_map(|o| {
                if let Op::Zeroes(o, l, _) = o {
                    Some((o, l))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(zeroes, vec![(4096, 8192), (12288, 8192)]);
        let data = read(&bb, 0, 32768).await.unwrap();
        assert!(data[..1024].iter().all(|b| *b == 0xff));
        assert!(data[1024..21024].iter().all(|b| *b == 0));
        assert!(data[21024..].iter().all(|b| *b == 0xff));
        bb.discard(1000, 30000).await.unwrap();
        let discards: Vec<Op> = m
            .take_log()
            .into_iter()
            .filter(|o| matches!(o, Op::Discard(..)))
            .collect();
        assert_eq!(
            discards,
            vec![
                Op::Discard(4096, 8192),
                Op::Discard(12288, 8192),
                Op::Discard(20480, 8192)
            ]
        );
    });
}

#[test]
fn impossible_limits_are_refused() {
    run(20, |engine| async move {
        let msg = add_err(&engine, dbg_over_mem(json!({"align": 3}))).await;
        assert_eq!(msg, "Cannot meet constraints with align 3");
        let msg = add_err(
            &engine,
            dbg_over_mem(json!({"align": 512, "max-transfer": 1000})),
        )
        .await;
        assert_eq!(msg, "Cannot meet constraints with max-transfer 1000");
        let mut dbg = dbg_over_mem(json!({"max-transfer": 2048}));
        dbg["image"]["align"] = json!(4096);
        assert_eq!(
            add_err(&engine, dbg).await,
            "Cannot meet constraints with max-transfer 2048"
        );
        let msg = add_err(
            &engine,
            dbg_over_mem(json!({"opt-write-zero": 4096, "max-write-zero": 6144})),
        )
        .await;
        assert_eq!(msg, "Cannot meet constraints with max-write-zero 6144");
        assert!(
            engine.node("dbg").is_err() && engine.node("m").is_err(),
            "nothing left behind"
        );
    });
}

#[test]
#[should_panic(expected = "is not aligned to 4096")]
fn an_unaligned_request_reaching_blkdebug_is_an_engine_bug() {
    run(21, |engine| async move {
        let node = engine
            .blockdev_add(dbg_over_mem(json!({"align": 4096})))
            .await
            .unwrap();
        // Bypass the generic path, as a buggy caller would.
        let _ = node
            .driver()
            .read(512, IoBuf::new(512), ReqFlags::NONE)
            .await;
    });
}

#[test]
fn take_and_unshare_child_perms_cause_conflicts() {
    run(22, |engine| async move {
        support::add_mem(&engine, "m", json!({})).await;
        engine
            .device_add("a", "m", BackendOptions::guest_device(false, false))
            .unwrap();
        // Without parents blkdebug takes nothing; with take-child-perms it takes 'write'.
        engine
            .blockdev_add(json!({"driver": "blkdebug", "node-name": "quiet", "image": "m"}))
            .await
            .unwrap();
        let msg = add_err(
            &engine,
            json!({"driver": "blkdebug", "node-name": "dbg", "image": "m",
            "take-child-perms": ["write", "resize"]}),
        )
        .await;
        assert!(msg.contains("'write'") && msg.contains("dbg"), "{msg}");
        assert!(engine.node("dbg").is_err());
    });
    run(23, |engine| async move {
        support::add_mem(&engine, "m", json!({})).await;
        engine
            .blockdev_add(
                json!({"driver": "blkdebug", "node-name": "dbg", "image": "m",
            "unshare-child-perms": ["write"]}),
            )
            .await
            .unwrap();
        let err = engine
            .device_add("x", "m", BackendOptions::guest_device(false, true))
            .err()
            .unwrap();
        assert!(
            err.message().contains("'write'") && err.message().contains("dbg"),
            "{err}"
        );
        engine
            .device_add("y", "m", BackendOptions::guest_device(true, true))
            .unwrap();
    });
}

#[test]
fn bad_options_and_events_are_refused_by_name() {
    run(24, |engine| async move {
        let cases = [
            (
                json!({"inject-error": [{"event": "xyz"}]}),
                "Invalid parameter 'xyz' for 'inject-error.0.event'",
            ),
            (
                json!({"set-state": [{"event": "none", "new_state": 2}, {"event": "l2_lod", "new_state": 1}]}),
                "Invalid parameter 'l2_lod' for 'set-state.1.event'",
            ),
            (
                json!({"inject-error": [{"event": "none", "iotype": "trim"}]}),
                "Invalid parameter 'trim' for 'inject-error.0.iotype'",
            ),
            (
                json!({"inject-error": [{"event": "none", "sectr": 1}]}),
                "Parameter 'inject-error.0.sectr' is unexpected",
            ),
            (
                json!({"inject-error": [{"state": 1}]}),
                "Missing event name for rule ('inject-error.0.event')",
            ),
            (
                json!({"set-state": [{"event": "none"}]}),
                "Parameter 'set-state.0.new_state' is missing",
            ),
            (
                json!({"unshare-child-perms": ["all"]}),
                "Invalid parameter 'all' for 'unshare-child-perms.0'",
            ),
            (json!({"bogus": 1}), "Parameter 'bogus' is unexpected"),
        ];
        for (extra, want) in cases {
            assert_eq!(add_err(&engine, dbg_over_mem(extra)).await, want);
        }
        let msg = add_err(&engine, json!({"driver": "blkdebug", "node-name": "dbg"})).await;
        assert_eq!(msg, "Parameter 'image' is missing");
        // The dotted key=value form of the lists is accepted.
        let bb = stack(
            &engine,
            json!({"inject-error.0.event": "none", "inject-error.0.errno": "28",
                                       "inject-error.0.once": "on"}),
        )
        .await;
        assert_eq!(errno(&read(&bb, 0, 512).await), Some(Errno::ENOSPC));
    });
}

/// Spawn a write that records its completion.
fn spawn_write(
    env: &Rc<dyn Env>,
    bb: &Rc<BlockBackend>,
    offset: u64,
    len: usize,
    pattern: u8,
) -> Rc<Cell<bool>> {
    let done = Rc::new(Cell::new(false));
    let (bb, d) = (bb.clone(), done.clone());
    env.spawn(
        "write",
        Box::pin(async move {
            write(&bb, offset, len, pattern).await.unwrap();
            d.set(true);
        }),
    );
    done
}

async fn wait_done(env: &Rc<dyn Env>, flags: &[&Rc<Cell<bool>>]) {
    while !flags.iter().all(|f| f.get()) {
        settle(env).await;
    }
}

#[test]
fn a_breakpoint_serialises_an_overlapping_rmw_write_behind_the_suspended_one() {
    for seed in 0..12 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            host_file(&engine, "disk", 8192, &[]).await;
            // align=512 makes the second (unaligned) write a serialising read-modify-write at the
            // blkdebug node (raw is byte-granular and passes it down unchanged). The breakpoint
            // is on `pwritev`, raised at the blkdebug node once write 1 is tracked there.
            let bb = raw_over(
                &engine,
                json!({"driver": "blkdebug", "node-name": "dbg", "align": 512,
                "image": {"driver": "file", "filename": "disk"}}),
            )
            .await;
            let bp = engine
                .node("r")
                .unwrap()
                .find_breakpoint_node()
                .expect("blkdebug below raw");
            assert_eq!(bp.name(), "dbg");
            bp.breakpoints()
                .unwrap()
                .debug_breakpoint(DebugEvent::Pwritev, "A")
                .unwrap();
            let w1 = spawn_write(&env, &bb, 0, 4096, 0x11);
            bp.breakpoints().unwrap().debug_wait_suspended("A").await;
            assert!(bp.breakpoints().unwrap().debug_is_suspended("A"));
            let w2 = spawn_write(&env, &bb, 2100, 4000, 0x22);
            settle(&env).await;
            assert!(
                !w1.get() && !w2.get(),
                "seed {seed}: write 2 must wait for write 1"
            );
            bp.breakpoints().unwrap().debug_resume("A").unwrap();
            wait_done(&env, &[&w1, &w2]).await;
            let data = read(&bb, 0, 8192).await.unwrap();
            let mut want = vec![0u8; 8192];
            want[..2100].fill(0x11);
            want[2100..6100].fill(0x22);
            assert!(data == want, "seed {seed}: write 2 wins where they overlap");
        });
    }
}

#[test]
fn a_breakpoint_lets_an_unserialised_write_overtake_the_suspended_one() {
    for seed in 0..12 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            host_file(&engine, "disk", 8192, &[]).await;
            let bb = raw_over(
                &engine,
                json!({"driver": "blkdebug", "node-name": "dbg",
                "image": {"driver": "file", "filename": "disk"}}),
            )
            .await;
            let bp = engine.node("dbg").unwrap();
            bp.breakpoints()
                .unwrap()
                .debug_breakpoint(DebugEvent::WriteAio, "A")
                .unwrap();
            let w1 = spawn_write(&env, &bb, 0, 4096, 0x11);
            bp.breakpoints().unwrap().debug_wait_suspended("A").await;
            let w2 = spawn_write(&env, &bb, 2048, 4096, 0x22);
            wait_done(&env, &[&w2]).await;
            assert!(!w1.get());
            bp.breakpoints().unwrap().debug_resume("A").unwrap();
            wait_done(&env, &[&w1]).await;
            let data = read(&bb, 0, 8192).await.unwrap();
            assert!(
                data[..4096].iter().all(|b| *b == 0x11),
                "seed {seed}: write 1 landed last"
            );
            assert!(data[4096..6144].iter().all(|b| *b == 0x22));
        });
    }
}

#[test]
fn break_pwritev_on_the_blkdebug_node_orders_rmw_against_an_aligned_write() {
    for seed in 0..8 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            host_file(&engine, "disk", 8192, &[]).await;
            engine
                .blockdev_add(
                    json!({"driver": "blkdebug", "node-name": "dbg", "align": 512,
                    "image": {"driver": "file", "filename": "disk"}}),
                )
                .await
                .unwrap();
            let bb = engine
                .device_add("d", "dbg", BackendOptions::tool(false))
                .unwrap();
            let bp = engine.node("dbg").unwrap();
            bp.breakpoints()
                .unwrap()
                .debug_breakpoint(DebugEvent::Pwritev, "A")
                .unwrap();
            // Write 1 is an RMW (serialising): suspended at pwritev after reading head and tail.
            let w1 = spawn_write(&env, &bb, 100, 900, 0x11);
            bp.breakpoints().unwrap().debug_wait_suspended("A").await;
            let w2 = spawn_write(&env, &bb, 0, 512, 0x22);
            settle(&env).await;
            assert!(
                !w2.get(),
                "seed {seed}: the aligned write waits for the RMW"
            );
            bp.breakpoints().unwrap().debug_resume("A").unwrap();
            wait_done(&env, &[&w1, &w2]).await;
            let data = read(&bb, 0, 1024).await.unwrap();
            assert!(data[..512].iter().all(|b| *b == 0x22), "seed {seed}");
            assert!(data[512..1000].iter().all(|b| *b == 0x11));
            assert!(data[1000..].iter().all(|b| *b == 0));
        });
    }
}

#[test]
fn resume_is_fifo_and_remove_break_resumes_everything() {
    run(25, |engine| async move {
        let env = engine.env().clone();
        let bb = stack(&engine, json!({})).await;
        let dbg = engine.node("dbg").unwrap();
        let drv = dbg.breakpoints().expect("blkdebug has breakpoints");
        assert_eq!(
            drv.debug_resume("A").unwrap_err().errno(),
            Some(Errno::ENOENT)
        );
        assert!(
            drv.debug_resume("A")
                .unwrap_err()
                .message()
                .contains("Could not resume 'A'")
        );
        assert_eq!(
            drv.debug_remove_breakpoint("A").unwrap_err().errno(),
            Some(Errno::ENOENT)
        );
        let order: Rc<RefCell<Vec<u8>>> = Rc::default();
        for i in 1..=2u8 {
            drv.debug_breakpoint(DebugEvent::ReadAio, "A").unwrap();
            let (bb, order) = (bb.clone(), order.clone());
            env.spawn(
                "read",
                Box::pin(async move {
                    read(&bb, 0, 512).await.unwrap();
                    order.borrow_mut().push(i);
                }),
            );
            settle(&env).await;
        }
        assert!(drv.debug_is_suspended("A"));
        read(&bb, 0, 512).await.unwrap();
        drv.debug_resume("A").unwrap();
        settle(&env).await;
        assert_eq!(
            *order.borrow(),
            vec![1],
            "the first suspended request goes first"
        );
        assert!(drv.debug_is_suspended("A"));
        // The breakpoints fired (one shot each), so there is none to remove: ENOENT, as in
        // QEMU, but the suspended request is resumed all the same.
        assert_eq!(
            drv.debug_remove_breakpoint("A").unwrap_err().errno(),
            Some(Errno::ENOENT)
        );
        settle(&env).await;
        assert_eq!(*order.borrow(), vec![1, 2]);
        assert!(!drv.debug_is_suspended("A"));
        assert_eq!(
            drv.debug_remove_breakpoint("A").unwrap_err().errno(),
            Some(Errno::ENOENT)
        );
        // remove_break also deletes a breakpoint that has not fired yet.
        drv.debug_breakpoint(DebugEvent::ReadAio, "B").unwrap();
        drv.debug_remove_breakpoint("B").unwrap();
        read(&bb, 0, 512).await.unwrap();
    });
}

#[test]
fn the_new_state_of_a_suspended_event_applies_when_the_request_resumes() {
    run(26, |engine| async move {
        let env = engine.env().clone();
        let bb = stack(
            &engine,
            json!({
            "set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
            "inject-error": [{"event": "read_aio", "state": 2, "iotype": "read"}]}),
        )
        .await;
        let dbg = engine.node("dbg").unwrap();
        dbg.breakpoints()
            .unwrap()
            .debug_breakpoint(DebugEvent::WriteAio, "W")
            .unwrap();
        let w = spawn_write(&env, &bb, 0, 512, 1);
        dbg.breakpoints().unwrap().debug_wait_suspended("W").await;
        read(&bb, 4096, 512).await.unwrap();
        dbg.breakpoints().unwrap().debug_resume("W").unwrap();
        wait_done(&env, &[&w]).await;
        assert!(
            read(&bb, 4096, 512).await.is_err(),
            "state 2 after the write went on"
        );
    });
}
