//! Throttling: throttle-group objects and their validation (QEMU's messages, nothing created on
//! a refusal), the leaky-bucket rates achieved over virtual time through the `throttle` filter,
//! budgets shared by a group's members, drain releasing queued requests, and
//! `block_set_io_throttle` on a device.

use crate::support;

use std::cell::Cell;
use std::rc::Rc;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::io::{IoBuf, ReqFlags};
use engine::throttle::ThrottleConfig;
use serde_json::{Value, json};
use support::run;

const SEC: u64 = 1_000_000_000;

/// A throttle node `name` over its own null-co node, with device `dev-NAME` on it.
async fn throttled_device(engine: &Engine, name: &str, group: &str) -> Rc<BlockBackend> {
    engine
        .blockdev_add(json!({"driver": "throttle", "node-name": name, "throttle-group": group,
            "file": {"driver": "null-co", "node-name": format!("{name}-null"), "size": 1u64 << 40}}))
        .await
        .unwrap();
    engine
        .device_add(&format!("dev-{name}"), name, BackendOptions::tool(false))
        .unwrap()
}

/// Run `workers` loops of `len`-byte requests (writes if `write`) on `bb` until `secs` of
/// virtual time have passed; the bytes and requests completed within that time.
async fn load(
    engine: &Engine,
    bb: &Rc<BlockBackend>,
    workers: u32,
    len: usize,
    write: bool,
    secs: u64,
) -> (u64, u64) {
    let env = engine.env().clone();
    let end = env.now_ns() + secs * SEC;
    let done = Rc::new((Cell::new(0u64), Cell::new(0u64)));
    for w in 0..workers {
        let (env2, bb, done) = (env.clone(), bb.clone(), done.clone());
        let fut = async move {
            let mut offset = u64::from(w) << 30;
            while env2.now_ns() < end {
                let buf = IoBuf::new(len);
                let (_, r) = if write {
                    bb.write(offset, buf, ReqFlags::NONE).await
                } else {
                    bb.read(offset, buf).await
                };
                r.unwrap();
                offset += len as u64;
                if env2.now_ns() <= end {
                    done.0.set(done.0.get() + len as u64);
                    done.1.set(done.1.get() + 1);
                }
            }
        };
        env.spawn("load", Box::pin(fut));
    }
    env.sleep_until(end + 30 * SEC).await;
    (done.0.get(), done.1.get())
}

/// `object-add` of a throttle group `t` with `props`; the error message on a refusal.
async fn add_group(engine: &Engine, id: &str, props: Value) -> Result<(), String> {
    let mut args = json!({"qom-type": "throttle-group", "id": id});
    for (k, v) in props.as_object().unwrap() {
        args[k] = v.clone();
    }
    engine
        .object_add(args)
        .await
        .map_err(|e| e.message().to_string())
}

#[test]
fn throttle_group_validation_matches_qemu() {
    run(1, |engine| async move {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"x-bps-total": "-1"}),
                "Property values cannot be negative",
            ),
            (
                json!({"limits": {"bps-total": -1}}),
                "bps/iops/max values must be within [0, 1000000000000000]",
            ),
            (
                json!({"x-bps-total": "1000000000000001"}),
                "bps/iops/max values must be within [0, 1000000000000000]",
            ),
            (
                json!({"x-bps-total": "10", "x-bps-read": "5"}),
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ),
            (
                json!({"limits": {"iops-total-max": 10, "iops-write-max": 20}, "x-iops-total": "1"}),
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ),
            (
                json!({"x-bps-total-max": "10"}),
                "bps_max/iops_max require corresponding bps/iops values",
            ),
            (
                json!({"x-bps-total": "10", "x-bps-total-max-length": "5"}),
                "burst length set without burst rate",
            ),
            (
                json!({"x-bps-total": "10", "x-bps-total-max": "5"}),
                "bps_max/iops_max cannot be lower than bps/iops",
            ),
            (
                json!({"x-bps-total-max-length": "0"}),
                "the burst length cannot be 0",
            ),
            (
                json!({"x-bps-total": "5", "x-bps-total-max": "1", "x-bps-total-max-length": "0"}),
                "the burst length cannot be 0",
            ),
            (
                json!({"x-iops-size": "5"}),
                "iops size requires an iops value to be set",
            ),
            (
                json!({"x-bps-total": "10", "x-bps-total-max": "1000",
                       "x-bps-total-max-length": "1000000000000000"}),
                "x-bps-total-max-length value must be in therange [0, 4294967295]",
            ),
            (
                json!({"x-bps-total": "10", "x-bps-total-max": "1000000000000000",
                       "x-bps-total-max-length": "2"}),
                "burst length too high for this burst rate",
            ),
            (
                json!({"x-bps-read-max": "3", "x-bps-total": "5", "x-bps-total-max-length": "3"}),
                "burst length set without burst rate",
            ),
            (
                json!({"x-bps-total": "abc"}),
                "Parameter 'x-bps-total' expects integer",
            ),
            (
                json!({"limits": {"bps-total": "abc"}}),
                "Parameter 'limits.bps-total' expects integer",
            ),
            (json!({"x-bogus": "1"}), "Parameter 'x-bogus' is unexpected"),
        ];
        for (props, msg) in cases {
            assert_eq!(
                add_group(&engine, "t0", props.clone()).await,
                Err(msg.to_string()),
                "{props}"
            );
            // Nothing was created by the refusal.
            assert!(engine.objects().ids().is_empty(), "{props}");
        }
        add_group(
            &engine,
            "t0",
            json!({"limits": {"bps-total": 100, "iops-read": 5}, "x-iops-size": "4096"}),
        )
        .await
        .unwrap();
        let cfg = engine.objects().throttle_group("t0").unwrap().config();
        let mut want = ThrottleConfig::default();
        want.buckets[0].avg = 100;
        want.buckets[4].avg = 5;
        want.iops_size = 4096;
        assert_eq!(cfg, want);
        assert_eq!(
            engine
                .objects()
                .throttle_group("t1")
                .err()
                .unwrap()
                .message(),
            "Throttle group 't1' not found"
        );
    });
}

