//! Helpers for the qcow2 tests: running qemu-img/qemu-io in a scratch directory, loading host
//! files into the simulator, opening qcow2 nodes and exporting images back for `qemu-img check`;
//! `guest` has the layouts, concurrent request batches and byte model of the property and crash
//! tests.
#![allow(dead_code)]

pub mod guest;

use std::path::PathBuf;
use std::process::Command;

#[path = "../qemu_tools/mod.rs"]
mod qemu_tools;
use std::rc::Rc;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::drivers::qcow2::{CreateOptions, create};
use engine::io::IoBuf;
use serde_json::json;
use sim::{Sim, SimConfig, View};

/// qemu-img and qemu-io can run (see `qemu_tools`).
pub fn have_qemu() -> bool {
    qemu_tools::have_qemu("qcow2 interop test")
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Unique per process and call: the test files share one binary, so two may pick the
    /// same name.
    pub fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("blk-qcow2-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    /// Run a command in the directory; panic with its output if it fails.
    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        let out = Command::new(prog)
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{prog} {args:?} failed: {text}");
        text
    }

    /// Run a command and return (exit code, output).
    pub fn run_status(&self, prog: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(prog)
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.path(f)).unwrap()
    }

    /// `qemu-img check` of an image: panics on corruption; leaks allowed if `leaks_ok`.
    pub fn check(&self, f: &str, leaks_ok: bool) {
        let (code, text) = self.run_status("qemu-img", &["check", "-f", "qcow2", f]);
        let fine = code == 0 || (leaks_ok && code == 3);
        assert!(fine, "qemu-img check {f} exited {code}: {text}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A simulator with host files loaded into its virtual disk.
pub fn sim_with(seed: u64, files: &[(&str, Vec<u8>)]) -> Sim {
    let sim = Sim::new(seed, SimConfig::default());
    for (name, data) in files {
        sim.fs().create_file(name, data).unwrap();
    }
    sim
}

/// Open `file` as qcow2 node `name` and attach device `dev`.
pub async fn open_qcow2(
    engine: &Engine,
    name: &str,
    file: &str,
    read_only: bool,
) -> engine::Result<Rc<BlockBackend>> {
    engine
        .blockdev_add(
            json!({"driver": "qcow2", "node-name": name, "read-only": read_only,
            "discard": "unmap",
            "file": {"driver": "file", "filename": file}}),
        )
        .await?;
    engine.device_add(
        &format!("dev-{name}"),
        name,
        BackendOptions::tool(read_only),
    )
}

/// Read the whole device.
pub async fn read_all(bb: &BlockBackend) -> Vec<u8> {
    let len = bb.len().unwrap();
    let (buf, r) = bb.read(0, IoBuf::new(len as usize)).await;
    r.unwrap();
    buf.as_slice().to_vec()
}

/// Export a virtual file to the scratch directory.
pub fn export(sim: &Sim, file: &str, view: View, dir: &Scratch, host: &str) {
    sim.fs().export_to(file, view, &dir.path(host)).unwrap();
}

/// Engine on a simulator.
pub fn engine_of(sim: &Sim) -> Rc<Engine> {
    Rc::new(Engine::new(sim.env().as_env()))
}

/// Add the file `filename` of the simulator as node "f" and format it as qcow2 with `opts`,
/// through a temporary device that is released again (the caller opens "f" as it likes).
pub async fn create_on(engine: &Engine, filename: &str, opts: &CreateOptions) {
    engine
        .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": filename}))
        .await
        .unwrap();
    let bb = engine
        .device_add("create", "f", BackendOptions::tool(false))
        .unwrap();
    create(&bb.root().unwrap(), opts).await.unwrap();
    engine.device_del("create").await.unwrap();
}

/// Convert `img` to raw with qemu-img and require exactly `expected` (QEMU reads what blk wrote).
pub fn assert_qemu_reads(dir: &Scratch, img: &str, expected: &[u8], what: &str) {
    let raw = format!("{img}.raw");
    dir.run("qemu-img", &["convert", "-O", "raw", img, &raw]);
    assert!(
        dir.read(&raw) == expected,
        "{what} reads differently in QEMU"
    );
}
