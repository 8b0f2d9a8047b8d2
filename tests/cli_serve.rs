//! `blk serve` as a real process on unix sockets: QMP over a raw socket (greeting, negotiation,
//! split and concatenated messages, errors with `id`, events of a job on two monitors, `quit`),
//! QEMU's own Python client (`qemu.qmp`), SIGTERM, and start-up errors compared with
//! qemu-storage-daemon's byte for byte (through a link of that name).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{BLK, Dir};

/// A running `blk serve` in `dir`.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(dir: &Dir, args: &[&str]) -> Daemon {
        let child = Command::new(BLK)
            .arg("serve")
            .args(args)
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon { child }
    }

    /// Wait for the exit; (status, stderr).
    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (st.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "blk serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw QMP client: lines in, JSON values out.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        wait_for(path);
        // The path appears at bind, just before listen: retry a refused connect for a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    /// The next line, which must end in CRLF.
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "line {l:?}");
        l.trim_end().to_owned()
    }

    fn next(&mut self) -> Value {
        serde_json::from_str(&self.line()).unwrap()
    }

    /// Send a command and return its reply, collecting the events that arrive first.
    fn cmd(&mut self, text: &str, events: &mut Vec<Value>) -> Value {
        self.send(text);
        loop {
            let v = self.next();
            if v.get("event").is_some() {
                events.push(v);
            } else {
                return v;
            }
        }
    }

    /// Read until event `name` arrives (keeping every event seen).
    fn until_event(&mut self, name: &str, events: &mut Vec<Value>) {
        loop {
            let v = self.next();
            let done = v["event"] == name;
            events.push(v);
            if done {
                return;
            }
        }
    }
}

fn qemu_img(dir: &Dir, args: &[&str]) {
    dir.ok("qemu-img", args);
}

