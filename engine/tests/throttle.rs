//! Throttling: throttle-group objects and their validation (QEMU's messages, nothing created on
//! a refusal), the leaky-bucket rates achieved over virtual time through the `throttle` filter,
//! budgets shared by a group's members, drain releasing queued requests, and
//! `block_set_io_throttle` on a device.

use crate::support;

use engine::Engine;
use engine::throttle::ThrottleConfig;
use serde_json::{Value, json};
use support::run;

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
