//! The NBD server and client on real unix sockets against QEMU's and libnbd's tools: the
//! engine runs on the real env in this process, the tools run as child processes polled from
//! the reactor. Each QEMU-facing output is compared with the same command against
//! qemu-storage-daemon exporting a copy of the same image.

use std::process::{Child, Command, Stdio};
use std::rc::Rc;

use engine::Engine;
use engine::env::real::RealEnv;
use engine::env::{Env, LocalBoxFuture};
use serde_json::json;

use crate::support::qmp_ok;

#[path = "qemu_tools/mod.rs"]
#[allow(dead_code)] // have_qemu is for other binaries
mod qemu_tools;

fn scratch(tag: &str) -> String {
    let d = format!(
        "{}/nbd-{}-{tag}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished child: exit code, stdout, stderr.
type Ran = (i32, String, String);

/// Run `cmd` to the end while the reactor keeps serving.
fn run_polled<'a>(env: &'a RealEnv, cmd: &'a [String]) -> LocalBoxFuture<'a, Ran> {
    Box::pin(async move {
        let mut child: Child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            env.sleep_until(env.now_ns() + 5_000_000).await;
        }
        let o = child.wait_with_output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
}

/// Export `img` (qcow2) as `exp` from blk's server on `sock`, run each client command in turn,
/// then stop the server. The commands' results.
fn with_blk_server(img: &str, sock: &str, cmds: &[Vec<String>]) -> Vec<Ran> {
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let env2 = env.clone();
    let (img, sock, cmds) = (img.to_string(), sock.to_string(), cmds.to_vec());
    env.block_on(async move {
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": {"node-name": "n0",
            "driver": "qcow2", "file": {"driver": "file", "filename": img}}}),
        )
        .await;
        qmp_ok(
            &e,
            json!({"execute": "nbd-server-start",
            "arguments": {"addr": {"type": "unix", "data": {"path": sock}}}}),
        )
        .await;
        qmp_ok(
            &e,
            json!({"execute": "block-export-add", "arguments": {"type": "nbd",
            "id": "e0", "node-name": "n0", "name": "exp", "writable": true}}),
        )
        .await;
        let mut out = Vec::new();
        for c in &cmds {
            out.push(run_polled(&env2, c).await);
        }
        qmp_ok(&e, json!({"execute": "nbd-server-stop"})).await;
        e.shutdown().await.unwrap();
        out
    })
}

/// The same commands against qemu-storage-daemon exporting `img` as `exp` on `sock`.
fn with_qsd(img: &str, sock: &str, cmds: &[Vec<String>]) -> Vec<Ran> {
    let mut qsd = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!("driver=qcow2,node-name=n0,file.driver=file,file.filename={img}"),
            "--nbd-server",
            &format!("addr.type=unix,addr.path={sock}"),
            "--export",
            "type=nbd,id=e0,node-name=n0,name=exp,writable=on",
        ])
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if std::path::Path::new(sock).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = cmds
        .iter()
        .map(|c| {
            let o = Command::new(&c[0]).args(&c[1..]).output().unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect();
    qsd.kill().unwrap();
    qsd.wait().unwrap();
    out
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// An image with data in its first MiB and nothing after.
fn image(dir: &str, name: &str) -> String {
    let img = format!("{dir}/{name}");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &img, "4M"]);
    sh(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 1M", &img],
    );
    img
}