#[test]
fn raw_socket_session_two_monitors_job_events_and_quit() {
    let dir = Dir::new("serve-raw");
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"]);
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "t.qcow2", "4M"]);
    dir.ok("qemu-io", &["-c", "write -P 0x5a 0 1M", "a.qcow2"]);
    let d = Daemon::start(
        &dir,
        &[
            "--blockdev",
            "driver=qcow2,node-name=a,file.driver=file,file.filename=a.qcow2",
            "--chardev",
            "socket,id=m1,path=m1.sock,server=on,wait=off",
            "--monitor",
            "chardev=m1",
            "--chardev",
            "socket,id=m2,path=m2.sock,server=on,wait=off",
            "--monitor",
            "m2",
            "--pidfile",
            "serve.pid",
        ],
    );
    let mut m1 = Raw::connect(&dir.0.join("m1.sock"));
    let greeting = m1.next();
    assert_eq!(
        greeting["QMP"]["version"]["qemu"],
        json!({"micro": 2, "minor": 0, "major": 10})
    );
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    wait_for(&dir.0.join("serve.pid"));
    let pid = std::fs::read_to_string(dir.0.join("serve.pid")).unwrap();
    assert_eq!(pid.trim(), d.child.id().to_string());

    // Before negotiation, as QEMU: refused with CommandNotFound.
    m1.send(r#"{"execute": "query-version", "id": 1}"#);
    assert_eq!(
        m1.line(),
        r#"{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
    );
    // Negotiation split over two writes, then two commands in one write.
    m1.send(r#"{"execute": "qmp_capa"#);
    m1.send(r#"bilities", "id": "n"}{"execute": "query-version"} {"execute":"nope","id":[7]}"#);
    assert_eq!(m1.line(), r#"{"return": {}, "id": "n"}"#);
    assert_eq!(m1.next()["return"]["qemu"]["major"], 10);
    assert_eq!(
        m1.line(),
        r#"{"id": [7], "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#
    );
    // Garbage gets QEMU's parse error, and the stream goes on.
    m1.send("garbage {\"execute\": \"query-version\", \"id\": 2}");
    assert_eq!(
        m1.line(),
        r#"{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}}"#
    );
    assert_eq!(m1.next()["id"], 2);

    let mut m2 = Raw::connect(&dir.0.join("m2.sock"));
    m2.next();
    let mut ev1 = Vec::new();
    let mut ev2 = Vec::new();
    assert_eq!(
        m2.cmd(r#"{"execute":"qmp_capabilities"}"#, &mut ev2),
        json!({"return": {}})
    );
    let cmds = m2.cmd(r#"{"execute":"query-commands"}"#, &mut ev2);
    for name in ["quit", "query-version", "blockdev-add", "blockdev-backup"] {
        assert!(
            cmds["return"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": name})),
            "{name}"
        );
    }
    let add = r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"t","file":{"driver":"file","filename":"t.qcow2"}}}"#;
    assert_eq!(m1.cmd(add, &mut ev1), json!({"return": {}}));
    let nodes = m1.cmd(
        r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
        &mut ev1,
    );
    let names: Vec<&str> = nodes["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"a") && names.contains(&"t"), "{names:?}");
    // A job: its events reach both negotiated monitors, with a wall-clock timestamp.
    let backup = r#"{"execute":"blockdev-backup","arguments":{"job-id":"j","device":"a","target":"t","sync":"full"}}"#;
    assert_eq!(m1.cmd(backup, &mut ev1), json!({"return": {}}));
    m1.until_event("BLOCK_JOB_COMPLETED", &mut ev1);
    m2.until_event("BLOCK_JOB_COMPLETED", &mut ev2);
    let names = |ev: &[Value]| ev.iter().map(|e| e["event"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&ev1), names(&ev2));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for e in &ev1 {
        let secs = e["timestamp"]["seconds"].as_u64().unwrap();
        assert!(secs + 60 > now && secs <= now, "timestamp {e}");
        assert!(e["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    }
    assert!(ev1.iter().any(|e| e["event"] == "JOB_STATUS_CHANGE"));

    // quit: the reply, then the end of the stream, a clean exit and nothing left behind.
    assert_eq!(
        m2.cmd(r#"{"execute":"quit","id":9}"#, &mut ev2),
        json!({"return": {}, "id": 9})
    );
    let (code, err) = d.wait();
    assert_eq!((code, err.as_str()), (0, ""));
    for f in ["m1.sock", "m2.sock", "serve.pid"] {
        assert!(!dir.0.join(f).exists(), "{f} left behind");
    }
    dir.check_clean("a.qcow2");
    dir.check_clean("t.qcow2");
    let cmp = dir.run("qemu-img", &["compare", "a.qcow2", "t.qcow2"]);
    assert_eq!(cmp.code, 0, "{}{}", cmp.stdout, cmp.stderr);
}

/// Drive the daemon with QEMU's Python QMP client, then stop it with SIGTERM.
#[test]
fn qemu_python_client_then_sigterm() {
    let have_py = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_py {
        assert!(
            std::env::var_os("BLK_REQUIRE_QEMU").is_none(),
            "python3 with qemu.qmp is required (pip install qemu.qmp)"
        );
        eprintln!("skipped: python3 qemu.qmp not installed");
        return;
    }
    let dir = Dir::new("serve-py");
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"]);
    let d = Daemon::start(
        &dir,
        &[
            "--chardev",
            "socket,id=m,path=m.sock,server=on,wait=off",
            "--monitor",
            "m",
        ],
    );
    wait_for(&dir.0.join("m.sock"));
    let script = r#"
import asyncio, json, sys
from qemu.qmp import QMPClient, ExecuteError
async def main():
    c = QMPClient('t')
    await c.connect('m.sock')
    v = await c.execute('query-version')
    print('version', v['qemu']['major'], v['qemu']['minor'], v['qemu']['micro'])
    await c.execute('blockdev-add', {'driver': 'qcow2', 'node-name': 'a',
        'file': {'driver': 'file', 'filename': 'a.qcow2'}})
    nodes = await c.execute('query-named-block-nodes', {'flat': True})
    print('nodes', sorted(n['node-name'] for n in nodes))
    try:
        await c.execute('blockdev-add', {'node-name': 'b'})
    except ExecuteError as e:
        print('error', e.error_class, e.error.error.desc)
    await c.disconnect()
asyncio.run(main())
"#;
    let o = dir.run("python3", &["-c", script]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout,
        "version 10 0 2\nnodes ['a']\nerror GenericError Parameter 'driver' is missing\n"
    );
    // SIGTERM: a clean shutdown (the node open for writing is closed: no dirty bit).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let (code, err) = d.wait();
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(!dir.0.join("m.sock").exists());
    dir.check_clean("a.qcow2");
}

/// Start-up errors: the same words and status as qemu-storage-daemon.
#[test]
fn startup_errors_match_qemu_storage_daemon() {
    if !crate::common::have_tools(&["qemu-storage-daemon"], "blk serve error parity") {
        return;
    }
    let dir = Dir::new("serve-err");
    let link = dir.0.join("qemu-storage-daemon");
    std::os::unix::fs::symlink(BLK, &link).unwrap();
    let cases: &[&[&str]] = &[
        &["--foo"],
        &["--blockdev"],
        &["extra"],
        &["--monitor", "chardev=nonexist"],
        &["--monitor", "foo=bar"],
        &["--object", "secret"],
        &["--object", "foo,id=x"],
        &["--blockdev", "driver=file,filename=/nonexist,node-name=a"],
        &["--blockdev", "{bad"],
        &["--pidfile", "/nonexist/pid"],
        &["--chardev", "socket,id=m"],
        &[
            "--chardev",
            "socket,id=m,path=/nonexist/x.sock,server=on,wait=off",
        ],
    ];
    for args in cases {
        let q = dir.run("qemu-storage-daemon", args);
        let b = dir.run(link.to_str().unwrap(), args);
        assert_eq!((b.code, &b.stderr), (q.code, &q.stderr), "{args:?}");
    }
}

/// `--daemonize`: the parent exits 0 once the daemon is started; the daemon serves, and on
/// `quit` removes its socket and (relative, so kept absolute) pidfile.
#[test]
fn daemonize_then_quit() {
    let dir = Dir::new("serve-daemon");
    let args = [
        "serve",
        "--chardev",
        "socket,id=m,path=d.sock,server=on,wait=off",
        "--monitor",
        "m",
        "--daemonize",
        "--pidfile",
        "d.pid",
    ];
    let o = dir.run(BLK, &args);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert!(
        dir.0.join("d.pid").exists(),
        "pidfile written before the parent exits"
    );
    let mut m = Raw::connect(&dir.0.join("d.sock"));
    m.next();
    let mut ev = Vec::new();
    m.cmd(r#"{"execute":"qmp_capabilities"}"#, &mut ev);
    assert_eq!(
        m.cmd(r#"{"execute":"quit"}"#, &mut ev),
        json!({"return": {}})
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.0.join("d.pid").exists() || dir.0.join("d.sock").exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon left its files behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `blk serve --nbd-server ... --export ...` (qemu-storage-daemon's syntax, the type given
/// without its key): QEMU's tools and libnbd's read and write through the export, several
/// connections at once; `quit` stops the server, closes the image clean and removes the
/// sockets; afterwards the image holds what the clients wrote.
#[test]
fn nbd_export_from_the_command_line_serves_qemu_and_libnbd_clients() {
    let have_nbdinfo = Command::new("nbdinfo").arg("--version").output().is_ok();
    if !have_nbdinfo {
        assert!(
            std::env::var_os("BLK_REQUIRE_QEMU").is_none(),
            "nbdinfo is required (apt-get install libnbd-bin)"
        );
        eprintln!("skipped: nbdinfo not installed");
        return;
    }
    let dir = Dir::new("serve-nbd");
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]);
    let sock = dir.0.join("nbd.sock");
    let d = Daemon::start(
        &dir,
        &[
            "--blockdev",
            "driver=file,filename=d.qcow2,node-name=f",
            "--blockdev",
            "driver=qcow2,file=f,node-name=q",
            "--nbd-server",
            &format!("addr.type=unix,addr.path={}", sock.display()),
            "--export",
            "nbd,id=e0,node-name=q,name=disk,writable=on",
            "--chardev",
            "socket,id=m,path=m.sock,server=on,wait=off",
            "--monitor",
            "chardev=m",
        ],
    );
    let mut m = Raw::connect(&dir.0.join("m.sock"));
    m.next();
    let mut ev = Vec::new();
    m.cmd(r#"{"execute":"qmp_capabilities"}"#, &mut ev);
    wait_for(&sock);
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    dir.ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 1M 64k", &uri],
    );
    dir.ok("qemu-io", &["-f", "raw", "-c", "read -P 0x5a 1M 64k", &uri]);
    let info = dir.ok("qemu-img", &["info", "--output=json", &uri]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 16 << 20, "{info}");
    let nbdinfo = dir.ok("nbdinfo", &["--json", &uri]);
    assert!(nbdinfo.contains("\"export-size\": 16777216"), "{nbdinfo}");
    let exports = m.cmd(r#"{"execute":"query-block-exports"}"#, &mut ev);
    assert_eq!(exports["return"][0]["id"], "e0", "{exports}");
    assert_eq!(
        m.cmd(r#"{"execute":"quit"}"#, &mut ev),
        json!({"return": {}})
    );
    let (code, err) = d.wait();
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(!sock.exists() && !dir.0.join("m.sock").exists());
    qemu_img(&dir, &["check", "d.qcow2"]);
    dir.ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x5a 1M 64k", "d.qcow2"],
    );
}
