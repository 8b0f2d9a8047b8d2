//! Executor tests on the production env with real temporary files (through `Env::fs`, so this
//! module still uses no `std::fs`). Expected outputs are qemu-io 10.0.2's, with timing in
//! iotests' filtered form.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Engine;
use crate::env::real::RealEnv;
use crate::env::{Env, OpenOptions};

use super::*;

const T: &str = "X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)";

/// A fresh path under /tmp (named from the env's wall clock: no OS calls here).
fn temp_path(env: &dyn Env) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/tmp/blk-qemu-io-unit-{}-{}.img",
        env.wall_clock_ns(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run `lines` on a fresh raw image of `size` bytes (opened with `spec`, whose filename is
/// filled in; `None` opens nothing). `$IMG` in a line is the image path. Returns the output
/// (stderr lines prefixed "ERR: ") and the exit status.
fn script(size: u64, spec: Option<OpenSpec>, lines: &[&str]) -> (Vec<String>, i32) {
    let env = RealEnv::new();
    let path = temp_path(&*env);
    let sink = Rc::new(VecSink::new());
    let code = env.block_on(async {
        let opts = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        };
        let f = env.fs().open(&path, opts).unwrap();
        f.set_len(size).await.unwrap();
        drop(f);
        let engine = Rc::new(Engine::new(env.clone()));
        let cfg = SessionConfig {
            timing: Timing::Filtered,
            ..Default::default()
        };
        let mut s = Session::new(engine.clone(), sink.clone(), cfg);
        if let Some(mut spec) = spec {
            spec.filename.get_or_insert(path.clone());
            s.open(&spec).await.unwrap();
        }
        for l in lines {
            let l = l.replace("$IMG", &path);
            if s.run_line(&l).await == CommandResult::Quit {
                break;
            }
        }
        s.close().await.unwrap();
        engine.shutdown().await.unwrap();
        env.fs().remove(&path).unwrap();
        s.exit_code()
    });
    env.shutdown();
    let out = sink
        .take()
        .into_iter()
        .map(|l| match l.stream {
            Stream::Stdout => l.text,
            Stream::Stderr => format!("ERR: {}", l.text),
        })
        .collect();
    (out, code)
}

fn raw() -> Option<OpenSpec> {
    Some(OpenSpec {
        format: Some("raw".into()),
        ..OpenSpec::default()
    })
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn write_read_verify() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "write -P 0xab 0 4k",
            "read -P 0xab 0 4k",
            "read -P 0xcd 0 512",
            "read 0 2M",
            "write 1 513",
            "read -P 0xcd 1 513",
            "read -q -P 0xab 0 1",
            "write -q 0 1",
            "length",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "wrote 4096/4096 bytes at offset 0",
            &format!("4 KiB, {T}"),
            "read 4096/4096 bytes at offset 0",
            &format!("4 KiB, {T}"),
            "Pattern verification failed at offset 0, 512 bytes",
            "read 512/512 bytes at offset 0",
            &format!("512 bytes, {T}"),
            "read failed: Input/output error",
            "wrote 513/513 bytes at offset 1",
            &format!("513 bytes, {T}"),
            "read 513/513 bytes at offset 1",
            &format!("513 bytes, {T}"),
            "1 MiB",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn success_exits_zero_and_dump() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "write -P 0x41 0 4",
            "write -P 0x20 4 4",
            "read -v 0 20",
            "read -Cq 0 1",
            "read -C 0 16",
        ],
    );
    assert_eq!(
        out[4],
        "00000000:  41 41 41 41 20 20 20 20 00 00 00 00 00 00 00 00  AAAA............"
    );
    assert_eq!(out[5], "00000010:  00 00 00 00  ....");
    assert_eq!(out[8], "16,1,X:XX:XX.XX,XXX,XXX");
    assert_eq!(code, 0);
}

#[test]
fn vectored_zeroes_discard() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "writev -P 0x11 512 512 512 1",
            "readv -P 0x11 512 512 512 1",
            "readv -P 0x12 512 1k",
            "write -z 0 4k",
            "read -P 0 0 4k",
            "write -zu -q 4k 4k",
            "discard 0 64k",
            "discard 0 2M",
            "readv 0 1M 1",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "wrote 1025/1025 bytes at offset 512",
            &format!("1.001 KiB, {T}"),
            "read 1025/1025 bytes at offset 512",
            &format!("1.001 KiB, {T}"),
            "Pattern verification failed at offset 512, 1024 bytes",
            "read 1024/1024 bytes at offset 512",
            &format!("1 KiB, {T}"),
            "wrote 4096/4096 bytes at offset 0",
            &format!("4 KiB, {T}"),
            "read 4096/4096 bytes at offset 0",
            &format!("4 KiB, {T}"),
            "discard 65536/65536 bytes at offset 0",
            &format!("64 KiB, {T}"),
            "discard failed: Input/output error",
            "readv failed: Input/output error",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn aio_and_flush() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "aio_write -P 0x33 0 1k 1k",
            "aio_flush",
            "read -q -P 0x33 0 2k",
            "aio_read -P 0x34 0 1k",
            "aio_flush",
            "aio_write -i 0 1",
            "aio_read 2M 1",
            "aio_write 2M 1",
            "aio_flush",
            "flush",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "wrote 2048/2048 bytes at offset 0",
            &format!("2 KiB, {T}"),
            "Pattern verification failed at offset 0, 1024 bytes",
            "read 1024/1024 bytes at offset 0",
            &format!("1 KiB, {T}"),
            "injecting invalid write request",
            "readv failed: Input/output error",
            "aio_write failed: Input/output error",
        ])
    );
    // aio failures and aio pattern mismatches do not fail the run.
    assert_eq!(code, 0);
}