#[test]
fn achieved_bps_and_iops_equal_the_limits() {
    run(2, |engine| async move {
        // 1 MiB/s over 20 s with 4 KiB requests from 4 workers: the rate plus at most the
        // bucket's tenth of a second and one request per worker.
        add_group(&engine, "t0", json!({"x-bps-total": "1048576"}))
            .await
            .unwrap();
        let bb = throttled_device(&engine, "th", "t0").await;
        let (bytes, _) = load(&engine, &bb, 4, 4096, false, 20).await;
        let want = 20 * 1048576;
        assert!(
            bytes >= want && bytes <= want + 1048576 / 10 + 4 * 4096,
            "{bytes}"
        );

        // 50 iops, counted per 64 KiB with iops-size: 128 KiB requests are two I/Os each.
        add_group(
            &engine,
            "t1",
            json!({"x-iops-write": "50", "x-iops-size": "65536"}),
        )
        .await
        .unwrap();
        let bb = throttled_device(&engine, "th1", "t1").await;
        let (_, reqs) = load(&engine, &bb, 2, 131072, true, 20).await;
        assert!((500..=500 + 1 + 2).contains(&reqs), "{reqs}");
        // Reads are not limited by a write bucket: they pass at once while writes would wait.
        // Four writes of two I/Os each overfill the 5-I/O bucket (the last one waited).
        let env = engine.env().clone();
        for _ in 0..4 {
            let (_, r) = bb.write(0, IoBuf::new(131072), ReqFlags::NONE).await;
            r.unwrap();
        }
        let now = env.now_ns();
        for i in 0..100 {
            let (_, r) = bb.read(i * 131072, IoBuf::new(131072)).await;
            r.unwrap();
        }
        assert_eq!(env.now_ns(), now);
        let (_, r) = bb.write(0, IoBuf::new(131072), ReqFlags::NONE).await;
        r.unwrap();
        assert!(env.now_ns() > now);
    });
}

#[test]
fn bursts_run_at_max_for_max_length_then_fall_to_the_average() {
    run(3, |engine| async move {
        // 100 KiB/s average, bursts of 1 MiB/s for up to 3 s: a bucket of 3 MiB.
        let avg = 100 * 1024;
        add_group(
            &engine,
            "t0",
            json!({"x-bps-read": avg.to_string(), "x-bps-read-max": (10 * avg).to_string(),
                   "x-bps-read-max-length": "3"}),
        )
        .await
        .unwrap();
        let bb = throttled_device(&engine, "th", "t0").await;
        // The first second runs at the burst rate (within a tenth of a second's slack).
        let (first, _) = load(&engine, &bb, 2, 4096, false, 1).await;
        assert!(
            first >= 10 * avg - 2 * 4096 && first <= 10 * avg + avg + 2 * 4096,
            "{first}"
        );
        // 30 s idle refill the buckets; then 60 s: the average plus one bucket at most.
        let env = engine.env().clone();
        env.sleep_until(env.now_ns() + 60 * SEC).await;
        let (total, _) = load(&engine, &bb, 2, 4096, false, 60).await;
        let (lo, hi) = (60 * avg, 60 * avg + 3 * 10 * avg + 2 * 4096);
        assert!(total >= lo && total <= hi, "{total} not in {lo}..={hi}");
        // And the burst really happened: more than the average alone allows.
        assert!(total > 60 * avg + 2 * 10 * avg, "{total}");
    });
}

