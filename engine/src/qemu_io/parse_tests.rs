//! Parser tests: every command, its flags, number syntax, and qemu-io's error messages and
//! streams (each expected text was checked against qemu-io 10.0.2).

use super::command::*;
use super::parse::{ParseErrorKind, parse_command, tokenize};
use super::{OutLine, Stream};

fn ok(line: &str) -> Command {
    parse_command(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

/// The error lines, stderr ones prefixed "ERR: ".
fn err(line: &str) -> Vec<String> {
    let e = parse_command(line).expect_err(line);
    e.lines
        .iter()
        .map(|OutLine { stream, text }| match stream {
            Stream::Stdout => text.clone(),
            Stream::Stderr => format!("ERR: {text}"),
        })
        .collect()
}

fn err1(line: &str) -> String {
    let e = err(line);
    assert_eq!(e.len(), 1, "{line}: {e:?}");
    e[0].clone()
}

const READ_USAGE: &str = "read [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset";
const WRITE_USAGE: &str = "write [-bcCfnqruz] [-P pattern | -s source_file] off len -- writes a number of bytes at a specified offset";

#[test]
fn tokenizing_splits_on_spaces_only() {
    assert_eq!(tokenize("  read   -q  0 1 "), vec!["read", "-q", "0", "1"]);
    assert_eq!(tokenize("read\t0"), vec!["read\t0"]);
    assert_eq!(tokenize("read \"5\""), vec!["read", "\"5\""]);
    assert_eq!(ok(""), Command::Nop);
    assert_eq!(ok("   "), Command::Nop);
    assert_eq!(err1("\tread 0 1"), "ERR: command \"\tread\" not found");
}

#[test]
fn read_and_flags() {
    let Command::Read(r) = ok("read -P 0xab -s 1 -l 2 -v -C -q 0x10 1k") else {
        panic!()
    };
    assert_eq!((r.offset, r.len), (16, 1024));
    assert_eq!(
        r.verify,
        Some(Verify {
            pattern: 0xab,
            offset: 1,
            len: 2
        })
    );
    assert!(r.dump && r.stats.quiet && r.stats.machine && !r.vmstate);
    let Command::Read(r) = ok("r 0 512 -P205 -s 10") else {
        panic!()
    };
    assert_eq!(
        r.verify,
        Some(Verify {
            pattern: 205,
            offset: 10,
            len: 502
        })
    );
    let Command::Read(r) = ok("read -p -r -b 512 1k") else {
        panic!()
    };
    assert!(r.vmstate && r.verify.is_none());
    assert_eq!(
        err1("read -P 1 -s 10 -l 10 0 16"),
        "pattern verification range exceeds end of read data"
    );
    assert_eq!(
        err1("read -P 1 -s 20 0 16"),
        "pattern verification range exceeds end of read data"
    );
    assert_eq!(err1("read -s 1 0 16"), READ_USAGE);
    assert_eq!(err1("read 0 1 2"), READ_USAGE);
    assert_eq!(
        err("read -a 0 1"),
        vec![
            "ERR: read: invalid option -- 'a'".to_string(),
            READ_USAGE.to_string()
        ]
    );
    assert_eq!(err("r 0 -5")[0], "ERR: r: invalid option -- '5'");
    assert!(err("r 0 -5")[1].starts_with("r [-abCqrv]"));
    assert_eq!(
        err("read 0 512 -P")[0],
        "ERR: read: option requires an argument -- 'P'"
    );
    assert_eq!(err1("read -P x 0 16"), "x is not a valid pattern byte");
    assert_eq!(err1("read -P 256 0 16"), "256 is not a valid pattern byte");
    assert_eq!(
        err1("read 0 3G"),
        "length cannot exceed 2147483136, given 3G"
    );
    assert_eq!(
        err1("read -b 1 512"),
        "1 is not a sector-aligned value for 'offset'"
    );
    assert_eq!(
        err1("read -b 512 1"),
        "1 is not a sector-aligned value for 'count'"
    );
    assert_eq!(
        err1("read -b -P 1 -s 600 1 512"),
        "pattern verification range exceeds end of read data"
    );
    assert_eq!(err1("read -b -s 1 1 512"), READ_USAGE);
    assert_eq!(
        err1("read x 1"),
        "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x"
    );
    assert_eq!(
        err1("read -- -1 512"),
        "Parsing error: argument too large -- -1"
    );
    let e = parse_command("read 0").unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::ArgCount);
    assert_eq!(
        e.lines,
        vec![OutLine::err(
            "bad argument count 1 to read, expected at least 2 arguments"
        )]
    );
}

#[test]
fn write_flags_and_checks() {
    let Command::Write(w) = ok("write -P 0x11 -f 1 513") else {
        panic!()
    };
    assert_eq!(
        (w.offset, w.len, w.data.clone(), w.fua),
        (1, 513, WriteData::Pattern(0x11), true)
    );
    let Command::Write(w) = ok("w 0 4k") else {
        panic!()
    };
    assert_eq!(w.data, WriteData::Pattern(0xcd));
    let Command::Write(w) = ok("write -zun 0 3G") else {
        panic!()
    };
    assert!(w.unmap && w.no_fallback && w.data == WriteData::Zeroes && w.len == 3 << 30);
    let Command::Write(w) = ok("write -c 0 64k") else {
        panic!()
    };
    assert!(w.compressed);
    let Command::Write(w) = ok("write -s /src 0 4") else {
        panic!()
    };
    assert_eq!(w.data, WriteData::File("/src".into()));
    assert_eq!(err1("write -u 0 1"), "-u requires -z to be specified");
    assert_eq!(err1("write -n 0 1"), "-n requires -z to be specified");
    assert_eq!(
        err1("write -zP 1 0 1"),
        "Only one of -z, -P, and -s can be specified at the same time"
    );
    assert_eq!(
        err1("write -zP 1 -u -n -f -b 0 1"),
        "-b and -z cannot be specified at the same time"
    );
    assert_eq!(
        err1("write -n -u -f -b 0 1"),
        "-f and -b or -c cannot be specified at the same time"
    );
    assert_eq!(
        err1("write -P 1 -s f -u 0 1"),
        "-u requires -z to be specified"
    );
    assert_eq!(
        err1("write 0 3G"),
        "length cannot exceed 2147483136 without -n, given 3G"
    );
    assert_eq!(
        err1("write -c 1 512"),
        "1 is not a sector-aligned value for 'offset'"
    );
    assert_eq!(
        err1("write -c -z 0 1"),
        "1 is not a sector-aligned value for 'count'"
    );
    assert_eq!(
        err1("write -b 1 3G"),
        "length cannot exceed 2147483136 without -n, given 3G"
    );
    assert_eq!(err1("write 0 1 2"), WRITE_USAGE);
    assert_eq!(
        err1("write -P 0x100 0 16"),
        "0x100 is not a valid pattern byte"
    );
    assert_eq!(err("write -i 0 4k")[0], "ERR: write: invalid option -- 'i'");
    assert_eq!(
        err1("write"),
        "ERR: bad argument count 0 to write, expected at least 2 arguments"
    );
}

#[test]
fn vectored_and_aio() {
    let Command::Readv(v) = ok("readv -P 0x11 -v 512 512 512 1") else {
        panic!()
    };
    assert_eq!(
        (v.offset, v.lens.clone(), v.total(), v.pattern, v.dump),
        (512, vec![512, 512, 1], 1025, Some(0x11), true)
    );
    let Command::Writev(v) = ok("writev -f -q 0 1k 2k") else {
        panic!()
    };
    assert!(v.fua && v.stats.quiet && v.total() == 3072);
    let Command::AioRead(v) = ok("aio_read -i 0 4k") else {
        panic!()
    };
    assert!(v.invalid);
    let Command::AioWrite(w) = ok("aio_write -zP 1 -u 0 1") else {
        panic!()
    };
    assert!(w.zero && w.unmap && w.io.pattern == Some(1));
    assert_eq!(err1("aio_write -u 8k 4k"), "-u requires -z to be specified");
    assert_eq!(
        err("aio_write -c 0 4k")[0],
        "ERR: aio_write: invalid option -- 'c'"
    );
    assert_eq!(
        err("aio_read -s 1 0 4k")[0],
        "ERR: aio_read: invalid option -- 's'"
    );
    assert_eq!(
        err("writev -z 0 1")[0],
        "ERR: writev: invalid option -- 'z'"
    );
    assert_eq!(
        err1("readv 0 3G"),
        "Argument '3G' exceeds maximum size 2147483136"
    );
    assert_eq!(
        err1("aio_write 0 1G 1G 1G"),
        "The total number of bytes exceed the maximum size 2147483136"
    );
    assert_eq!(
        err1("readv 0 1 x"),
        "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x"
    );
    assert_eq!(
        err1("aio_read"),
        "ERR: bad argument count 0 to aio_read, expected at least 2 arguments"
    );
}

#[test]
fn other_commands() {
    assert_eq!(
        ok("discard -q 0 64k"),
        Command::Discard {
            offset: 0,
            len: 65536,
            stats: Stats {
                quiet: true,
                machine: false
            }
        }
    );
    assert!(matches!(ok("d 0 1"), Command::Discard { .. }));
    assert_eq!(
        err1("discard 0 3G"),
        "length cannot exceed 2147483136, given 3G"
    );
    assert_eq!(
        err("discard -P 1 0 1")[0],
        "ERR: discard: invalid option -- 'P'"
    );
    assert_eq!(
        ok("truncate 1k 2"),
        Command::Truncate {
            len: 1024,
            prealloc: None
        }
    );
    assert_eq!(
        ok("t -m full 2M"),
        Command::Truncate {
            len: 2 << 20,
            prealloc: Some("full".into())
        }
    );
    assert_eq!(
        err("truncate -m")[0],
        "ERR: truncate: option requires an argument -- 'm'"
    );
    assert_eq!(
        err1("truncate"),
        "ERR: bad argument count 0 to truncate, expected between 1 and 3 arguments"
    );
    assert_eq!(
        ok("alloc 0x10000 0x1000"),
        Command::Alloc {
            offset: 65536,
            count: 4096
        }
    );
    assert_eq!(
        ok("a 0"),
        Command::Alloc {
            offset: 0,
            count: 512
        }
    );
    assert_eq!(
        err1("alloc 0 1 2"),
        "ERR: bad argument count 3 to alloc, expected between 1 and 2 arguments"
    );
    assert_eq!(ok("sleep 0x10"), Command::Sleep { ms: 16 });
    assert_eq!(ok("sleep 010"), Command::Sleep { ms: 8 });
    assert_eq!(err1("sleep 1.5"), "1.5 is not a valid number");
    assert_eq!(err1("sleep -1"), "-1 is not a valid number");
    for (line, cmd) in [
        ("length", Command::Length),
        ("l", Command::Length),
        ("info", Command::Info),
        ("i", Command::Info),
        ("map", Command::Map),
        ("flush", Command::Flush),
        ("f", Command::Flush),
        ("aio_flush", Command::AioFlush),
        ("close", Command::Close),
        ("c", Command::Close),
        ("quit", Command::Quit),
        ("q", Command::Quit),
        ("abort", Command::Abort),
        ("help", Command::Help(None)),
        ("? read", Command::Help(Some("read".into()))),
    ] {
        assert_eq!(ok(line), cmd, "{line}");
    }
    assert_eq!(
        err1("map 1"),
        "ERR: bad argument count 1 to map, expected 0 arguments"
    );
    assert_eq!(
        err1("length 1"),
        "ERR: bad argument count 1 to length, expected 0 arguments"
    );
    assert_eq!(err1("len"), "ERR: command \"len\" not found");
    assert_eq!(err1("bogus"), "ERR: command \"bogus\" not found");
    assert_eq!(
        parse_command("bogus").unwrap_err().kind,
        ParseErrorKind::NotFound
    );
}

#[test]
fn breakpoints_and_open() {
    assert_eq!(
        ok("break write_aio A"),
        Command::Break {
            event: "write_aio".into(),
            tag: "A".into()
        }
    );
    assert_eq!(ok("wait_break A"), Command::WaitBreak { tag: "A".into() });
    assert_eq!(ok("resume A"), Command::Resume { tag: "A".into() });
    assert_eq!(
        ok("remove_break A"),
        Command::RemoveBreak { tag: "A".into() }
    );
    assert_eq!(
        err1("break write_aio"),
        "ERR: bad argument count 1 to break, expected 2 arguments"
    );
    let Command::Open {
        read_only,
        cache,
        options,
        path,
        ..
    } = ok("open -r -t none -o driver=raw /x")
    else {
        panic!()
    };
    assert!(read_only);
    assert_eq!(
        (cache.as_deref(), options.as_deref(), path.as_deref()),
        (Some("none"), Some("driver=raw"), Some("/x"))
    );
    assert_eq!(err("o -f raw x")[0], "ERR: o: invalid option -- 'f'");
    assert_eq!(
        err1("open"),
        "ERR: bad argument count 0 to open, expected at least 1 arguments"
    );
}
