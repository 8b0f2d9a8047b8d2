//! The QMP front end: command dispatch, argument checking, reply and error shapes.

use crate::support;

use engine::qmp;
use serde_json::{Value, json};
use support::run;

async fn exec(engine: &engine::Engine, cmd: Value) -> Value {
    qmp::execute(engine, &cmd).await
}

fn error(reply: &Value) -> (&str, &str) {
    (
        reply["error"]["class"].as_str().unwrap_or(""),
        reply["error"]["desc"].as_str().unwrap_or(""),
    )
}

#[test]
fn commands_arguments_and_errors_have_qmp_shapes() {
    run(1, |engine| async move {
        let r = exec(&engine, json!({"execute": "qmp_capabilities"})).await;
        assert_eq!(r, json!({"return": {}}));
        let r = exec(&engine, json!({"execute": "frobnicate"})).await;
        assert_eq!(
            error(&r),
            (
                "CommandNotFound",
                "The command frobnicate has not been found"
            )
        );
        let r = exec(&engine, json!({"arguments": {}})).await;
        assert_eq!(error(&r).1, "QMP input lacks member 'execute'");
        let r = exec(&engine, json!(["execute"])).await;
        assert_eq!(error(&r).1, "QMP input must be a JSON object");
        let r = exec(&engine, json!({"execute": "blockdev-del"})).await;
        assert_eq!(
            error(&r),
            ("GenericError", "Parameter 'node-name' is missing")
        );
        let r = exec(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "x", "force": true}}),
        )
        .await;
        assert_eq!(error(&r).1, "Parameter 'force' is unexpected");

        let add = json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0", "size": 1048576}});
        assert_eq!(exec(&engine, add.clone()).await, json!({"return": {}}));
        let r = exec(&engine, add).await;
        assert_eq!(
            error(&r),
            ("GenericError", "Duplicate nodes with node-name='n0'")
        );

        let nodes = exec(&engine, json!({"execute": "query-named-block-nodes"})).await;
        let n = &nodes["return"][0];
        assert_eq!(
            (n["node-name"].as_str(), n["drv"].as_str()),
            (Some("n0"), Some("null-co"))
        );
        assert_eq!(n["image"]["virtual-size"], 1048576);
        let graph = exec(&engine, json!({"execute": "x-debug-query-block-graph"})).await;
        assert_eq!(graph["return"]["nodes"].as_array().unwrap().len(), 1);

        let r = exec(
            &engine,
            json!({"execute": "block_resize", "arguments": {"node-name": "n0", "size": 2097152}}),
        )
        .await;
        assert_eq!(r, json!({"return": {}}));
        assert_eq!(engine.node("n0").unwrap().len(), 2097152);
        let r = exec(
            &engine,
            json!({"execute": "block_resize", "arguments": {"node-name": "nope", "size": 1}}),
        )
        .await;
        assert_eq!(error(&r).0, "DeviceNotFound");
        let r = exec(
            &engine,
            json!({"execute": "block_resize", "arguments": {"node-name": "n0", "size": -1}}),
        )
        .await;
        assert!(error(&r).1.contains("size"), "{r}");

        let r = exec(&engine, json!({"execute": "block-set-write-threshold", "arguments": {"node-name": "n0", "write-threshold": 4096}})).await;
        assert_eq!(r, json!({"return": {}}));
        assert_eq!(engine.node("n0").unwrap().write_threshold(), 4096);

        assert_eq!(
            exec(
                &engine,
                json!({"execute": "blockdev-del", "arguments": {"node-name": "n0"}})
            )
            .await,
            json!({"return": {}})
        );
        let r = exec(
            &engine,
            json!({"execute": "blockdev-del", "arguments": {"node-name": "n0"}}),
        )
        .await;
        assert_eq!(error(&r), ("GenericError", "Cannot find node n0"));
    });
}
