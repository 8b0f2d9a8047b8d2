//! `parse_command`: one qemu-io line into a [`Command`], with qemu-io's messages and its order
//! of checks (unknown command, argument count, then options in command-line order, operands,
//! option combinations, numbers, length limits, alignment).
//!
//! Two checks depend on the session and are left to the executor, which makes them between the
//! argument count and the rest, as qemu-io does: "no file open" and "Block node is read-only".
//! [`ParseError::kind`] tells the executor which stage failed.

use super::command::{AioWrite, Command, Read, Stats, Vectored, Verify, Write, WriteData};
use super::num::{cvtnum, parse_pattern, strtol0};
use super::open::CacheMode;
use super::spec::{CmdSpec, lookup_command};
use super::{MAX_REQUEST_BYTES, OutLine};
use crate::util::getopt::{Opt, getopt};

/// Which stage of parsing failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// No such command.
    NotFound,
    /// Too few or too many words for the command.
    ArgCount,
    /// Bad options, operands or numbers.
    Invalid,
    /// A refusal qemu-io reports with `error_report`: each line goes to stderr after the
    /// program name (which the parser does not know).
    Report,
}

/// A line that qemu-io would refuse, with the lines it would print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The failing stage.
    pub kind: ParseErrorKind,
    /// The command, when it was found.
    pub command: Option<&'static CmdSpec>,
    /// qemu-io's output for the error.
    pub lines: Vec<OutLine>,
}

/// Split a line into words as qemu-io does: on spaces only (not tabs), empty words dropped, no
/// quoting of any kind.
pub fn tokenize(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Parse one command line. An empty (or all-space) line is [`Command::Nop`].
pub fn parse_command(line: &str) -> Result<Command, ParseError> {
    let words = tokenize(line);
    let Some((typed, args)) = words.split_first() else {
        return Ok(Command::Nop);
    };
    let Some(spec) = lookup_command(typed) else {
        return Err(ParseError {
            kind: ParseErrorKind::NotFound,
            command: None,
            lines: vec![OutLine::err(format!("command \"{typed}\" not found"))],
        });
    };
    if let Some(msg) = spec.arg_count_error(typed, args.len()) {
        return Err(ParseError {
            kind: ParseErrorKind::ArgCount,
            command: Some(spec),
            lines: vec![OutLine::err(msg)],
        });
    }
    let p = P { spec, typed };
    if spec.name == "reopen" {
        return p.reopen(args);
    }
    p.parse(args).map_err(|lines| ParseError {
        kind: ParseErrorKind::Invalid,
        command: Some(spec),
        lines,
    })
}

type R<T> = Result<T, Vec<OutLine>>;

/// Options with their arguments (in order) and the operands.
type OptsAndOperands = (Vec<(char, String)>, Vec<String>);

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(vec![OutLine::out(msg)])
}

/// Parsing context: the command and the name it was typed as (messages use the latter).
struct P<'a> {
    spec: &'static CmdSpec,
    typed: &'a str,
}

