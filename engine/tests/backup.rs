//! Backup and copy-before-write through the engine: the target is the source as it was when
//! the job started whatever the guest writes meanwhile, a guest write waits for a copy of its
//! cluster in flight (held at a blkdebug breakpoint), cancel and drain in the middle, each error
//! policy against a failing target, and the sync=bitmap seam. Data is compared byte for byte on
//! in-memory nodes; the point-in-time tests run over several seeds.

use crate::support;

use std::cell::Cell;
use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::bitmap::HBits;
use engine::event::DebugEvent;
use engine::io::{IoBuf, ReqFlags};
use engine::job::backup::{self, BackupBitmap, BackupParams, BackupSync, BitmapHook, BitmapMode};
use engine::job::{JobOptions, JobStatus};
use engine::types::OnError;
use engine::{Engine, Errno};
use serde_json::{Value, json};
use support::{add_mem, guest_writes, mem, qmp_ok, run};

const MB: u64 = 1 << 20;
const CL: u64 = 65536;

fn events(engine: &Engine) -> Vec<String> {
    engine
        .take_events()
        .into_iter()
        .filter(|e| e.name.starts_with("BLOCK_JOB_"))
        .map(|e| format!("{}:{}", &e.name["BLOCK_JOB_".len()..], e.data["action"]))
        .collect()
}

fn fill(name: &str, salt: u8) {
    for (i, b) in mem(name).data.borrow_mut().iter_mut().enumerate() {
        *b = ((i / 4096) as u8).wrapping_add(salt);
    }
}

fn data(name: &str) -> Vec<u8> {
    mem(name).data.borrow().clone()
}

async fn setup(engine: &Engine, size: u64) {
    add_mem(engine, "src", json!({"size": size})).await;
    add_mem(engine, "dst", json!({"size": size})).await;
    fill("src", 1);
    fill("dst", 200);
    engine
        .device_add("drive0", "src", BackendOptions::guest_device(false, false))
        .unwrap();
}

fn backup(extra: Value) -> Value {
    let mut args = json!({"job-id": "b0", "device": "src", "target": "dst", "sync": "full",
                          "filter-node-name": "cbw"});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    json!({"execute": "blockdev-backup", "arguments": args})
}

fn root(engine: &Engine) -> String {
    let bb = engine.backend("drive0").unwrap();
    bb.root_node().unwrap().name().to_string()
}

#[test]
fn full_backup_under_guest_writes_is_the_point_in_time_view() {
    for seed in 0..6 {
        run(seed, |engine| async move {
            setup(&engine, 4 * MB).await;
            let at_start = data("src");
            qmp_ok(&engine, backup(json!({"speed": MB}))).await;
            assert_eq!(root(&engine), "cbw", "the filter sits above the source");
            let job = engine.find_job("b0").unwrap();
            assert_eq!(job.job_type(), "backup");
            let mut model = at_start.clone();
            guest_writes(&engine, &mut model, seed, 40).await;
            job.wait_status(|s| s == JobStatus::Null).await;
            assert!(
                data("dst") == at_start,
                "seed {seed}: target is not the view at start"
            );
            assert!(
                data("src") == model,
                "seed {seed}: the source lost or changed data"
            );
            assert_eq!(root(&engine), "src", "the filter is gone");
            assert!(engine.graph().node("cbw").is_none());
            assert_eq!(events(&engine), vec!["COMPLETED:null"]);
        });
    }
}

#[test]
fn copy_before_write_node_copies_old_data_once_before_the_overwrite() {
    run(1, |engine| async move {
        setup(&engine, MB).await;
        let old = data("src");
        fleece(&engine, json!({})).await;
        let before = data("dst");
        let bb = engine.backend("drive0").unwrap();
        let write = |off: u64, pat: u8| {
            let bb = bb.clone();
            async move {
                let mut buf = IoBuf::new(4096);
                buf.as_mut_slice().fill(pat);
                bb.write(off, buf, ReqFlags::NONE).await.1.unwrap();
            }
        };
        write(CL + 4096, 0xaa).await;
        let c1 = CL as usize..2 * CL as usize;
        assert!(
            data("dst")[c1.clone()] == old[c1.clone()],
            "old cluster 1 copied first"
        );
        assert!(
            data("dst")[..CL as usize] == before[..CL as usize],
            "cluster 0 untouched"
        );
        assert!(
            data("src")[(CL + 4096) as usize..(CL + 8192) as usize]
                .iter()
                .all(|&b| b == 0xaa)
        );
        // A second overwrite of the cluster copies nothing: the target keeps the first copy.
        write(CL, 0xbb).await;
        assert!(data("dst")[c1.clone()] == old[c1], "copied once");
        // Zeroes and discards copy too.
        bb.write_zeroes(3 * CL, CL, ReqFlags::NONE).await.unwrap();
        let c3 = 3 * CL as usize..4 * CL as usize;
        assert!(data("dst")[c3.clone()] == old[c3]);
    });
}

