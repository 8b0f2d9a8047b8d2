//! `blk io`: qemu-io's command line on the blk engine.
//!
//! `blk io [-f FMT | --image-opts] [-r] [-n | -t CACHE] [-d DISCARD] [-i AIO | -k] [-U]
//! [--timing real|filtered|omit] [-c CMD]... [FILE]` opens FILE and runs each `-c` command in
//! order, or reads commands from stdin after a `qemu-io> ` prompt when there is none. Options,
//! `--help`, output and exit status are qemu-io's: 1 when any command failed or the image could
//! not be opened, 0 otherwise; `sigraise N` raises signal N in this process, as qemu-io does.
//!
//! Defaults are qemu-io's, which differ from QEMU's block layer defaults: writethrough cache
//! and discard=unmap. `--timing` (a blk extension) selects real timing, iotests' filtered
//! form, or none; qemu-io has no `-q`, so neither has this.

use std::io::{BufRead, Write};
use std::rc::Rc;

use engine::Engine;

use super::getopt::split;
use super::stdout::c_stdio;
use engine::env::real::RealEnv;
use engine::qemu_io::{
    CacheMode, CommandResult, OpenSpec, OutLine, Session, SessionConfig, Sink, Stream, Timing,
};

const PROMPT: &str = "qemu-io> ";

const USAGE: &str = "\
Usage: qemu-io [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See 'qemu-io -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.";

/// Writes each line to the process's stdout (through C-like buffering) or stderr.
struct StdioSink;

impl Sink for StdioSink {
    fn line(&self, line: OutLine) {
        // stdout is block-buffered into a pipe and stderr is not, as in qemu-io: a merged
        // stream shows them in the same order as qemu-io's.
        match line.stream {
            Stream::Stdout => c_stdio::print(&format!("{}\n", line.text)),
            Stream::Stderr => {
                let _ = writeln!(std::io::stderr(), "{}", line.text);
            }
        }
    }
}

#[derive(Default)]
struct Args {
    commands: Vec<String>,
    file: Option<String>,
    spec: OpenSpec,
    timing: Timing,
    /// `--object` arguments, created before the image is opened.
    objects: Vec<String>,
    /// `-s`: writes go to a temporary overlay.
    snapshot: bool,
}

enum Parsed {
    Run(Box<Args>),
    Exit(i32),
}

fn fail(msg: impl std::fmt::Display) -> Parsed {
    super::prog::error(msg);
    Parsed::Exit(1)
}

/// Long options and whether they take an argument (blk's `--timing` only in full).
const LONG: [(&str, char, bool); 18] = [
    ("=timing", '\u{2}', true),
    ("object", 'O', true),
    ("help", 'h', false),
    ("version", 'V', false),
    ("cmd", 'c', true),
    ("format", 'f', true),
    ("read-only", 'r', false),
    ("snapshot", 's', false),
    ("nocache", 'n', false),
    ("copy-on-read", 'C', false),
    ("misalign", 'm', false),
    ("native-aio", 'k', false),
    ("aio", 'i', true),
    ("cache", 't', true),
    ("discard", 'd', true),
    ("trace", 'T', true),
    ("force-share", 'U', false),
    ("image-opts", '\u{1}', false),
];
const SHORT: &str = "hVc:f:rsnCmki:t:d:T:U";

