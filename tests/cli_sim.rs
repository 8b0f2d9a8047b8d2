//! `blk sim run` exit codes: the shipped scenarios pass; a malformed scenario and a failing one
//! make the run fail, naming the problem and how to reproduce it.

use std::path::PathBuf;
use std::process::Command;

fn blk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blk"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blk-cli-sim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn shipped_scenarios_pass() {
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let out = blk().args(["sim", "run", scenarios]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("raw-workload") && stdout.contains(" 0 failed"),
        "{stdout}"
    );
}

#[test]
fn malformed_and_failing_scenarios_fail_the_run() {
    let dir = temp_dir("bad");
    std::fs::write(
        dir.join("malformed.scn"),
        "# a purpose\nimage create d.img raw 1Q\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("failing.scn"),
        "# a device on a node that does not exist\nimage create d.img raw 1M\ndevice add d0 node=nothere\n",
    )
    .unwrap();
    let out = blk().args(["sim", "run"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("malformed.scn:2:24: bad size '1Q'"),
        "{stdout}"
    );
    assert!(stdout.contains("setup failed at line 3"), "{stdout}");
    assert!(stdout.contains("reproduce: blk sim replay"), "{stdout}");
    let out = blk()
        .args(["sim", "run", "--seeds", "5..2"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: `blk sim replay --seeds A..B` ran seed 0 silently; it is refused, naming the
/// command that runs ranges.
#[test]
fn replay_refuses_a_seed_range() {
    let scn = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/raw-workload.scn");
    let out = blk()
        .args(["sim", "replay", scn, "--seeds", "0..5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'blk sim run'"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Regression: a closed stdout (`blk sim replay ... | head -1`) panicked with "failed printing
/// to stdout"; it now ends the program quietly, as a C tool killed by SIGPIPE.
#[test]
fn a_closed_stdout_ends_quietly() {
    let scn = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/raw-workload.scn");
    let blk = env!("CARGO_BIN_EXE_blk");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{blk}' sim replay '{scn}' --trace | head -c 10 >/dev/null"
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `--jobs 2 --coverage` leaves one merged coverage file whose counts are the sum of its jobs';
/// `blk sim coverage` sums shard files the same way and refuses a malformed one by name.
#[test]
fn coverage_of_jobs_and_shards_is_summed() {
    let dir = temp_dir("coverage");
    let out = blk()
        .args([
            "sim",
            "swarm",
            "--seeds",
            "0..6",
            "--jobs",
            "2",
            "--coverage",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let (merged, a, b) = (
        read("coverage-0-1.json"),
        read("coverage-0-2.json"),
        read("coverage-1-2.json"),
    );
    let count = |v: &serde_json::Value| v["qmp commands"]["blockdev-add"].as_u64().unwrap_or(0);
    assert!(count(&merged) > 0);
    assert_eq!(count(&merged), count(&a) + count(&b));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("blkdebug events (").count(), 1, "{stderr}");

    let all = dir.join("all.json");
    let out = blk()
        .args(["sim", "coverage"])
        .arg(dir.join("coverage-0-2.json"))
        .arg(dir.join("coverage-1-2.json"))
        .arg("--out")
        .arg(&all)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(count(&read("all.json")), count(&merged));

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"events": {"X": -1}}"#).unwrap();
    let out = blk().args(["sim", "coverage"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("'events' / 'X'"),
        "{err}"
    );
}

/// `--qemu-check` exports a passing seed's images and runs `qemu-img check` on each qcow2 one
/// where they were exported: here a stand-in `qemu-img` on PATH logs its calls and rejects
/// the images, so the seed fails the `qemu-check` check, keeps its images and says how to
/// reproduce. (The real tool judging real runs is the CI swarm window's job.)
#[test]
fn qemu_check_runs_qemu_img_on_every_exported_qcow2_image() {
    let dir = temp_dir("qemu-check");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    let fake = bin.join("qemu-img");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$PWD $*\" >> {}\necho 'ERROR cluster 5 refcount=0 reference=1' \nexit 2\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Seed 0 has qcow2 images (the generator's features for it are fixed by its seed).
    let out = blk()
        .args(["sim", "swarm", "--seeds", "0..1", "--qemu-check", "--out"])
        .arg(dir.join("out"))
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("\"check\":\"qemu-check\""), "{stdout}");
    assert!(
        stderr.contains("refcount=0") && stderr.contains("--qemu-check"),
        "{stderr}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let images = dir.join("out").join("seed-0.images");
    assert!(
        calls.starts_with(&format!("{} check -f qcow2 ", images.display()))
            && calls.contains(".qcow2"),
        "{calls}"
    );
    assert!(images.join("top.qcow2").exists() || std::fs::read_dir(&images).unwrap().count() > 0);
}
