//! Power loss at every disk event of a block-stream and of an intermediate block-commit (no
//! guest I/O, so the expected guest view is exact): after each crash the images, reopened from
//! their headers alone (no explicit backing options), pass the qcow2 check and the top reads
//! exactly as before the job. This pins the order of the jobs' finishing steps: the copied data
//! is durable before a header stops naming the images it came from, and the header rewrite never
//! leaves a torn name behind.

use crate::support;

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::drivers::qcow2::check_node;
use serde_json::{Value, json};
use sim::{CrashAt, Sim, SimConfig};
use support::chain::{SIZE, add_layer, build, fill, mkimg, mkimg_over, read_dev};

/// Build the chain, then run `job` (a QMP command) to its end; with `at` (an op count from the
/// job's start) the power fails there. Returns (ops the job caused, guest view before, crashed).
fn run_job(seed: u64, job: &Value, at: Option<u64>) -> (Sim, u64, Vec<u8>, bool) {
    let sim = Sim::new(seed, SimConfig::default());
    let engine = Rc::new(Engine::new(sim.env().as_env()));
    let e = engine.clone();
    let view = sim.block_on(async move { build(&e).await }).unwrap();
    let start = sim.fs().disk_counts().ops;
    if let Some(n) = at {
        sim.fs().schedule_crash(CrashAt::Op { nth: start + n });
    }
    let (e, cmd) = (engine.clone(), job.clone());
    let _ = sim.block_on(async move {
        let r = engine::qmp::execute(&e, &cmd).await;
        assert!(r.get("error").is_none(), "{r}");
        if let Some(j) = e.jobs().list().first() {
            j.wait_concluded().await;
        }
    });
    let ops = sim.fs().disk_counts().ops - start;
    let crashed = sim.fs().take_struck().is_some();
    drop(engine);
    (sim, ops, view, crashed)
}

/// Reopen top.qcow2 with its chain from the headers; check every image and read the top.
fn reopen_and_verify(sim: &Sim, view: &[u8], what: &str) {
    let engine = Rc::new(Engine::new(sim.env().as_env()));
    let e = engine.clone();
    let what = what.to_string();
    let view = view.to_vec();
    sim.block_on(async move {
        for f in ["base", "mid", "top"] {
            let n = e
                .blockdev_add(json!({"driver": "qcow2", "node-name": format!("c-{f}"),
                                     "read-only": true, "backing": null,
                                     "file": {"driver": "file", "filename": format!("{f}.qcow2")}}))
                .await
                .unwrap_or_else(|err| panic!("{what}: {f}.qcow2 does not open: {err}"));
            let r = check_node(&n, None).await.unwrap();
            assert!(
                r.corruptions == 0 && r.check_errors == 0,
                "{what}: {f}.qcow2 is corrupt: {:?}",
                r.messages
            );
        }
        let top = e
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "t", "read-only": true,
                                 "file": {"driver": "file", "filename": "top.qcow2"}}),
            )
            .await
            .unwrap_or_else(|err| panic!("{what}: the chain does not open: {err}"));
        e.device_add("d", top.name(), BackendOptions::tool(true))
            .unwrap();
        assert!(
            read_dev(&e, "d").await == view,
            "{what}: the guest view changed"
        );
    })
    .unwrap();
}

fn every_crash_point(name: &str, job: Value) {
    // Each seed resolves the unflushed writes at the crash differently (kept, lost, torn).
    for seed in 0..4 {
        let (_, ops, _, crashed) = run_job(seed, &job, None);
        assert!(
            !crashed && ops > 10,
            "{name}: the job caused only {ops} disk operations"
        );
        for n in 1..=ops {
            let (sim, _, view, crashed) = run_job(seed, &job, Some(n));
            assert!(
                crashed,
                "{name}: the crash at op {n} of {ops} did not strike"
            );
            reopen_and_verify(
                &sim,
                &view,
                &format!("{name} crash at op {n}/{ops} (seed {seed})"),
            );
        }
    }
}

#[test]
fn stream_survives_a_crash_at_every_disk_operation() {
    every_crash_point(
        "stream",
        json!({"execute": "block-stream",
               "arguments": {"device": "drive0", "job-id": "s0", "base-node": "base"}}),
    );
}

#[test]
fn commit_survives_a_crash_at_every_disk_operation() {
    every_crash_point(
        "commit",
        json!({"execute": "block-commit",
               "arguments": {"device": "drive0", "job-id": "c0", "top-node": "mid"}}),
    );
}

/// Swarm seeds 988 and 1119: an intermediate commit into a raw base, then a power loss right
/// after the job ended. A raw node flushes only through its file edge, and only while it
/// writes the file: the job must flush the base before it gives up writing it, or the flush
/// stops at the raw layer and the committed data is lost with the file's volatile cache,
/// while the overlay's header already names the base.
#[test]
fn commit_into_a_raw_base_is_durable_when_the_job_ends() {
    for seed in 0..4 {
        let sim = Sim::new(seed, SimConfig::default());
        let engine = Rc::new(Engine::new(sim.env().as_env()));
        let e = engine.clone();
        sim.block_on(async move {
            let opts = engine::env::OpenOptions {
                write: true,
                create: true,
                ..Default::default()
            };
            let f = e.env().fs().open("base.img", opts).unwrap();
            f.set_len(SIZE).await.unwrap();
            drop(f);
            mkimg_over(&e, "mid.qcow2", Some(("base.img", "raw"))).await;
            mkimg(&e, "top.qcow2", Some("mid.qcow2")).await;
            e.blockdev_add(json!({"driver": "raw", "node-name": "base",
                                  "file": {"driver": "file", "filename": "base.img"}}))
                .await
                .unwrap();
            add_layer(&e, "mid", Some("base")).await;
            fill(&e, "mid", 0, 2 << 20, 0x22).await;
            add_layer(&e, "top", Some("mid")).await;
            e.device_add("drive0", "top", BackendOptions::guest_device(false, false))
                .unwrap();
            let cmd = json!({"execute": "block-commit",
                             "arguments": {"device": "drive0", "job-id": "c0", "top-node": "mid"}});
            let r = engine::qmp::execute(&e, &cmd).await;
            assert!(r.get("error").is_none(), "{r}");
            e.jobs().list()[0].wait_concluded().await;
        })
        .unwrap();
        sim.fs().power_loss();
        drop(engine);
        let engine = Rc::new(Engine::new(sim.env().as_env()));
        let e = engine.clone();
        sim.block_on(async move {
            let top = e
                .blockdev_add(
                    json!({"driver": "qcow2", "node-name": "t", "read-only": true,
                                     "file": {"driver": "file", "filename": "top.qcow2"}}),
                )
                .await
                .unwrap();
            e.device_add("d", top.name(), BackendOptions::tool(true))
                .unwrap();
            let view = read_dev(&e, "d").await;
            let lost = view[..2 << 20].iter().position(|&b| b != 0x22);
            assert!(
                lost.is_none(),
                "seed {seed}: committed data lost at offset {lost:?} after the power loss"
            );
        })
        .unwrap();
    }
}