#[test]
fn map_alloc_info_truncate() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "map",
            "alloc 0",
            "alloc 64k 4M",
            "alloc 2M",
            "info",
            "truncate 2M",
            "length",
            "truncate -m bogus 1M",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)",
            "512/512 bytes allocated at offset 0 bytes",
            "983040/983040 bytes allocated at offset 64 KiB",
            "0/0 bytes allocated at offset 2 MiB",
            "format name: raw",
            "cluster size: 0 bytes",
            "vm state offset: 0 bytes",
            "2 MiB",
            "ERR: qemu-io: Invalid preallocation mode 'bogus'",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn read_only_no_file_and_unknown() {
    let ro = Some(OpenSpec {
        format: Some("raw".into()),
        read_only: true,
        ..OpenSpec::default()
    });
    let (out, code) = script(
        4096,
        ro,
        &[
            "write -X 0 1",
            "write 0",
            "discard 0 1",
            "truncate 1M",
            "read -q 0 1",
            "bogus",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "ERR: qemu-io: Block node is read-only",
            "ERR: bad argument count 1 to write, expected at least 2 arguments",
            "ERR: qemu-io: Block node is read-only",
            "ERR: qemu-io: Block node is read-only",
            "ERR: command \"bogus\" not found",
        ])
    );
    assert_eq!(code, 1);
    let (out, code) = script(
        4096,
        None,
        &["read 0 1", "write 0", "sleep 1", "help length", "length"],
    );
    assert_eq!(
        out,
        lines(&[
            "ERR: no file open, try 'help open'",
            "ERR: no file open, try 'help open'",
            "length -- gets the length of the current file",
            "ERR: no file open, try 'help open'",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn open_close_and_quit() {
    let (out, code) = script(
        4096,
        None,
        &[
            "open -t writeback $IMG",
            "write -q -P 7 0 4k",
            "open $IMG",
            "close",
            "close",
            "open -r -o driver=raw $IMG",
            "read -q -P 7 0 4k",
            "write 0 1",
            "close",
            "open -t bogus $IMG",
            "open /nonexistent/x",
            "quit",
            "length",
        ],
    );
    // `open -t writeback $IMG` without a format probes it as raw and warns, as qemu-io does
    // for a writable open (the second `open` is refused before it probes anything).
    let warnings = out
        .iter()
        .filter(|l| l.starts_with("ERR: WARNING: Image format was not specified"))
        .count();
    assert_eq!(warnings, 1, "{out:?}");
    let out: Vec<&String> = out
        .iter()
        .filter(|l| !l.starts_with("ERR: WARNING: Image format was not specified"))
        .collect();
    assert_eq!(out[0], "ERR: qemu-io: file open already, try 'help close'");
    assert_eq!(out[1], "ERR: no file open, try 'help open'");
    assert_eq!(out[2], "ERR: qemu-io: Block node is read-only");
    assert_eq!(out[3], "ERR: qemu-io: Invalid cache option: bogus");
    assert!(
        out[4].starts_with("ERR: qemu-io: can't open device /nonexistent/x: "),
        "{}",
        out[4]
    );
    assert_eq!(out.len(), 5);
    assert_eq!(code, 1);
}

#[test]
fn breakpoints_without_blkdebug() {
    let (out, code) = script(
        4096,
        raw(),
        &[
            "break write_aio A",
            "resume A",
            "remove_break A",
            "wait_break A",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "Could not set breakpoint: Operation not supported",
            "Could not resume request: Operation not supported",
            "Could not remove breakpoint A: Operation not supported",
            "Could not wait for breakpoint A: Operation not supported",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn write_from_file() {
    let (out, _) = script(
        4096,
        raw(),
        &[
            "write -q -P 0x61 0 6",
            "write -q -s $IMG 100 10",
            "read -v 96 16",
            "write -s /nonexistent 0 1",
        ],
    );
    assert_eq!(
        out[0],
        "00000060:  00 00 00 00 61 61 61 61 61 61 00 00 00 00 00 00  ....aaaaaa......"
    );
    assert_eq!(out[3], "ERR: /nonexistent: No such file or directory");
}

#[test]
fn reopen_switches_read_only_and_back() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "reopen -r",
            "write 0 512",
            "read -q 0 512",
            "reopen -w",
            "write -q -P 0x12 0 512",
            "read -q -P 0x12 0 512",
            "reopen -c writeback",
            "reopen",
        ],
    );
    assert_eq!(out, lines(&["ERR: qemu-io: Block node is read-only"]));
    assert_eq!(code, 1);
    // Opened read-only, made writable by reopen.
    let ro = OpenSpec {
        read_only: true,
        ..raw().unwrap()
    };
    let (out, code) = script(1 << 20, Some(ro), &["reopen -w", "write -q 0 512"]);
    assert_eq!((out, code), (Vec::<String>::new(), 0));
}

#[test]
fn reopen_refusals() {
    let (out, code) = script(
        1 << 20,
        raw(),
        &[
            "reopen -r -w",
            "reopen -c bogus",
            "reopen -x",
            "reopen extra",
            "reopen -o driver=qcow2",
            "reopen -o driver=raw",
            "reopen -o node-name=other",
            "reopen -o read-only=on -r",
            "reopen -c none -o cache.direct=on",
            "reopen -o read-only=on",
            "reopen -o lazy-refcounts=on",
            "write -q 0 512",
        ],
    );
    let usage = "reopen [(-r|-w)] [-c cache] [-o options] -- reopens an image with new options";
    assert_eq!(
        out,
        lines(&[
            "ERR: qemu-io: Only one -r/-w option may be given",
            "ERR: qemu-io: Invalid cache option: bogus",
            "ERR: reopen: invalid option -- 'x'",
            usage,
            usage,
            "ERR: qemu-io: Cannot change the option 'driver'",
            "ERR: qemu-io: Cannot change the option 'node-name'",
            "ERR: qemu-io: Cannot set both -r/-w and 'read-only'",
            "ERR: qemu-io: Cannot set both -c and the cache options",
            "ERR: qemu-io: Read-only block node 'disk' cannot support read-write users",
            "ERR: qemu-io: Cannot change the option 'lazy-refcounts'",
        ])
    );
    // Every refusal left the image writable.
    assert_eq!(code, 1);
    let (out, _) = script(1 << 20, None, &["reopen -r"]);
    assert_eq!(out, lines(&["ERR: no file open, try 'help open'"]));
}

#[test]
fn sigraise_and_zone_commands() {
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let sink = Rc::new(VecSink::new());
    let mut s = Session::new(engine, sink.clone(), SessionConfig::default());
    let r = env.block_on(s.run_line("sigraise 15"));
    assert_eq!(r, CommandResult::Raise(15));
    assert_eq!(
        env.block_on(s.run_line("sigraise 100")),
        CommandResult::Failed
    );
    assert_eq!(
        sink.texts(),
        ["signal argument '100' is too large to be a valid signal"]
    );
    env.shutdown();
    let (out, code) = script(
        1 << 20,
        raw(),
        &["zone_report 0 1", "zone_append 0 1 2", "zone_reset x 1"],
    );
    assert_eq!(
        out,
        lines(&[
            "zone report failed: Operation not supported",
            "zone append failed: Operation not supported",
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x",
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn help_prints_long_texts() {
    let (out, code) = script(1 << 20, None, &["help sigraise", "help o", "help flush"]);
    assert_eq!(code, 0);
    assert_eq!(out[0], "sigraise signal -- raises a signal");
    assert_eq!(out[1], "");
    assert_eq!(out[2], " raises the given signal");
    assert_eq!(out[8], " given to sigraise.");
    assert_eq!(out[9], "");
    assert!(out[10].starts_with("o [-rsCnkU] [-t cache]"));
    // open's text ends without a blank line, unlike the others.
    assert_eq!(
        out[out.len() - 2],
        " -o, -- options to be given to the block driver"
    );
    assert_eq!(
        out[out.len() - 1],
        "flush -- flush all in-core file state to disk"
    );
    let (out, _) = script(1 << 20, None, &["help"]);
    for name in ["reopen", "sigraise", "zone_report", "zone_append"] {
        assert!(
            out.iter().any(|l| l.starts_with(&format!("{name} "))),
            "{name}"
        );
    }
}

#[test]
fn blkdebug_suspend_resume_lines_and_remove_break_status() {
    let open =
        "open -o driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename=$IMG";
    let (out, code) = script(
        1 << 20,
        None,
        &[
            open,
            "break write_aio A",
            "aio_write -q 0 512",
            "wait_break A",
            "resume A",
            "aio_flush",
            "break write_aio B",
            "aio_write -q 0 512",
            "wait_break B",
            // The breakpoint fired, so there is none to remove (ENOENT), but the request
            // suspended under it goes on.
            "remove_break B",
            "aio_flush",
        ],
    );
    assert_eq!(
        out,
        lines(&[
            "blkdebug: Suspended request 'A'",
            "blkdebug: Resuming request 'A'",
            "blkdebug: Suspended request 'B'",
            "blkdebug: Resuming request 'B'",
            "Could not remove breakpoint B: No such file or directory",
        ])
    );
    assert_eq!(code, 1);
}
