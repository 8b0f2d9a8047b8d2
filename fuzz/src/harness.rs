//! The simulator world of one fuzz input: a seeded `Sim` with files on its virtual disk and an
//! engine on it. Every input gets a fresh world, so inputs never influence each other.

use std::future::Future;
use std::rc::Rc;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use serde_json::json;
use sim::{Sim, SimConfig};

/// Name of the image under test on the virtual disk.
pub const IMG: &str = "fuzz.qcow2";
/// The external data file of images built with one.
pub const DATA_FILE: &str = "fuzz.data";
/// A raw file that backing file names in fuzzed headers may point to.
pub const BACKING_RAW: &str = "backing.raw";
/// Size of `BACKING_RAW`.
pub const BACKING_RAW_LEN: usize = 256 << 10;

/// The byte at `i` of `BACKING_RAW` (a pattern that is never all zero).
pub fn backing_byte(i: usize) -> u8 {
    (i / 512) as u8 ^ 0x5a
}

/// A simulator with `files` on its virtual disk, plus `BACKING_RAW`.
pub fn sim_with(files: &[(&str, &[u8])]) -> Sim {
    let sim = Sim::new(1, SimConfig::default());
    let backing: Vec<u8> = (0..BACKING_RAW_LEN).map(backing_byte).collect();
    sim.fs()
        .create_file(BACKING_RAW, &backing)
        .expect("create backing file");
    for (name, data) in files {
        sim.fs().create_file(name, data).expect("create file");
    }
    sim
}

/// An engine on `sim`.
pub fn engine_of(sim: &Sim) -> Rc<Engine> {
    Rc::new(Engine::new(sim.env().as_env()))
}

/// Run `fut` to completion on `sim`; a simulator failure (deadlock, livelock) is a finding.
pub fn run<F: Future>(sim: &Sim, fut: F) -> F::Output {
    match sim.block_on(fut) {
        Ok(v) => v,
        Err(e) => panic!("simulation failed: {e}"),
    }
}

/// Open `file` as qcow2 node `node` with a tool device `dev` on it.
pub async fn open_qcow2(
    engine: &Engine,
    node: &str,
    dev: &str,
    file: &str,
    read_only: bool,
) -> engine::Result<Rc<BlockBackend>> {
    engine
        .blockdev_add(
            json!({"driver": "qcow2", "node-name": node, "read-only": read_only,
            "discard": "unmap", "file": {"driver": "file", "filename": file}}),
        )
        .await?;
    match engine.device_add(dev, node, BackendOptions::tool(read_only)) {
        Ok(bb) => Ok(bb),
        Err(e) => {
            engine.blockdev_del(node).await?;
            Err(e)
        }
    }
}

/// Remove device `dev` and node `node` again.
pub async fn close(engine: &Engine, node: &str, dev: &str) -> engine::Result<()> {
    engine.device_del(dev).await?;
    engine.blockdev_del(node).await
}

/// A 1 MiB v3 qcow2 image with 512-byte clusters and some data, made once by blk.
pub fn small_qcow2() -> Vec<u8> {
    thread_local! {
        static IMAGE: Vec<u8> = make_small_qcow2();
    }
    IMAGE.with(Clone::clone)
}

fn make_small_qcow2() -> Vec<u8> {
    use engine::drivers::qcow2::{CreateOptions, create};
    use engine::io::{IoBuf, ReqFlags};
    let sim = sim_with(&[(IMG, &[])]);
    let engine = engine_of(&sim);
    run(&sim, async {
        engine
            .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": IMG}))
            .await
            .expect("file node");
        let bb = engine
            .device_add("c", "f", BackendOptions::tool(false))
            .expect("device");
        let opts = CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..CreateOptions::default()
        };
        create(&bb.root().expect("root"), &opts)
            .await
            .expect("create");
        close(&engine, "f", "c").await.expect("close");
        let bb = open_qcow2(&engine, "q", "d", IMG, false)
            .await
            .expect("open");
        let (_, r) = bb
            .write(4096, IoBuf::filled(1024, 0x11), ReqFlags::NONE)
            .await;
        r.expect("write");
        close(&engine, "q", "d").await.expect("close");
    });
    sim.fs().durable_bytes(IMG).expect("image bytes")
}