/// Move drive0 onto a copy-before-write node `fleece` over src copying into dst, with `extra`
/// options.
async fn fleece(engine: &Engine, extra: Value) {
    engine.device_del("drive0").await.unwrap();
    let args = json!({"driver": "copy-before-write", "node-name": "fleece", "file": "src",
                      "target": "dst"});
    let add = json!({"execute": "blockdev-add", "arguments": support::merge_args(args, extra)});
    qmp_ok(engine, add).await;
    engine
        .device_add(
            "drive0",
            "fleece",
            BackendOptions::guest_device(false, false),
        )
        .unwrap();
}

/// Spawn a 4 KiB guest write of `pat` at `off`; the flag turns true once it completed.
fn spawn_write(engine: &Rc<Engine>, off: u64, pat: u8) -> Rc<Cell<bool>> {
    let done = Rc::new(Cell::new(false));
    let (bb, d) = (engine.backend("drive0").unwrap(), done.clone());
    engine.env().spawn(
        "guest write",
        Box::pin(async move {
            let mut buf = IoBuf::new(4096);
            buf.as_mut_slice().fill(pat);
            bb.write(off, buf, ReqFlags::NONE).await.1.unwrap();
            d.set(true);
        }),
    );
    done
}

/// A blkdebug node `tdbg` over `dst`, for breakpoints on the target's writes.
async fn blkdebug_over_dst(engine: &Engine) -> Rc<engine::graph::Node> {
    qmp_ok(
        engine,
        json!({"execute": "blockdev-add", "arguments": {"driver": "blkdebug",
            "node-name": "tdbg", "image": "dst"}}),
    )
    .await;
    engine.graph().node("tdbg").unwrap()
}

