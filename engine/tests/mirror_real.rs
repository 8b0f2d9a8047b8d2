//! Mirror, active commit and backup on real files (the io_uring / thread-pool env), judged by
//! QEMU's own tools: images made by qemu-img/qemu-io are mirrored by blk while a guest writes,
//! the pivot happens, and `qemu-img check` / `qemu-img compare` must find the target clean and
//! equal to what the guest sees; a backup under guest writes equals the image as it was at the
//! start and the backup qemu-storage-daemon makes of it.

use crate::qcow2_support;
use crate::support::guest_writes;

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::env::real::RealEnv;
use qcow2_support::{Scratch, have_qemu};
use serde_json::{Value, json};

const MB: u64 = 1 << 20;

async fn qmp_ok(engine: &Engine, cmd: Value) -> Value {
    let r = engine::qmp::execute(engine, &cmd).await;
    assert!(r.get("error").is_none(), "{cmd} failed: {r}");
    r["return"].clone()
}

/// Wait (on the real clock, yielding to the engine) until `name` has been emitted.
async fn wait_event(engine: &Engine, seen: &mut Vec<String>, name: &str) {
    let env = engine.env();
    let deadline = env.now_ns() + 60_000_000_000;
    while !seen.iter().any(|e| e == name) {
        assert!(
            env.now_ns() < deadline,
            "no {name} within 60 s; saw {seen:?}"
        );
        env.sleep_until(env.now_ns() + 1_000_000).await;
        seen.extend(engine.take_events().into_iter().map(|e| e.name.to_string()));
    }
}

fn qcow2(node: &str, path: &str) -> Value {
    json!({"driver": "qcow2", "node-name": node,
           "file": {"driver": "file", "filename": path}})
}

#[test]
fn mirror_on_real_files_pivots_to_a_target_qemu_finds_clean_and_equal() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("mirror-real");
    let src = dir.path("src.qcow2").display().to_string();
    let dst = dir.path("dst.qcow2").display().to_string();
    let want = dir.path("want.raw").display().to_string();
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &src, "32M"]);
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &dst, "32M"]);
    // QEMU writes the starting data (so blk mirrors clusters it did not allocate itself).
    for (pat, off, len) in [(0x11, "0", "1M"), (0x22, "5M", "3M"), (0x33, "20M", "64k")] {
        dir.run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pat} {off} {len}"),
                &src,
            ],
        );
    }
    let mut model = vec![0u8; 32 * MB as usize];
    model[..MB as usize].fill(0x11);
    model[5 * MB as usize..8 * MB as usize].fill(0x22);
    model[20 * MB as usize..20 * MB as usize + 65536].fill(0x33);

    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let (src2, dst2) = (src.clone(), dst.clone());
    let model = env.block_on(async move {
        let mut model = model;
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": qcow2("src", &src2)}),
        )
        .await;
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": qcow2("dst", &dst2)}),
        )
        .await;
        e.device_add("drive0", "src", BackendOptions::guest_device(false, false))
            .unwrap();
        qmp_ok(
            &e,
            json!({"execute": "blockdev-mirror", "arguments": {
                "job-id": "m0", "device": "src", "target": "dst", "sync": "full"}}),
        )
        .await;
        // The guest keeps writing while the bulk copy runs.
        guest_writes(&e, &mut model, 7, 200).await;
        let mut seen = Vec::new();
        wait_event(&e, &mut seen, "BLOCK_JOB_READY").await;
        guest_writes(&e, &mut model, 8, 100).await;
        qmp_ok(
            &e,
            json!({"execute": "job-complete", "arguments": {"id": "m0"}}),
        )
        .await;
        wait_event(&e, &mut seen, "BLOCK_JOB_COMPLETED").await;
        // After the pivot the device writes to the target only.
        let root = e.backend("drive0").unwrap().root_node().unwrap();
        assert_eq!(root.name(), "dst", "the device now uses the target");
        guest_writes(&e, &mut model, 9, 50).await;
        e.shutdown().await.unwrap();
        model
    });
    env.shutdown();
    std::fs::write(&want, &model).unwrap();
    dir.check("dst.qcow2", false);
    dir.check("src.qcow2", false);
    let (code, out) = dir.run_status(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", &dst, &want],
    );
    assert_eq!(code, 0, "target differs from the guest's view: {out}");
}

