//! QMP command dispatch: each input line that is JSON is executed as a QMP command on an
//! engine on the simulator (whose virtual disk holds a small qcow2 image and a raw file). Every
//! command gets a reply object (`return` or `error` with a class and a description), never a
//! panic or a hang; at the end every node can still be removed.
#![no_main]

use blk_fuzz::harness::{engine_of, run, sim_with, small_qcow2};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let img = small_qcow2();
    let sim = sim_with(&[("img.qcow2", &img), ("raw.img", &[0u8; 65536])]);
    let engine = engine_of(&sim);
    run(&sim, async {
        for line in text.lines().take(32) {
            let Ok(cmd) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let reply = engine::qmp::execute(&engine, &cmd).await;
            let ok = match &reply {
                Value::Object(m) if m.contains_key("return") => m.len() == 1,
                Value::Object(m) => m.get("error").is_some_and(|e| {
                    e.get("class").is_some_and(Value::is_string)
                        && e.get("desc")
                            .is_some_and(|d| d.as_str().is_some_and(|s| !s.is_empty()))
                }),
                _ => false,
            };
            assert!(ok, "malformed reply {reply} to {cmd}");
        }
        let _ = engine.shutdown().await;
    });
});