#[test]
fn group_members_share_the_budget_in_turn() {
    run(4, |engine| async move {
        add_group(&engine, "t0", json!({"limits": {"iops-total": 20}}))
            .await
            .unwrap();
        let a = throttled_device(&engine, "a", "t0").await;
        let b = throttled_device(&engine, "b", "t0").await;
        let env = engine.env().clone();
        let b2 = b.clone();
        let engine2 = engine.clone();
        let other = Rc::new(Cell::new(0));
        let other2 = other.clone();
        env.spawn(
            "b-load",
            Box::pin(async move { other2.set(load(&engine2, &b2, 2, 512, false, 10).await.1) }),
        );
        let (_, mine) = load(&engine, &a, 2, 512, false, 10).await;
        env.sleep_until(env.now_ns() + SEC).await;
        let theirs = other.get();
        // 200 I/Os in 10 s for the group, in turns: each member gets half (a few off at most:
        // the bucket's slack goes to whoever asks first).
        assert!((200..=204).contains(&(mine + theirs)), "{mine} + {theirs}");
        assert!(mine.abs_diff(theirs) <= 3, "{mine} vs {theirs}");
    });
}

#[test]
fn drain_releases_queued_requests_and_the_group_stays_while_used() {
    run(5, |engine| async move {
        // One byte per second: without the release on drain, these would wait for days.
        add_group(&engine, "t0", json!({"x-bps-total": "1"}))
            .await
            .unwrap();
        let bb = throttled_device(&engine, "th", "t0").await;
        let env = engine.env().clone();
        let done = Rc::new(Cell::new(0));
        for i in 0..4u64 {
            let (bb, done) = (bb.clone(), done.clone());
            env.spawn(
                "req",
                Box::pin(async move {
                    let (_, r) = bb.read(i * 65536, IoBuf::new(65536)).await;
                    r.unwrap();
                    done.set(done.get() + 1);
                }),
            );
        }
        env.sleep_until(env.now_ns() + SEC).await;
        assert_eq!(done.get(), 1, "the first passes, the rest wait");
        let start = env.now_ns();
        let node = engine.graph().node("th").unwrap();
        let section = node.drained_begin().await;
        assert_eq!(done.get(), 4);
        assert!(env.now_ns() - start < SEC);
        drop(section);

        assert_eq!(
            engine.objects().remove("t0").unwrap_err().message(),
            "object 't0' is in use, can not be deleted"
        );
        assert_eq!(
            engine
                .blockdev_add(json!({"driver": "throttle", "node-name": "x",
                    "throttle-group": "nope", "file": "th-null"}))
                .await
                .unwrap_err()
                .message(),
            "Throttle group 'nope' does not exist"
        );
        assert_eq!(
            engine
                .blockdev_add(json!({"driver": "throttle", "node-name": "x", "file": "th-null"}))
                .await
                .unwrap_err()
                .message(),
            "Parameter 'throttle-group' is missing"
        );
        engine.device_del("dev-th").await.unwrap();
        engine.blockdev_del("th").await.unwrap();
        engine.objects().remove("t0").unwrap();
    });
}

/// Run a QMP command; its `return` or its error's `desc`.
async fn qmp(engine: &Engine, cmd: Value) -> Result<Value, String> {
    let r = engine::qmp::execute(engine, &cmd).await;
    match r.get("error") {
        Some(e) => Err(e["desc"].as_str().unwrap().to_string()),
        None => Ok(r["return"].clone()),
    }
}

fn set_throttle(device: &str, extra: Value) -> Value {
    let mut args = json!({"device": device, "bps": 0, "bps_rd": 0, "bps_wr": 0,
        "iops": 0, "iops_rd": 0, "iops_wr": 0});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    json!({"execute": "block_set_io_throttle", "arguments": args})
}

fn inserted(q: &Value, device: &str) -> Value {
    q.as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .unwrap()["inserted"]
        .clone()
}