async fn settle(engine: &Engine) {
    for _ in 0..50 {
        engine::util::yield_now().await;
    }
    let env = engine.env().clone();
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

#[test]
fn a_guest_write_waits_for_the_jobs_copy_of_its_cluster() {
    for seed in 0..6 {
        run(seed, |engine| async move {
            setup(&engine, MB).await;
            let at_start = data("src");
            // The target is a blkdebug node over dst: the job's first copy (cluster 0) stops
            // at its pwritev breakpoint with cluster 0 busy.
            let dbg = blkdebug_over_dst(&engine).await;
            dbg.breakpoints()
                .unwrap()
                .debug_breakpoint(DebugEvent::Pwritev, "C")
                .unwrap();
            qmp_ok(
                &engine,
                backup(json!({"target": "tdbg", "x-perf": {"max-chunk": CL,
                "max-workers": 1}})),
            )
            .await;
            dbg.breakpoints().unwrap().debug_wait_suspended("C").await;
            let w = spawn_write(&engine, 4096, 0xee);
            settle(&engine).await;
            assert!(
                !w.get(),
                "seed {seed}: the guest write overtook the copy of its cluster"
            );
            assert!(
                data("src") == at_start,
                "seed {seed}: the source changed under the copy"
            );
            dbg.breakpoints().unwrap().debug_resume("C").unwrap();
            let job = engine.find_job("b0").unwrap();
            job.wait_status(|s| s == JobStatus::Null).await;
            assert!(w.get());
            assert!(
                data("dst") == at_start,
                "seed {seed}: target is not the view at start"
            );
            assert!(data("src")[4096..8192].iter().all(|&b| b == 0xee));
        });
    }
}

#[test]
fn a_second_guest_write_waits_for_the_copy_the_first_one_started() {
    run(2, |engine| async move {
        setup(&engine, MB).await;
        let at_start = data("src");
        let dbg = blkdebug_over_dst(&engine).await;
        qmp_ok(&engine, backup(json!({"target": "tdbg", "sync": "none"}))).await;
        dbg.breakpoints()
            .unwrap()
            .debug_breakpoint(DebugEvent::Pwritev, "C")
            .unwrap();
        let w1 = spawn_write(&engine, 2 * CL, 0x11);
        dbg.breakpoints().unwrap().debug_wait_suspended("C").await;
        let w2 = spawn_write(&engine, 2 * CL + 8192, 0x22);
        settle(&engine).await;
        assert!(
            !w1.get() && !w2.get(),
            "both writes wait for the copy of cluster 2"
        );
        assert!(data("src") == at_start);
        dbg.breakpoints().unwrap().debug_resume("C").unwrap();
        while !(w1.get() && w2.get()) {
            settle(&engine).await;
        }
        let c2 = 2 * CL as usize..3 * CL as usize;
        assert!(
            data("dst")[c2.clone()] == at_start[c2],
            "the old cluster 2 reached the target"
        );
        let s = data("src");
        assert!(
            s[2 * CL as usize..2 * CL as usize + 4096]
                .iter()
                .all(|&b| b == 0x11)
        );
        assert!(
            s[2 * CL as usize + 8192..2 * CL as usize + 12288]
                .iter()
                .all(|&b| b == 0x22)
        );
        qmp_ok(
            &engine,
            json!({"execute": "job-cancel", "arguments": {"id": "b0"}}),
        )
        .await;
        engine
            .find_job("b0")
            .unwrap()
            .wait_status(|s| s == JobStatus::Null)
            .await;
        assert_eq!(events(&engine), vec!["CANCELLED:null"]);
    });
}

#[test]
fn cancel_in_the_middle_leaves_the_source_alone_and_removes_the_filter() {
    run(4, |engine| async move {
        setup(&engine, 4 * MB).await;
        let mut model = data("src");
        qmp_ok(&engine, backup(json!({"speed": MB}))).await;
        let job = engine.find_job("b0").unwrap();
        let env = engine.env().clone();
        env.sleep_until(env.now_ns() + 1_500_000_000).await;
        let (done, total) = job.progress();
        assert!(done > 0 && done < total, "in the middle: {done}/{total}");
        guest_writes(&engine, &mut model, 4, 10).await;
        qmp_ok(
            &engine,
            json!({"execute": "job-cancel", "arguments": {"id": "b0"}}),
        )
        .await;
        job.wait_status(|s| s == JobStatus::Null).await;
        assert_eq!(events(&engine), vec!["CANCELLED:null"]);
        assert_eq!(root(&engine), "src");
        assert!(
            data("src") == model,
            "the source holds exactly the guest's writes"
        );
        // The target is usable again by a new job.
        qmp_ok(&engine, backup(json!({"job-id": "b1"}))).await;
        engine
            .find_job("b1")
            .unwrap()
            .wait_status(|s| s == JobStatus::Null)
            .await;
        assert!(data("dst") == model);
    });
}

#[test]
fn a_drain_in_the_middle_parks_the_job_and_stops_its_copies() {
    run(5, |engine| async move {
        setup(&engine, 4 * MB).await;
        let at_start = data("src");
        qmp_ok(&engine, backup(json!({"speed": 2 * MB}))).await;
        let job = engine.find_job("b0").unwrap();
        let env = engine.env().clone();
        env.sleep_until(env.now_ns() + 700_000_000).await;
        let src = engine.graph().node("src").unwrap();
        let section = src.drained_begin().await;
        let log_len = mem("dst").log.borrow().len();
        let progress = job.progress().0;
        env.sleep_until(env.now_ns() + 3_000_000_000).await;
        assert_eq!(
            mem("dst").log.borrow().len(),
            log_len,
            "no copy while drained"
        );
        assert_eq!(job.progress().0, progress);
        assert_eq!(job.status(), JobStatus::Paused);
        drop(section);
        job.wait_status(|s| s == JobStatus::Null).await;
        assert!(data("dst") == at_start);
    });
}

/// Back up with the target failing writes (`errno`) under `policy`; the failure is lifted
/// after 1 s of virtual time (the job is resumed if the policy stopped it).
async fn target_error_run(engine: &Rc<Engine>, policy: &str, errno: Errno) -> (Vec<String>, bool) {
    setup(engine, MB).await;
    let at_start = data("src");
    mem("dst").fail_writes.set(Some(errno));
    qmp_ok(engine, backup(json!({"on-target-error": policy}))).await;
    let job = engine.find_job("b0").unwrap();
    let env = engine.env().clone();
    env.sleep_until(env.now_ns() + 1_000_000_000).await;
    mem("dst").fail_writes.set(None);
    if job.is_user_paused() {
        assert_eq!(job.status(), JobStatus::Paused);
        job.user_resume().unwrap();
    }
    job.wait_status(|s| s == JobStatus::Null).await;
    let ok = job.error().is_none();
    if ok {
        assert!(
            data("dst") == at_start,
            "{policy}: a completed backup is complete"
        );
    }
    let mut ev = events(engine);
    ev.dedup();
    (ev, ok)
}

#[test]
fn target_errors_under_each_policy() {
    let cases: [(&str, Errno, &[&str], bool); 5] = [
        (
            "report",
            Errno::EIO,
            &["ERROR:\"report\"", "COMPLETED:null"],
            false,
        ),
        (
            "ignore",
            Errno::EIO,
            &["ERROR:\"ignore\"", "COMPLETED:null"],
            true,
        ),
        (
            "stop",
            Errno::EIO,
            &["ERROR:\"stop\"", "COMPLETED:null"],
            true,
        ),
        (
            "enospc",
            Errno::ENOSPC,
            &["ERROR:\"stop\"", "COMPLETED:null"],
            true,
        ),
        (
            "enospc",
            Errno::EIO,
            &["ERROR:\"report\"", "COMPLETED:null"],
            false,
        ),
    ];
    for (policy, errno, want, ok) in cases {
        let (ev, done) = run(7, move |engine| async move {
            target_error_run(&engine, policy, errno).await
        });
        assert_eq!(ev, want, "{policy}/{errno:?}");
        assert_eq!(done, ok, "{policy}/{errno:?}");
    }
}

#[test]
fn a_failing_cbw_copy_fails_the_guest_write_by_default() {
    run(8, |engine| async move {
        setup(&engine, MB).await;
        let at_start = data("src");
        qmp_ok(&engine, backup(json!({"sync": "none"}))).await;
        mem("dst").fail_writes.set(Some(Errno::EIO));
        let bb = engine.backend("drive0").unwrap();
        let (_, r) = bb.write(0, IoBuf::new(4096), ReqFlags::NONE).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO));
        assert!(data("src") == at_start, "a refused write changes nothing");
        qmp_ok(
            &engine,
            json!({"execute": "job-cancel", "arguments": {"id": "b0"}}),
        )
        .await;
    });
}