#[test]
fn active_commit_on_real_files_leaves_a_base_qemu_reads_as_the_guest_saw_it() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("active-commit-real");
    let base = dir.path("base.qcow2").display().to_string();
    let top = dir.path("top.qcow2").display().to_string();
    let want = dir.path("want.raw").display().to_string();
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &base, "16M"]);
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x44 0 4M", &base],
    );
    dir.run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &top,
        ],
    );
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x55 2M 4M", &top],
    );
    let mut model = vec![0u8; 16 * MB as usize];
    model[..4 * MB as usize].fill(0x44);
    model[2 * MB as usize..6 * MB as usize].fill(0x55);

    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let (base2, top2) = (base.clone(), top.clone());
    let model = env.block_on(async move {
        let mut model = model;
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": qcow2("base", &base2)}),
        )
        .await;
        let mut t = qcow2("top", &top2);
        t["backing"] = json!("base");
        qmp_ok(&e, json!({"execute": "blockdev-add", "arguments": t})).await;
        e.device_add("drive0", "top", BackendOptions::guest_device(false, false))
            .unwrap();
        qmp_ok(
            &e,
            json!({"execute": "block-commit", "arguments": {"job-id": "c0", "device": "top"}}),
        )
        .await;
        guest_writes(&e, &mut model, 3, 100).await;
        let mut seen = Vec::new();
        wait_event(&e, &mut seen, "BLOCK_JOB_READY").await;
        qmp_ok(
            &e,
            json!({"execute": "job-complete", "arguments": {"id": "c0"}}),
        )
        .await;
        wait_event(&e, &mut seen, "BLOCK_JOB_COMPLETED").await;
        let root = e.backend("drive0").unwrap().root_node().unwrap();
        assert_eq!(root.name(), "base", "the device now uses the base");
        guest_writes(&e, &mut model, 4, 30).await;
        e.shutdown().await.unwrap();
        model
    });
    env.shutdown();
    std::fs::write(&want, &model).unwrap();
    dir.check("base.qcow2", false);
    let (code, out) = dir.run_status(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", &base, &want],
    );
    assert_eq!(code, 0, "base differs from the guest's view: {out}");
}

/// A tiny QMP client for qemu-storage-daemon: one command, its reply (events skipped).
struct Qsd {
    child: std::process::Child,
    out: std::io::BufReader<std::os::unix::net::UnixStream>,
    sock: std::os::unix::net::UnixStream,
}