#[test]
fn qemu_and_libnbd_clients_see_blks_export_as_they_see_qemus() {
    if !qemu_tools::have_tools(
        &["qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-nbd"],
        "the NBD interop test",
    ) || !qemu_tools::have_tools(&["nbdinfo"], "the NBD interop test")
    {
        return;
    }
    let dir = scratch("parity");
    let sock = format!("{dir}/s.sock");
    let uri = format!("nbd+unix:///exp?socket={sock}");
    let cmds = vec![
        cmd(&["qemu-img", "info", &uri]),
        cmd(&["qemu-img", "map", "--output=json", "-f", "raw", &uri]),
        cmd(&[
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "read -P 0x11 0 1M",
            "-c",
            "read -P 0 1M 3M",
            &uri,
        ]),
        cmd(&["nbdinfo", &uri]),
        cmd(&["nbdinfo", "--map", &uri]),
    ];
    let ours = with_blk_server(&image(&dir, "a.qcow2"), &sock, &cmds);
    let _ = std::fs::remove_file(&sock);
    let theirs = with_qsd(&image(&dir, "b.qcow2"), &sock, &cmds);
    for ((c, o), t) in cmds.iter().zip(&ours).zip(&theirs) {
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains(" ops; "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(o.0, 0, "{c:?} against blk: {}{}", o.1, o.2);
        assert_eq!((o.0, strip(&o.1), &o.2), (t.0, strip(&t.1), &t.2), "{c:?}");
    }
}

#[test]
fn data_written_through_blks_export_reads_back_everywhere() {
    if !qemu_tools::have_tools(&["qemu-img", "qemu-io", "qemu-nbd"], "the NBD interop test")
        || !qemu_tools::have_tools(&["nbdinfo", "nbdcopy"], "the NBD interop test")
    {
        return;
    }
    let dir = scratch("rw");
    let sock = format!("{dir}/s.sock");
    let uri = format!("nbd+unix:///exp?socket={sock}");
    let img = image(&dir, "a.qcow2");
    let copy = format!("{dir}/copy.raw");
    let cmds = vec![
        cmd(&[
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "write -P 0x22 1M 512k",
            "-c",
            "write -z 0 64k",
            "-c",
            "flush",
            &uri,
        ]),
        cmd(&[
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "read -P 0x22 1M 512k",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "read -P 0x11 64k 960k",
            &uri,
        ]),
        cmd(&["qemu-nbd", "--list", "-k", &sock]),
        cmd(&["nbdcopy", &uri, &copy]),
        cmd(&[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &uri,
            &format!("{dir}/conv.qcow2"),
        ]),
    ];
    let out = with_blk_server(&img, &sock, &cmds);
    for (c, o) in cmds.iter().zip(&out) {
        assert_eq!(o.0, 0, "{c:?}: {}{}", o.1, o.2);
    }
    assert!(
        out[2].1.contains(" export: 'exp'\n  size:  4194304\n"),
        "{}",
        out[2].1
    );
    // Afterwards the image itself holds the writes, checks clean, and equals both copies.
    let check = sh("qemu-img", &["check", &img]);
    assert!(check.contains("No errors were found"), "{check}");
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x22 1M 512k",
            "-c",
            "read -P 0 0 64k",
            &img,
        ],
    );
    sh(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", &img, &copy],
    );
    sh("qemu-img", &["compare", &img, &format!("{dir}/conv.qcow2")]);
}

/// blk's client driver against qemu-nbd and qemu-storage-daemon exports.
#[test]
fn blks_client_reads_and_writes_qemus_exports() {
    if !qemu_tools::have_tools(&["qemu-img", "qemu-io", "qemu-nbd"], "the NBD client test") {
        return;
    }
    let dir = scratch("client");
    let sock = format!("{dir}/s.sock");
    let img = image(&dir, "a.qcow2");
    let mut nbd = Command::new("qemu-nbd")
        .args([
            "-f",
            "qcow2",
            "-k",
            &sock,
            "-x",
            "exp",
            "--persistent",
            &img,
        ])
        .spawn()
        .unwrap();
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let e = engine.clone();
    let s = sock.clone();
    env.block_on(async move {
        // The server may still be starting: open-timeout waits for it.
        qmp_ok(
            &e,
            json!({"execute": "blockdev-add", "arguments": {"node-name": "c0",
            "driver": "nbd", "server": {"type": "unix", "path": s}, "export": "exp",
            "open-timeout": 10}}),
        )
        .await;
        let opts = engine::backend::BackendOptions::tool(false);
        let dev = e.device_add("d0", "c0", opts).unwrap();
        assert_eq!(dev.len().unwrap(), 4 << 20);
        let (buf, r) = dev.read(0, engine::io::IoBuf::new(1 << 20)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0x11));
        let st = dev.block_status(2 << 20, 1 << 20).await.unwrap();
        assert!(st.mapping.is_zero(), "{st:?}");
        let w = engine::io::IoBuf::filled(65536, 0x33);
        dev.write(3 << 20, w, engine::io::ReqFlags::FUA)
            .await
            .1
            .unwrap();
        dev.write_zeroes(0, 4096, engine::io::ReqFlags::MAY_UNMAP)
            .await
            .unwrap();
        dev.flush().await.unwrap();
        e.device_del("d0").await.unwrap();
        e.shutdown().await.unwrap();
    });
    nbd.kill().unwrap();
    nbd.wait().unwrap();
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x33 3M 64k",
            "-c",
            "read -P 0 0 4k",
            "-c",
            "read -P 0x11 4k 1020k",
            &img,
        ],
    );
}