#[test]
fn break_snapshot_lets_the_guest_write_through() {
    run(9, |engine| async move {
        setup(&engine, MB).await;
        fleece(&engine, json!({"on-cbw-error": "break-snapshot"})).await;
        mem("dst").fail_writes.set(Some(Errno::EIO));
        let bb = engine.backend("drive0").unwrap();
        let mut buf = IoBuf::new(4096);
        buf.as_mut_slice().fill(0x5a);
        bb.write(0, buf, ReqFlags::NONE).await.1.unwrap();
        assert!(data("src")[..4096].iter().all(|&b| b == 0x5a));
    });
}

struct Hook(Rc<Cell<Option<(bool, u64)>>>);

impl BitmapHook for Hook {
    fn on_success(&self, _mode: BitmapMode) {
        self.0.set(Some((true, 0)));
    }
    fn on_failure(&self, _mode: BitmapMode, uncopied: &HBits, cluster: u64) {
        self.0.set(Some((false, uncopied.count() * cluster)));
    }
}

#[test]
fn the_bitmap_seam_copies_only_the_marked_clusters_and_reports_the_outcome() {
    run(10, |engine| async move {
        setup(&engine, MB).await;
        let at_start = data("src");
        let before = data("dst");
        let outcome = Rc::new(Cell::new(None));
        // 4 KiB granules: 20 lies in cluster 1, 130 in cluster 8.
        let mut bits = HBits::new(256);
        bits.set_range(20, 21);
        bits.set_range(130, 131);
        let params = BackupParams {
            source: engine.graph().node("src").unwrap(),
            target: engine.graph().node("dst").unwrap(),
            sync: BackupSync::Bitmap,
            bitmap: Some(BackupBitmap {
                bits,
                granularity: 4096,
                mode: BitmapMode::OnSuccess,
                hook: Rc::new(Hook(outcome.clone())),
            }),
            on_source_error: OnError::Report,
            on_target_error: OnError::Report,
            filter_node_name: None,
            max_workers: 4,
            max_chunk: 0,
            min_cluster_size: 0,
            compress: false,
        };
        let job = backup::start(engine.jobs(), &JobOptions::new("bm"), params)
            .await
            .unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        assert_eq!(outcome.get(), Some((true, 0)));
        let dst = data("dst");
        for c in 0..(MB / CL) as usize {
            let r = c * CL as usize..(c + 1) * CL as usize;
            let want = if c == 1 || c == 8 {
                &at_start[r.clone()]
            } else {
                &before[r.clone()]
            };
            assert!(dst[r] == *want, "cluster {c}");
        }
    });
}

