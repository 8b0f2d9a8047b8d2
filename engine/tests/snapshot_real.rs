//! External snapshots on real files, judged by QEMU's own tools: overlays blk makes with
//! `blockdev-snapshot-sync` (alone and in a transaction with a bitmap) while a guest writes
//! are listed by `qemu-img info --backing-chain` with the chain blk built, every image checks
//! clean, and the top of the chain reads as the guest saw it (`qemu-img compare`).

use crate::qcow2_support;
use crate::support::guest_writes;

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::env::real::RealEnv;
use qcow2_support::{Scratch, have_qemu};
use serde_json::{Value, json};

async fn qmp_ok(engine: &Engine, cmd: Value) -> Value {
    let r = engine::qmp::execute(engine, &cmd).await;
    assert!(r.get("error").is_none(), "{cmd} failed: {r}");
    r["return"].clone()
}

fn snapshot_sync(file: &str, name: &str) -> Value {
    json!({"device": "drive0", "snapshot-file": file, "snapshot-node-name": name,
           "format": "qcow2"})
}

#[test]
fn overlays_blk_creates_are_a_chain_qemu_lists_and_checks_clean() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("snapshot-real");
    let p = |f: &str| dir.path(f).display().to_string();
    let (base, s1, s2, want) = (p("base.qcow2"), p("s1.qcow2"), p("s2.qcow2"), p("want.raw"));
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &base, "16M"]);
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 3M", &base],
    );
    let mut model = vec![0u8; 16 << 20];
    model[..3 << 20].fill(0x11);
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let (b, f1, f2) = (base.clone(), s1.clone(), s2.clone());
    let model = env.block_on(async move {
        let mut model = model;
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
                "node-name": "base", "file": {"driver": "file", "filename": b}}}),
        )
        .await;
        e.device_add("drive0", "base", BackendOptions::guest_device(false, false))
            .unwrap();
        guest_writes(&e, &mut model, 1, 40).await;
        qmp_ok(
            &e,
            json!({"execute": "blockdev-snapshot-sync", "arguments": snapshot_sync(&f1, "s1")}),
        )
        .await;
        guest_writes(&e, &mut model, 2, 40).await;
        qmp_ok(
            &e,
            json!({"execute": "transaction", "arguments": {"actions": [
                {"type": "blockdev-snapshot-sync", "data": snapshot_sync(&f2, "s2")},
                {"type": "block-dirty-bitmap-add", "data": {"node": "s2", "name": "inc"}}]}}),
        )
        .await;
        guest_writes(&e, &mut model, 3, 40).await;
        e.shutdown().await.unwrap();
        model
    });
    env.shutdown();
    let info = dir.run(
        "qemu-img",
        &["info", "--backing-chain", "--output=json", &s2],
    );
    let chain: Value = serde_json::from_str(&info).unwrap();
    let files: Vec<_> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["filename"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(files, [s2.clone(), s1.clone(), base.clone()], "{info}");
    assert_eq!(chain[0]["backing-filename"], json!(s1));
    assert_eq!(chain[1]["backing-filename"], json!(base));
    for f in ["s2.qcow2", "s1.qcow2", "base.qcow2"] {
        dir.check(f, false);
    }
    std::fs::write(&want, &model).unwrap();
    let (code, out) = dir.run_status("qemu-img", &["compare", "-F", "raw", &s2, &want]);
    assert_eq!(
        code, 0,
        "the top of the chain differs from the guest's view: {out}"
    );
}
