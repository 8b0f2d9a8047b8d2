//! Dropping an Engine frees its graph (no reference cycle keeps nodes alive).

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use serde_json::json;
use sim::{Sim, SimConfig};

#[test]
fn dropping_the_engine_frees_nodes_and_the_graph_context() {
    let sim = Sim::new(1, SimConfig::default());
    let env = sim.env().as_env();
    let (ctx, node) = sim
        .block_on(async move {
            let engine = Engine::new(env);
            engine
                .blockdev_add(json!({"driver": "raw", "node-name": "r",
                    "file": {"driver": "null-co", "size": 4096}}))
                .await
                .unwrap();
            engine
                .device_add("d", "r", BackendOptions::tool(false))
                .unwrap();
            let ctx = Rc::downgrade(engine.graph());
            let node = Rc::downgrade(&engine.node("r").unwrap());
            drop(engine);
            (ctx, node)
        })
        .unwrap();
    assert!(node.upgrade().is_none(), "nodes are freed");
    assert!(ctx.upgrade().is_none(), "the graph context is freed");
}