impl P<'_> {
    fn usage<T>(&self) -> R<T> {
        fail(self.spec.usage(self.typed))
    }

    /// Options in order, stopping at the first bad one with getopt's message and the usage.
    fn opts(&self, args: &[String], optstring: &str) -> R<OptsAndOperands> {
        getopt(args, optstring, None).into_pairs().map_err(|msg| {
            vec![
                OutLine::err(format!("{}: {msg}", self.typed)),
                OutLine::out(self.spec.usage(self.typed)),
            ]
        })
    }

    fn num(&self, arg: &str) -> R<u64> {
        cvtnum(arg).or_else(|e| fail(e.message(arg)))
    }

    /// `off len [len..]` for the vectored commands.
    fn iovec(&self, operands: &[String]) -> R<(u64, Vec<u64>)> {
        if operands.len() < 2 {
            return self.usage();
        }
        let offset = self.num(&operands[0])?;
        let mut lens = Vec::new();
        let mut total = 0u64;
        for arg in &operands[1..] {
            let len = self.num(arg)?;
            if len > MAX_REQUEST_BYTES {
                return fail(format!(
                    "Argument '{arg}' exceeds maximum size {MAX_REQUEST_BYTES}"
                ));
            }
            total += len;
            if total > MAX_REQUEST_BYTES {
                return fail(format!(
                    "The total number of bytes exceed the maximum size {MAX_REQUEST_BYTES}"
                ));
            }
            lens.push(len);
        }
        Ok((offset, lens))
    }

    fn parse(&self, args: &[String]) -> R<Command> {
        Ok(match self.spec.name {
            "read" => Command::Read(self.read(args)?),
            "readv" | "aio_read" | "writev" => self.vectored(args)?,
            "write" => Command::Write(self.write(args)?),
            "aio_write" => self.aio_write(args)?,
            "discard" => self.discard(args)?,
            "truncate" => self.truncate(args)?,
            "alloc" => self.alloc(args)?,
            "sleep" => match strtol0(&args[0]) {
                Some(ms) if ms >= 0 => Command::Sleep { ms: ms as u64 },
                _ => return fail(format!("{} is not a valid number", args[0])),
            },
            "open" => self.open(args)?,
            "sigraise" => self.sigraise(args)?,
            name if name.starts_with("zone_") => {
                for a in args {
                    self.num(a)?;
                }
                Command::Zone { name }
            }
            "help" => Command::Help(args.first().cloned()),
            "break" => Command::Break {
                event: args[0].clone(),
                tag: args[1].clone(),
            },
            "wait_break" => Command::WaitBreak {
                tag: args[0].clone(),
            },
            "resume" => Command::Resume {
                tag: args[0].clone(),
            },
            "remove_break" => Command::RemoveBreak {
                tag: args[0].clone(),
            },
            "aio_flush" => Command::AioFlush,
            "flush" => Command::Flush,
            "length" => Command::Length,
            "info" => Command::Info,
            "map" => Command::Map,
            "close" => Command::Close,
            "quit" => Command::Quit,
            "abort" => Command::Abort,
            other => unreachable!("command {other} in the table but not parsed"),
        })
    }

    /// The `off len` operands of read and discard (usage error unless exactly two; the
    /// length at most one request).
    fn offset_len(&self, ops: &[String]) -> R<(u64, u64)> {
        if ops.len() != 2 {
            return self.usage();
        }
        let offset = self.num(&ops[0])?;
        let len = self.num(&ops[1])?;
        if len > MAX_REQUEST_BYTES {
            return fail(format!(
                "length cannot exceed {MAX_REQUEST_BYTES}, given {}",
                ops[1]
            ));
        }
        Ok((offset, len))
    }

    /// `discard [-Cq] off len`.
    fn discard(&self, args: &[String]) -> R<Command> {
        let (opts, ops) = self.opts(args, "Cq")?;
        let stats = stats_of(&opts);
        let (offset, len) = self.offset_len(&ops)?;
        Ok(Command::Discard { offset, len, stats })
    }

    /// `truncate [-m prealloc] len`.
    fn truncate(&self, args: &[String]) -> R<Command> {
        let (opts, ops) = self.opts(args, "m:")?;
        let prealloc = opts.into_iter().next_back().map(|(_, a)| a);
        // qemu-io takes the first operand and ignores any others.
        let Some(first) = ops.first() else {
            return self.usage();
        };
        Ok(Command::Truncate {
            len: self.num(first)?,
            prealloc,
        })
    }

    /// `alloc off [count]`.
    fn alloc(&self, args: &[String]) -> R<Command> {
        let offset = self.num(&args[0])?;
        let count = match args.get(1) {
            Some(a) => self.num(a)?,
            None => 512,
        };
        Ok(Command::Alloc { offset, count })
    }

    /// `sigraise signal`.
    fn sigraise(&self, args: &[String]) -> R<Command> {
        // Linux's NSIG: numbers up to it are accepted (65 is, and raise() then fails
        // silently, as in qemu-io).
        const NSIG: u64 = 65;
        let signal = self.num(&args[0])?;
        if signal > NSIG {
            return fail(format!(
                "signal argument '{}' is too large to be a valid signal",
                args[0]
            ));
        }
        Ok(Command::Sigraise {
            signal: signal as u32,
        })
    }

    fn read(&self, args: &[String]) -> R<Read> {
        let (opts, ops) = self.opts(args, "bCl:pP:qrs:v")?;
        let (mut vmstate, mut dump) = (false, false);
        let (mut pattern, mut pat_off, mut pat_len) = (None, None, None);
        for (c, arg) in &opts {
            match c {
                'b' => vmstate = true,
                'l' => pat_len = Some(self.num(arg)?),
                'P' => pattern = Some(parse_pattern(arg).or_else(|e| fail(e.to_string()))?),
                's' => pat_off = Some(self.num(arg)?),
                'v' => dump = true,
                _ => {} // -C, -q are in stats; -p, -r are accepted and ignored, as in qemu-io
            }
        }
        let (offset, len) = self.offset_len(&ops)?;
        if pattern.is_none() && (pat_off.is_some() || pat_len.is_some()) {
            return self.usage();
        }
        let verify = match pattern {
            None => None,
            Some(pattern) => {
                let off = pat_off.unwrap_or(0) as i128;
                let vlen = pat_len.map_or(len as i128 - off, |l| l as i128);
                if vlen < 0 || off + vlen > len as i128 {
                    return fail("pattern verification range exceeds end of read data");
                }
                Some(Verify {
                    pattern,
                    offset: off as u64,
                    len: vlen as u64,
                })
            }
        };
        if vmstate {
            sector_aligned(offset, len)?;
        }
        Ok(Read {
            offset,
            len,
            verify,
            vmstate,
            dump,
            stats: stats_of(&opts),
        })
    }

    fn vectored(&self, args: &[String]) -> R<Command> {
        let optstring = match self.spec.name {
            "readv" => "CP:qrv",
            "aio_read" => "CiP:qrv",
            _ => "CfP:qr",
        };
        let (opts, ops) = self.opts(args, optstring)?;
        let mut v = Vectored {
            offset: 0,
            lens: Vec::new(),
            pattern: None,
            dump: false,
            fua: false,
            invalid: false,
            stats: stats_of(&opts),
        };
        for (c, arg) in &opts {
            match c {
                'P' => v.pattern = Some(parse_pattern(arg).or_else(|e| fail(e.to_string()))?),
                'v' => v.dump = true,
                'f' => v.fua = true,
                'i' => v.invalid = true,
                _ => {}
            }
        }
        (v.offset, v.lens) = self.iovec(&ops)?;
        Ok(match self.spec.name {
            "readv" => Command::Readv(v),
            "aio_read" => Command::AioRead(v),
            _ => Command::Writev(v),
        })
    }

    fn aio_write(&self, args: &[String]) -> R<Command> {
        let (opts, ops) = self.opts(args, "CfiP:qruz")?;
        let (mut pattern, mut fua, mut invalid, mut zero, mut unmap) =
            (None, false, false, false, false);
        for (c, arg) in &opts {
            match c {
                'P' => pattern = Some(parse_pattern(arg).or_else(|e| fail(e.to_string()))?),
                'f' => fua = true,
                'i' => invalid = true,
                'z' => zero = true,
                'u' => unmap = true,
                _ => {}
            }
        }
        if ops.len() < 2 {
            return self.usage();
        }
        if unmap && !zero {
            return fail("-u requires -z to be specified");
        }
        let (offset, lens) = self.iovec(&ops)?;
        let io = Vectored {
            offset,
            lens,
            pattern,
            dump: false,
            fua,
            invalid,
            stats: stats_of(&opts),
        };
        Ok(Command::AioWrite(AioWrite { io, zero, unmap }))
    }

    fn write(&self, args: &[String]) -> R<Write> {
        let (opts, ops) = self.opts(args, "bcCfnpP:qrs:uz")?;
        let mut w = Write {
            offset: 0,
            len: 0,
            data: WriteData::Pattern(0xcd),
            fua: false,
            compressed: false,
            no_fallback: false,
            unmap: false,
            vmstate: false,
            stats: stats_of(&opts),
        };
        let (mut zero, mut pattern, mut source) = (false, None, None);
        for (c, arg) in &opts {
            match c {
                'b' => w.vmstate = true,
                'c' => w.compressed = true,
                'f' => w.fua = true,
                'n' => w.no_fallback = true,
                'P' => pattern = Some(parse_pattern(arg).or_else(|e| fail(e.to_string()))?),
                's' => source = Some(arg.clone()),
                'u' => w.unmap = true,
                'z' => zero = true,
                _ => {}
            }
        }
        if ops.len() != 2 {
            return self.usage();
        }
        if w.vmstate && zero {
            return fail("-b and -z cannot be specified at the same time");
        }
        if w.fua && (w.vmstate || w.compressed) {
            return fail("-f and -b or -c cannot be specified at the same time");
        }
        if w.no_fallback && !zero {
            return fail("-n requires -z to be specified");
        }
        if w.unmap && !zero {
            return fail("-u requires -z to be specified");
        }
        if zero as u8 + pattern.is_some() as u8 + source.is_some() as u8 > 1 {
            return fail("Only one of -z, -P, and -s can be specified at the same time");
        }
        w.offset = self.num(&ops[0])?;
        w.len = self.num(&ops[1])?;
        if w.len > MAX_REQUEST_BYTES && !w.no_fallback {
            return fail(format!(
                "length cannot exceed {MAX_REQUEST_BYTES} without -n, given {}",
                ops[1]
            ));
        }
        if w.vmstate || w.compressed {
            sector_aligned(w.offset, w.len)?;
        }
        w.data = match (zero, pattern, source) {
            (true, _, _) => WriteData::Zeroes,
            (_, Some(p), _) => WriteData::Pattern(p),
            (_, _, Some(path)) => WriteData::File(path),
            _ => WriteData::Pattern(0xcd),
        };
        Ok(w)
    }

    fn open(&self, args: &[String]) -> R<Command> {
        let (opts, ops) = self.opts(args, "rsCnkt:d:o:U")?;
        let has = |f: char| opts.iter().any(|(c, _)| *c == f);
        let last = |f: char| {
            opts.iter()
                .rev()
                .find(|(c, _)| *c == f)
                .map(|(_, a)| a.clone())
        };
        let path = match ops.len() {
            0 => None,
            1 => Some(ops[0].clone()),
            _ => return self.usage(),
        };
        Ok(Command::Open {
            read_only: has('r'),
            snapshot: has('s'),
            copy_on_read: has('C'),
            nocache: has('n'),
            force_share: has('U'),
            native_aio: has('k'),
            cache: last('t'),
            discard: last('d'),
            options: last('o'),
            path,
        })
    }
}

