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

/// QMP `blockdev-reopen`: switches nodes between read-only and read-write, all or none;
/// refuses what it cannot change in QEMU's words, and changes nothing then.
#[test]
fn blockdev_reopen_switches_the_access_mode_and_refuses_other_changes() {
    use sim::{Sim, SimConfig};
    let sim = Sim::new(3, SimConfig::default());
    sim.fs().create_file("r.img", &vec![0u8; 1 << 20]).unwrap();
    let engine = std::rc::Rc::new(engine::Engine::new(sim.env().as_env()));
    sim.block_on(async move {
        let add = json!({"execute": "blockdev-add", "arguments": {"driver": "raw",
            "node-name": "fmt", "read-only": true,
            "file": {"driver": "file", "node-name": "proto", "filename": "r.img"}}});
        assert_eq!(exec(&engine, add).await, json!({"return": {}}));
        let ro = |name: &str| engine.node(name).unwrap().is_read_only();
        assert!(ro("fmt"));
        let reopen = |options: Value| json!({"execute": "blockdev-reopen", "arguments": {"options": options}});
        let r = exec(&engine, reopen(json!([{"node-name": "fmt", "driver": "raw", "file": "proto", "read-only": false}]))).await;
        assert_eq!(r, json!({"return": {}}));
        assert!(!ro("fmt") && !ro("proto"));
        for (options, msg) in [
            (json!([{"driver": "raw"}]), "Parameter 'options[0].file' is missing"),
            (json!([{"node-name": "fmt", "driver": "raw", "read-only": true}]), "Parameter 'options[0].file' is missing"),
            (json!([{"driver": "raw", "file": "proto"}]), "node-name not specified"),
            (json!([{"node-name": "nope", "driver": "raw", "file": "proto"}]), "Failed to find node with node-name='nope'"),
            (json!([{"node-name": "fmt", "driver": "qcow2", "file": "proto", "read-only": true}]), "Cannot change the option 'driver'"),
            (json!([{"node-name": "fmt", "driver": "raw", "file": "other", "read-only": true}]), "Cannot find device='' nor node-name='other'"),
            (json!([{"node-name": "fmt", "driver": "raw", "file": "fmt", "read-only": true}]), "Cannot change the option 'file'"),
            (json!([{"node-name": "fmt", "driver": "raw", "file": "proto", "read-only": true}, {"node-name": "proto", "driver": "file", "filename": "r.img", "cache": {"direct": true}}]), "Cannot change the option 'cache'"),
        ] {
            let r = exec(&engine, reopen(options)).await;
            assert_eq!(error(&r), ("GenericError", msg));
            assert!(!ro("fmt"), "a refused reopen changed the node");
        }
        let both = json!([{"node-name": "fmt", "driver": "raw", "file": "proto", "read-only": true},
            {"node-name": "proto", "driver": "file", "filename": "r.img", "read-only": true}]);
        assert_eq!(exec(&engine, reopen(both)).await, json!({"return": {}}));
        assert!(ro("fmt") && ro("proto"));
        let r = exec(&engine, json!({"execute": "blockdev-reopen", "arguments": {}})).await;
        assert_eq!(error(&r).1, "Parameter 'options' is missing");
    })
    .unwrap();
}