#[test]
fn block_set_io_throttle_limits_a_device_and_query_block_shows_it() {
    run(6, |engine| async move {
        engine
            .blockdev_add(json!({"driver": "null-co", "node-name": "n", "size": 1u64 << 40}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d0", "n", BackendOptions::tool(false))
            .unwrap();
        let refusals = [
            (
                json!({"bps": -1}),
                "bps/iops/max values must be within [0, 1000000000000000]",
            ),
            (
                json!({"bps": 10, "bps_rd": 1}),
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ),
            (
                json!({"iops_max": 5}),
                "bps_max/iops_max require corresponding bps/iops values",
            ),
            (
                json!({"iops": 5, "iops_max_length": 3}),
                "burst length set without burst rate",
            ),
            (
                json!({"bps": "x"}),
                "Invalid parameter type for 'bps', expected: integer",
            ),
        ];
        for (extra, msg) in refusals {
            assert_eq!(
                qmp(&engine, set_throttle("d0", extra.clone())).await,
                Err(msg.into())
            );
            // Nothing changed: the device is not throttled.
            let q = qmp(&engine, json!({"execute": "query-block"}))
                .await
                .unwrap();
            assert!(inserted(&q, "d0").get("bps").is_none(), "{extra}");
        }
        assert_eq!(
            qmp(&engine, set_throttle("nope", json!({"bps": 1}))).await,
            Err("Device 'nope' not found".into())
        );
        let mut missing = set_throttle("d0", json!({}));
        missing["arguments"]
            .as_object_mut()
            .unwrap()
            .remove("iops_wr");
        assert_eq!(
            qmp(&engine, missing).await,
            Err("Parameter 'iops_wr' is missing".into())
        );

        qmp(
            &engine,
            set_throttle(
                "d0",
                json!({"bps_rd": 65536, "bps_rd_max": 131072,
                "bps_rd_max_length": 4, "iops": 100, "iops_size": 8192}),
            ),
        )
        .await
        .unwrap();
        let q = qmp(&engine, json!({"execute": "query-block"}))
            .await
            .unwrap();
        let ins = inserted(&q, "d0");
        let keys: Vec<&str> = ins
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let at = keys.iter().position(|k| *k == "detect_zeroes").unwrap();
        assert_eq!(
            keys[at + 1..at + 12],
            [
                "bps",
                "bps_rd",
                "bps_wr",
                "iops",
                "iops_rd",
                "iops_wr",
                "bps_rd_max",
                "bps_rd_max_length",
                "iops_size",
                "group",
                "write_threshold"
            ]
        );
        assert_eq!(
            (
                &ins["bps_rd"],
                &ins["bps_rd_max"],
                &ins["bps_rd_max_length"],
                &ins["iops"]
            ),
            (&json!(65536), &json!(131072), &json!(4), &json!(100))
        );
        assert_eq!(
            (&ins["iops_size"], &ins["group"]),
            (&json!(8192), &json!("d0"))
        );

        // 64 KiB/s of reads over 20 s (plus the 4 s burst at 128 KiB/s at most).
        let (bytes, _) = load(&engine, &bb, 2, 4096, false, 20).await;
        let (lo, hi) = (20 * 65536, 20 * 65536 + 4 * 131072 + 2 * 4096);
        assert!(bytes >= lo && bytes <= hi, "{bytes} not in {lo}..={hi}");

        // Off again: all zero.
        qmp(&engine, set_throttle("d0", json!({}))).await.unwrap();
        let q = qmp(&engine, json!({"execute": "query-block"}))
            .await
            .unwrap();
        assert!(inserted(&q, "d0").get("bps").is_none());
        let env = engine.env().clone();
        let now = env.now_ns();
        for i in 0..1000 {
            let (_, r) = bb.read(i * 65536, IoBuf::new(65536)).await;
            r.unwrap();
        }
        assert_eq!(env.now_ns(), now);
    });
}

#[test]
fn devices_in_one_named_group_share_its_limits() {
    run(7, |engine| async move {
        for n in ["a", "b"] {
            engine
                .blockdev_add(json!({"driver": "null-co", "node-name": n, "size": 1u64 << 40}))
                .await
                .unwrap();
        }
        let a = engine
            .device_add("da", "a", BackendOptions::tool(false))
            .unwrap();
        let b = engine
            .device_add("db", "b", BackendOptions::tool(false))
            .unwrap();
        for d in ["da", "db"] {
            qmp(&engine, set_throttle(d, json!({"iops": 10, "group": "g"})))
                .await
                .unwrap();
        }
        let env = engine.env().clone();
        let (engine2, b2) = (engine.clone(), b.clone());
        let other = Rc::new(Cell::new(0));
        let other2 = other.clone();
        env.spawn(
            "b-load",
            Box::pin(async move { other2.set(load(&engine2, &b2, 1, 512, false, 20).await.1) }),
        );
        let (_, mine) = load(&engine, &a, 1, 512, false, 20).await;
        env.sleep_until(env.now_ns() + SEC).await;
        let total = mine + other.get();
        assert!((200..=203).contains(&total), "{mine} + {}", other.get());
        // The group is a device group, not an object.
        assert!(engine.objects().ids().is_empty());
    });
}

/// `qom-get` and `qom-set` of a throttle group, as qemu-storage-daemon answers them: the whole
/// `limits` (every member, unset ones 0, lengths 1), one flat `x-` limit, `type`; `qom-set` of
/// `limits` replaces the members given and keeps the rest, validated, and the group runs at the
/// new rate; QEMU's refusals.
#[test]
fn qom_get_and_set_read_and_change_a_groups_limits() {
    run(5, |engine| async move {
        add_group(
            &engine,
            "t0",
            json!({"x-bps-total": "1000", "x-iops-read": "5"}),
        )
        .await
        .unwrap();
        let get = |path: &str, property: &str| json!({"execute": "qom-get", "arguments": {"path": path, "property": property}});
        let limits = qmp(&engine, get("t0", "limits")).await.unwrap();
        let obj = limits.as_object().unwrap();
        assert_eq!(obj.len(), 19, "{limits}");
        assert_eq!(
            (
                &limits["bps-total"],
                &limits["iops-read"],
                &limits["iops-write-max-length"]
            ),
            (&json!(1000), &json!(5), &json!(1))
        );
        assert_eq!(limits["bps-read-max"], 0);
        assert_eq!(
            qmp(&engine, get("/objects/t0", "x-bps-total")).await,
            Ok(json!(1000))
        );
        assert_eq!(
            qmp(&engine, get("t0", "type")).await,
            Ok(json!("throttle-group"))
        );
        let set = |value: Value| {
            json!({"execute": "qom-set",
                "arguments": {"path": "t0", "property": "limits", "value": value}})
        };
        // With iops-read still 5, a total is refused (checked against the merged limits).
        let conflict =
            "bps/iops/max total values and read/write values cannot be used at the same time";
        assert_eq!(
            qmp(&engine, set(json!({"iops-total": 7}))).await,
            Err(conflict.to_string())
        );
        let both = json!({"iops-total": 7, "iops-read": 0});
        assert_eq!(qmp(&engine, set(both)).await, Ok(json!({})));
        let limits = qmp(&engine, get("t0", "limits")).await.unwrap();
        assert_eq!(
            (&limits["bps-total"], &limits["iops-total"]),
            (&json!(1000), &json!(7))
        );
        for (cmd, msg) in [
            (get("t9", "limits"), "Device 't9' not found"),
            (
                get("t0", "nope"),
                "Property 'throttle-group.nope' not found",
            ),
            (
                set(json!({"bps-total": 7, "bps-read": 3})),
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ),
            (
                set(json!({"bps-total": -1})),
                "bps/iops/max values must be within [0, 1000000000000000]",
            ),
            (
                set(json!({"nope": 1})),
                "Parameter 'limits.nope' is unexpected",
            ),
            (
                set(json!(5)),
                "Invalid parameter type for 'limits', expected: object",
            ),
            (
                json!({"execute": "qom-set", "arguments":
                    {"path": "t0", "property": "x-bps-total", "value": 9}}),
                "Property cannot be set after initialization",
            ),
            (
                json!({"execute": "qom-set", "arguments":
                    {"path": "t0", "property": "type", "value": "x"}}),
                "Property 'throttle-group.type' is not writable",
            ),
        ] {
            assert_eq!(
                qmp(&engine, cmd.clone()).await,
                Err(msg.to_string()),
                "{cmd}"
            );
        }
        // A refused set changed nothing; an accepted one is the group's new rate.
        let limits = qmp(&engine, get("t0", "limits")).await.unwrap();
        assert_eq!(
            (&limits["bps-total"], &limits["iops-total"]),
            (&json!(1000), &json!(7))
        );
        qmp(
            &engine,
            set(json!({"bps-total": 1048576, "iops-total": 0, "iops-read": 0})),
        )
        .await
        .unwrap();
        let bb = throttled_device(&engine, "th", "t0").await;
        let (bytes, _) = load(&engine, &bb, 4, 4096, false, 10).await;
        let want = 10 * 1048576;
        assert!(
            bytes >= want && bytes <= want + 1048576 / 10 + 4 * 4096,
            "{bytes}"
        );
    });
}