fn parse_args(args: &[String]) -> Parsed {
    let (opts, operands) = match split(args, SHORT, &LONG) {
        Ok(v) => v,
        Err(msg) => {
            super::prog::error(msg);
            println!("{USAGE}");
            return Parsed::Exit(1);
        }
    };
    let mut a = Args::default();
    let mut format = None;
    for (c, v) in opts {
        match c {
            'h' => {
                println!("{USAGE}");
                return Parsed::Exit(0);
            }
            'V' => {
                print!("{}", super::prog::version());
                return Parsed::Exit(0);
            }
            'c' => a.commands.push(v),
            'f' => format = Some(v),
            'r' => a.spec.read_only = true,
            'n' => a.spec.cache = CacheMode::None,
            'k' => a.spec.aio = Some("native".into()),
            'i' => {
                if !matches!(v.as_str(), "threads" | "native" | "io_uring") {
                    return fail(format!("Invalid aio option: {v}"));
                }
                a.spec.aio = Some(v);
            }
            't' => match CacheMode::parse(&v) {
                Ok(m) => a.spec.cache = m,
                Err(e) => return fail(e),
            },
            'd' => match engine::qemu_io::parse_discard(&v) {
                Ok(unmap) => a.spec.discard_unmap = unmap,
                Err(e) => return fail(e),
            },
            'U' => a.spec.force_share = true,
            'm' => {}
            '\u{1}' => a.spec.image_opts = true,
            '\u{2}' => {
                a.timing = match v.as_str() {
                    "real" => Timing::Real,
                    "filtered" => Timing::Filtered,
                    "omit" => Timing::Omit,
                    _ => return fail(format!("Invalid timing mode: {v}")),
                }
            }
            's' => a.snapshot = true,
            'C' => a.spec.copy_on_read = true,
            'T' => return fail("-T (trace) is not supported by blk"),
            'O' => {
                if let Some(text) = crate::cli::img::object_help(&v) {
                    print!("{text}");
                    return Parsed::Exit(0);
                }
                a.objects.push(v)
            }
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    if a.spec.image_opts && format.is_some() {
        return fail("--image-opts and -f are mutually exclusive");
    }
    a.spec.format = format;
    match operands.len() {
        0 => {}
        1 => a.file = Some(operands[0].clone()),
        _ => {
            println!("{USAGE}");
            return Parsed::Exit(1);
        }
    }
    Parsed::Run(Box::new(a))
}

/// Entry point of `blk io ARGS...` (ARGS without "blk io"); returns the exit status.
pub fn run_io(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Parsed::Run(a) => a,
        Parsed::Exit(code) => return code,
    };
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    let cfg = SessionConfig {
        timing: a.timing,
        prefix: super::prog::name().to_string(),
        temp_dir: std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".to_string()),
        temp_tag: std::process::id().to_string(),
        ..SessionConfig::default()
    };
    let mut session = Session::new(engine.clone(), Rc::new(StdioSink), cfg);
    let mut code = 0;
    if let Err(e) = env.block_on(crate::cli::img::add_objects(&engine, &a.objects)) {
        super::prog::error(&e);
        let _ = env.block_on(engine.shutdown());
        env.shutdown();
        return 1;
    }
    if let Some(file) = &a.file {
        let spec = OpenSpec {
            filename: Some(file.clone()),
            snapshot: a.snapshot,
            ..a.spec.clone()
        };
        let opened = env.block_on(session.open(&spec));
        if let Err(e) = opened {
            if a.spec.image_opts {
                super::prog::error(format_args!("can't open: {e}"));
            } else {
                super::prog::error(format_args!("can't open device {file}: {e}"));
            }
            code = 1;
        }
    }
    if code == 0 {
        let result = if a.commands.is_empty() {
            run_stdin(&env, &mut session)
        } else {
            a.commands
                .iter()
                .map(|c| run_one(&env, &mut session, c))
                .find(|r| matches!(r, CommandResult::Quit | CommandResult::Abort))
                .unwrap_or(CommandResult::Ok)
        };
        if result == CommandResult::Abort {
            // Like abort(3) in qemu-io: what stdout still buffers is lost.
            std::process::abort();
        }
        // As qemu-io does at exit: let aio requests complete, then close the image.
        let _ = env.block_on(session.close());
        code = session.exit_code();
    }
    let _ = env.block_on(engine.shutdown());
    env.shutdown();
    c_stdio::flush();
    code
}

/// The interactive loop: a prompt before every line, until `quit` or end of input.
fn run_stdin(env: &RealEnv, session: &mut Session) -> CommandResult {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    loop {
        c_stdio::print(PROMPT);
        c_stdio::flush();
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return CommandResult::Ok,
            Ok(_) => {}
        }
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let r = run_one(env, session, line);
        if matches!(r, CommandResult::Quit | CommandResult::Abort) {
            return r;
        }
    }
}

/// Signals qemu-io catches itself (SIGBUS, SIGUSR1, SIGALRM): raising one leaves it running,
/// where the default action would kill blk.
const QEMU_HANDLED_SIGNALS: [u32; 3] = [7, 10, 14];

/// Run one command line; `sigraise` raises its signal here, after flushing what was printed
/// (as qemu-io does), and the run goes on if the process survives it.
fn run_one(env: &RealEnv, session: &mut Session, line: &str) -> CommandResult {
    let r = env.block_on(session.run_line(line));
    if let CommandResult::Raise(signal) = r {
        c_stdio::flush();
        if QEMU_HANDLED_SIGNALS.contains(&signal) {
            return CommandResult::Ok;
        }
        // SAFETY: raise() has no memory-safety preconditions; an invalid number just fails.
        unsafe {
            libc::raise(signal as libc::c_int);
        }
        return CommandResult::Ok;
    }
    r
}