impl Qsd {
    fn start(sock_path: &std::path::Path) -> Qsd {
        let _ = std::fs::remove_file(sock_path);
        let child = std::process::Command::new("qemu-storage-daemon")
            .args([
                "--chardev",
                &format!(
                    "socket,id=c,path={},server=on,wait=off",
                    sock_path.display()
                ),
                "--monitor",
                "chardev=c",
            ])
            .spawn()
            .expect("qemu-storage-daemon starts");
        let sock = (0..500)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                std::os::unix::net::UnixStream::connect(sock_path).ok()
            })
            .expect("QMP socket");
        let out = std::io::BufReader::new(sock.try_clone().unwrap());
        let mut q = Qsd { child, out, sock };
        q.line(); // greeting
        q.cmd(json!({"execute": "qmp_capabilities"}));
        q
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    fn cmd(&mut self, c: Value) -> Value {
        use std::io::Write;
        writeln!(self.sock, "{c}").unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                assert!(v.get("error").is_none(), "qsd: {c} -> {v}");
                return v["return"].clone();
            }
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn full_backup_on_real_files_is_the_point_in_time_image_and_matches_qemus() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("backup-real");
    let p = |f: &str| dir.path(f).display().to_string();
    let (src, dst, pit, qdst) = (
        p("src.qcow2"),
        p("dst.qcow2"),
        p("pit.qcow2"),
        p("qdst.qcow2"),
    );
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &src, "32M"]);
    for (pat, off, len) in [(0x11, "0", "1M"), (0x22, "5M", "3M"), (0x33, "20M", "64k")] {
        let cmd = format!("write -P {pat} {off} {len}");
        dir.run("qemu-io", &["-f", "qcow2", "-c", &cmd, &src]);
    }
    // The point-in-time copy, and the targets.
    std::fs::copy(&src, &pit).unwrap();
    for t in [&dst, &qdst] {
        dir.run("qemu-img", &["create", "-q", "-f", "qcow2", t, "32M"]);
    }
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let (src2, dst2) = (src.clone(), dst.clone());
    env.block_on(async move {
        let mut model = vec![0u8; 32 * MB as usize];
        for (name, path) in [("src", &src2), ("dst", &dst2)] {
            let add = json!({"execute": "blockdev-add", "arguments": qcow2(name, path)});
            qmp_ok(&e, add).await;
        }
        e.device_add("drive0", "src", BackendOptions::guest_device(false, false))
            .unwrap();
        qmp_ok(
            &e,
            json!({"execute": "blockdev-backup", "arguments": {
                "job-id": "b0", "device": "src", "target": "dst", "sync": "full",
                "speed": 64 * MB}}),
        )
        .await;
        // The guest overwrites old data while the copy runs: copy-before-write keeps it.
        guest_writes(&e, &mut model, 7, 200).await;
        let mut seen = Vec::new();
        wait_event(&e, &mut seen, "BLOCK_JOB_COMPLETED").await;
        e.shutdown().await.unwrap();
    });
    env.shutdown();
    dir.check("dst.qcow2", false);
    dir.check("src.qcow2", false);
    let (code, out) = dir.run_status("qemu-img", &["compare", &dst, &pit]);
    assert_eq!(
        code, 0,
        "blk's backup is not the point-in-time image: {out}"
    );
    // qemu-storage-daemon backs up the same point-in-time image; both results are equal.
    let mut qsd = Qsd::start(&dir.path("qsd.sock"));
    for (name, path) in [("pit", &pit), ("qdst", &qdst)] {
        qsd.cmd(json!({"execute": "blockdev-add", "arguments": qcow2(name, path)}));
    }
    qsd.cmd(json!({"execute": "blockdev-backup", "arguments": {
        "job-id": "q0", "device": "pit", "target": "qdst", "sync": "full"}}));
    while qsd.cmd(json!({"execute": "query-jobs"})) != json!([]) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Closing the nodes writes QEMU's metadata caches back before the daemon goes.
    for name in ["qdst", "pit"] {
        qsd.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": name}}));
    }
    drop(qsd);
    dir.check("qdst.qcow2", false);
    let (code, out) = dir.run_status("qemu-img", &["compare", &dst, &qdst]);
    assert_eq!(code, 0, "blk's and QEMU's backups differ: {out}");
}

/// The allocation map `qemu-img map` gives of `f` (host offsets left out: only which guest
/// ranges hold data, zeroes or nothing).
fn guest_map(dir: &Scratch, f: &str) -> Value {
    let out = dir.run("qemu-img", &["map", "--output=json", f]);
    let mut v: Value = serde_json::from_str(&out).unwrap();
    for r in v.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("offset");
    }
    v
}