/// The dirty-bitmap count of bitmap `name` on node `node`, from query-named-block-nodes.
async fn bitmap_count(engine: &Engine, node: &str, name: &str) -> u64 {
    let nodes = qmp_ok(
        engine,
        json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}),
    )
    .await;
    let n = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .unwrap();
    let b = n["dirty-bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap();
    b["count"].as_u64().unwrap()
}

/// The incremental workflow through QMP: a full backup with a named bitmap clears it on success;
/// writes after it dirty it again; an incremental backup copies exactly those clusters onto the
/// previous backup, which then equals the source; a failed incremental gives the bits back.
#[test]
fn incremental_backups_copy_what_the_named_bitmap_marks() {
    run(11, |engine| async move {
        setup(&engine, MB).await;
        qmp_ok(
            &engine,
            json!({"execute": "block-dirty-bitmap-add",
                   "arguments": {"node": "src", "name": "bm", "granularity": CL}}),
        )
        .await;
        // Full backup, bitmap-mode on-success: the bitmap is cleared when it succeeds.
        qmp_ok(
            &engine,
            backup(json!({"bitmap": "bm", "bitmap-mode": "on-success"})),
        )
        .await;
        let job = engine.find_job("b0").unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        assert!(data("dst") == data("src"));
        assert_eq!(bitmap_count(&engine, "src", "bm").await, 0);
        // Guest writes dirty two clusters; the incremental copies exactly those.
        let bb = engine.backend("drive0").unwrap();
        for (off, pat) in [(CL + 100, 0x61u8), (9 * CL, 0x62)] {
            bb.write(off, IoBuf::filled(512, pat), ReqFlags::NONE)
                .await
                .1
                .unwrap();
        }
        assert_eq!(bitmap_count(&engine, "src", "bm").await, 2 * CL);
        fill("dst", 7);
        let stale = data("dst");
        qmp_ok(
            &engine,
            backup(json!({"sync": "incremental", "bitmap": "bm"})),
        )
        .await;
        let job = engine.find_job("b0").unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        let (src, dst) = (data("src"), data("dst"));
        for c in 0..(MB / CL) as usize {
            let r = c * CL as usize..(c + 1) * CL as usize;
            let want = if c == 1 || c == 9 {
                &src[r.clone()]
            } else {
                &stale[r.clone()]
            };
            assert!(dst[r] == *want, "cluster {c}");
        }
        assert_eq!(bitmap_count(&engine, "src", "bm").await, 0);
        // A failing incremental (the target refuses writes) gives the bits back.
        bb.write(3 * CL, IoBuf::filled(512, 0x63), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        mem("dst").fail_writes.set(Some(Errno::EIO));
        qmp_ok(
            &engine,
            backup(json!({"sync": "bitmap", "bitmap": "bm", "bitmap-mode": "on-success"})),
        )
        .await;
        let job = engine.find_job("b0").unwrap();
        job.wait_status(|s| s == JobStatus::Null).await;
        assert!(job.error().is_some(), "the incremental must fail");
        mem("dst").fail_writes.set(None);
        assert_eq!(bitmap_count(&engine, "src", "bm").await, CL);
        // Refusals once a bitmap exists: sync=none, and 'never' without sync=bitmap.
        let r = support::qmp(&engine, backup(json!({"sync": "none", "bitmap": "bm"}))).await;
        assert_eq!(
            r["error"]["desc"],
            "sync mode 'none' does not produce meaningful bitmap outputs"
        );
        let r = support::qmp(
            &engine,
            backup(json!({"bitmap": "bm", "bitmap-mode": "never"})),
        )
        .await;
        assert_eq!(
            r["error"]["desc"],
            "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"
        );
        let r = support::qmp(&engine, backup(json!({"sync": "bitmap", "bitmap": "bm"}))).await;
        assert_eq!(
            r["error"]["desc"],
            "Bitmap sync mode must be given when providing a bitmap"
        );
    });
}