impl P<'_> {
    /// `reopen`: qemu-io checks each option as getopt returns it, so a bad cache mode or a
    /// second `-r`/`-w` is reported before a later invalid option.
    fn reopen(&self, args: &[String]) -> Result<Command, ParseError> {
        let report = |msg: String| ParseError {
            kind: ParseErrorKind::Report,
            command: Some(self.spec),
            lines: vec![OutLine::err(msg)],
        };
        let invalid = |lines: Vec<OutLine>| ParseError {
            kind: ParseErrorKind::Invalid,
            command: Some(self.spec),
            lines,
        };
        let parsed = getopt(args, "c:o:rw", None);
        let (mut read_only, mut cache, mut options) = (None, None, None);
        for o in parsed.opts {
            match o {
                Opt::Ok('c', Some(mode)) => {
                    if CacheMode::parse(&mode).is_err() {
                        return Err(report(format!("Invalid cache option: {mode}")));
                    }
                    cache = Some(mode);
                }
                Opt::Ok('o', Some(opts)) => options = Some(opts),
                Opt::Ok(c @ ('r' | 'w'), _) => {
                    if read_only.is_some() {
                        return Err(report("Only one -r/-w option may be given".into()));
                    }
                    read_only = Some(c == 'r');
                }
                _ => {
                    // Reuse the common message for the bad option.
                    return Err(invalid(self.opts(args, "c:o:rw").err().unwrap_or_default()));
                }
            }
        }
        if !parsed.operands.is_empty() {
            return Err(invalid(vec![OutLine::out(self.spec.usage(self.typed))]));
        }
        Ok(Command::Reopen {
            read_only,
            cache,
            options,
        })
    }
}

fn stats_of(opts: &[(char, String)]) -> Stats {
    Stats {
        quiet: opts.iter().any(|(c, _)| *c == 'q'),
        machine: opts.iter().any(|(c, _)| *c == 'C'),
    }
}

fn sector_aligned(offset: u64, len: u64) -> R<()> {
    if offset & 511 != 0 {
        return fail(format!(
            "{offset} is not a sector-aligned value for 'offset'"
        ));
    }
    if len & 511 != 0 {
        return fail(format!("{len} is not a sector-aligned value for 'count'"));
    }
    Ok(())
}