/// An incremental backup from a persistent bitmap QEMU recorded: QEMU's tools write the data,
/// add the bitmap and make the later writes (so QEMU's bitmap code records them); blk and
/// qemu-storage-daemon then each back up a copy of that image with sync=incremental into an
/// empty qcow2. The two targets hold the same data and the same allocation (only the dirty
/// clusters), and each source's bitmap is left cleared (bitmap-mode on-success).
#[test]
fn incremental_backup_from_qemus_bitmap_equals_qemus_incremental_backup() {
    if !have_qemu() {
        return;
    }
    let dir = Scratch::new("backup-incremental-real");
    let p = |f: &str| dir.path(f).display().to_string();
    let (img, a, b, inc_blk, inc_qsd) = (
        p("img.qcow2"),
        p("a.qcow2"),
        p("b.qcow2"),
        p("inc-blk.qcow2"),
        p("inc-qsd.qcow2"),
    );
    dir.run("qemu-img", &["create", "-q", "-f", "qcow2", &img, "16M"]);
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 16M", &img],
    );
    dir.run("qemu-img", &["bitmap", "--add", &img, "inc"]);
    let later = [
        "write -P 0x22 1M 64k",
        "write -P 0x33 5000k 300k",
        "write -z 9M 128k",
        "write -P 0x44 15M 4k",
    ];
    for w in later {
        dir.run("qemu-io", &["-f", "qcow2", "-c", w, &img]);
    }
    std::fs::copy(&img, &a).unwrap();
    std::fs::copy(&img, &b).unwrap();
    for t in [&inc_blk, &inc_qsd] {
        dir.run("qemu-img", &["create", "-q", "-f", "qcow2", t, "16M"]);
    }

    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let (e, a2, t2) = (engine.clone(), a.clone(), inc_blk.clone());
    env.block_on(async move {
        for (name, path) in [("src", &a2), ("dst", &t2)] {
            let add = json!({"execute": "blockdev-add", "arguments": qcow2(name, path)});
            qmp_ok(&e, add).await;
        }
        qmp_ok(
            &e,
            json!({"execute": "blockdev-backup", "arguments": {
                "job-id": "i0", "device": "src", "target": "dst", "sync": "incremental",
                "bitmap": "inc"}}),
        )
        .await;
        let mut seen = Vec::new();
        wait_event(&e, &mut seen, "BLOCK_JOB_COMPLETED").await;
        e.shutdown().await.unwrap();
    });
    env.shutdown();

    let mut qsd = Qsd::start(&dir.path("qsd.sock"));
    for (name, path) in [("src", &b), ("dst", &inc_qsd)] {
        qsd.cmd(json!({"execute": "blockdev-add", "arguments": qcow2(name, path)}));
    }
    qsd.cmd(json!({"execute": "blockdev-backup", "arguments": {
        "job-id": "i0", "device": "src", "target": "dst", "sync": "incremental",
        "bitmap": "inc"}}));
    while qsd.cmd(json!({"execute": "query-jobs"})) != json!([]) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for name in ["dst", "src"] {
        qsd.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": name}}));
    }
    drop(qsd);

    for f in ["inc-blk.qcow2", "inc-qsd.qcow2", "a.qcow2", "b.qcow2"] {
        dir.check(f, false);
    }
    let (code, out) = dir.run_status("qemu-img", &["compare", &inc_blk, &inc_qsd]);
    assert_eq!(
        code, 0,
        "blk's and QEMU's incremental backups differ: {out}"
    );
    assert_eq!(
        guest_map(&dir, &inc_blk),
        guest_map(&dir, &inc_qsd),
        "blk's incremental backup allocates other ranges than QEMU's"
    );
    // Both sources keep the bitmap, cleared by the successful backup.
    let bitmaps = |f: &str| {
        let out = dir.run("qemu-img", &["info", "--output=json", f]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["format-specific"]["data"]["bitmaps"].clone()
    };
    assert_eq!(bitmaps(&a)[0]["name"], "inc", "blk kept the bitmap");
    assert_eq!(bitmaps(&a), bitmaps(&b));
    let (code, out) = dir.run_status("qemu-img", &["compare", &a, &b]);
    assert_eq!(code, 0, "the sources differ after the backups: {out}");
}
