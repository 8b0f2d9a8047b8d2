//! The executor: a [`Session`] runs commands against one device, in qemu-io's order of checks
//! ("no file open", argument count, "Block node is read-only", then the command's own), and
//! writes qemu-io's output to its [`Sink`]. Data commands live in `exec_io`; this file has the
//! session itself and the commands that do no data I/O.
//!
//! Failures are remembered for the exit status as qemu-io does: any failing synchronous
//! command makes the run fail; aio failures and aio pattern mismatches do not.

use std::rc::Rc;

use crate::backend::{BackendOptions, BlockBackend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::types::Perms;

use super::command::Command;
use super::exec_io::{self, AioState, IoCtx};
use super::format::{Timing, human_size};
use super::open::OpenSpec;
use super::parse::{ParseErrorKind, parse_command};
use super::spec::{CmdSpec, lookup_command};
use super::{OutLine, Sink};

#[path = "exec_ctl.rs"]
mod ctl;
#[path = "exec_reopen.rs"]
mod reopen;
#[path = "exec_snapshot.rs"]
mod snapshot;

/// How a session prints.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Timing in reports.
    pub timing: Timing,
    /// Program name before `error_report` messages ("qemu-io: Block node is read-only").
    pub prefix: String,
    /// Device (BlockBackend) name used when the session opens an image itself.
    pub device_name: String,
    /// Suppress every command's report and dump, as if each had `-q`.
    pub quiet: bool,
    /// Directory for `-s`'s temporary overlays (qemu-io: `$TMPDIR`, else `/var/tmp`).
    pub temp_dir: String,
    /// Part of a temporary overlay's name that tells this process's apart (the CLI: its pid).
    pub temp_tag: String,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            timing: Timing::Real,
            prefix: "qemu-io".to_string(),
            device_name: "qemu-io".to_string(),
            quiet: false,
            temp_dir: "/var/tmp".to_string(),
            temp_tag: "0".to_string(),
        }
    }
}

/// The outcome of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResult {
    /// Done (aio commands: submitted).
    Ok,
    /// The command failed (its output says why); the run's exit status becomes 1.
    Failed,
    /// `quit`: stop reading commands.
    Quit,
    /// `abort`: the caller simulates a crash.
    Abort,
    /// `sigraise N`: the caller raises signal N (after flushing its output) and goes on with
    /// the next command if it survives.
    Raise(u32),
}

/// A qemu-io session on (at most) one device.
pub struct Session {
    engine: Rc<Engine>,
    dev: Option<Rc<BlockBackend>>,
    /// The nodes this session added with `open`, top first (released again by `close`).
    owned_nodes: Vec<String>,
    out: Rc<dyn Sink>,
    cfg: SessionConfig,
    aio: Rc<AioState>,
    failed: bool,
    /// Tags of requests announced "Suspended" (by `wait_break` or `resume`) and not yet
    /// announced "Resuming", one entry per request.
    suspended: Vec<String>,
}

impl Session {
    /// A session with no image open.
    pub fn new(engine: Rc<Engine>, out: Rc<dyn Sink>, cfg: SessionConfig) -> Session {
        // The engine's diagnostics ("qcow2: Marking image as corrupt: ...") go to stderr, as
        // qemu-io prints them.
        let sink = out.clone();
        engine.graph().set_reporter(Some(Rc::new(move |line: &str| {
            sink.line(OutLine::err(line))
        })));
        Session {
            engine,
            dev: None,
            owned_nodes: Vec::new(),
            out,
            cfg,
            aio: Rc::new(AioState::default()),
            failed: false,
            suspended: Vec::new(),
        }
    }

    /// Use an existing device (the simulator's); `close` detaches it from the engine.
    pub fn attach(&mut self, dev: Rc<BlockBackend>) {
        self.dev = Some(dev);
    }

    /// The device, if one is open.
    pub fn device(&self) -> Option<&Rc<BlockBackend>> {
        self.dev.as_ref()
    }

    /// True once any command failed (qemu-io then exits with 1).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// qemu-io's exit status so far.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed)
    }

    /// aio requests submitted and not yet completed.
    pub fn aio_in_flight(&self) -> u64 {
        self.aio.outstanding.get()
    }

    fn out(&self, text: impl Into<String>) {
        self.out.line(OutLine::out(text));
    }

    fn err(&self, text: impl Into<String>) {
        self.out.line(OutLine::err(text));
    }

    /// An `error_report` line: stderr, with the program prefix.
    fn report_err(&self, msg: impl std::fmt::Display) {
        self.err(format!("{}: {msg}", self.cfg.prefix));
    }

    fn fail(&mut self) -> CommandResult {
        self.failed = true;
        CommandResult::Failed
    }

    /// Open an image and attach the session's device to it. Prints nothing: the caller
    /// reports errors in its own words ("can't open device ...").
    pub async fn open(&mut self, spec: &OpenSpec) -> Result<()> {
        let spec = &spec.probed(&self.engine).await?;
        if spec.probed_raw && !spec.read_only && !spec.snapshot {
            let name = spec.filename.as_deref().unwrap_or_default();
            self.err(crate::probe::raw_warning(name));
        }
        if spec.copy_on_read && spec.read_only {
            return Err(Error::generic("Can't use copy-on-read on read-only device"));
        }
        let node = if spec.snapshot {
            self.add_snapshot_overlay(spec).await
        } else {
            let added = spec.add_to(&self.engine).await;
            if let Ok(node) = &added {
                self.owned_nodes.push(node.name().to_string());
            }
            added
        };
        let node = match node {
            Ok(node) => node,
            Err(e) => {
                let _ = self.release_nodes().await;
                return Err(e);
            }
        };
        let name = node.name().to_string();
        let mut opts = BackendOptions::tool(spec.read_only);
        if spec.force_share {
            opts.shared = Perms::ALL;
        }
        opts.copy_on_read = spec.copy_on_read;
        match self.engine.device_add(&self.cfg.device_name, &name, opts) {
            Ok(bb) => {
                bb.set_write_cache(spec.cache.write_cache());
                self.dev = Some(bb);
                Ok(())
            }
            Err(e) => {
                let _ = self.release_nodes().await;
                Err(e)
            }
        }
    }

    /// Wait until every aio request has completed (`aio_flush`).
    pub async fn wait_aio(&self) {
        while self.aio.outstanding.get() > 0 {
            self.aio.idle.wait().await;
        }
    }

    /// Wait for aio, detach the device and release the node `open` added.
    pub async fn close(&mut self) -> Result<()> {
        self.wait_aio().await;
        let Some(dev) = self.dev.take() else {
            return Ok(());
        };
        let r = self.engine.device_del(dev.name()).await;
        r.and(self.release_nodes().await)
    }

    /// Delete the nodes `open` added, top first; the first error is returned.
    async fn release_nodes(&mut self) -> Result<()> {
        let mut result = Ok(());
        for node in std::mem::take(&mut self.owned_nodes) {
            let r = self.engine.blockdev_del(&node).await;
            result = result.and(r);
        }
        result
    }

    /// Parse and run one line.
    pub async fn run_line(&mut self, line: &str) -> CommandResult {
        match parse_command(line) {
            Ok(cmd) => self.run(&cmd).await,
            Err(e) => {
                let arg_count_failed = e.kind == ParseErrorKind::ArgCount;
                if let Some(r) = e.command.and_then(|c| self.precheck(c, arg_count_failed)) {
                    return r;
                }
                for l in e.lines {
                    match e.kind {
                        ParseErrorKind::Report => self.report_err(l.text),
                        _ => self.out.line(l),
                    }
                }
                self.fail()
            }
        }
    }

    /// The checks qemu-io makes before a command's own: an image must be open, and a command
    /// that writes needs a writable one (not made when the argument count was wrong: that
    /// message comes first).
    fn precheck(&mut self, spec: &CmdSpec, arg_count_failed: bool) -> Option<CommandResult> {
        let Some(dev) = &self.dev else {
            if spec.nofile_ok {
                return None;
            }
            self.err("no file open, try 'help open'");
            return Some(self.fail());
        };
        if !arg_count_failed && spec.needs_write && !dev.options().perm.contains(Perms::WRITE) {
            self.report_err("Block node is read-only");
            return Some(self.fail());
        }
        None
    }

    /// Run a parsed command.
    pub async fn run(&mut self, cmd: &Command) -> CommandResult {
        if let Command::Nop = cmd {
            return CommandResult::Ok;
        }
        let spec = lookup_command(cmd.name()).expect("every command is in the table");
        if let Some(r) = self.precheck(spec, false) {
            return r;
        }
        let ok = match self.dev.clone() {
            Some(dev) => {
                let io = IoCtx {
                    env: self.engine.env().clone(),
                    dev,
                    out: self.out.clone(),
                    timing: self.cfg.timing,
                    quiet: self.cfg.quiet,
                    aio: self.aio.clone(),
                };
                match exec_io::run(&io, cmd).await {
                    Some(ok) => ok,
                    None => return self.run_control(cmd).await,
                }
            }
            None => return self.run_control(cmd).await,
        };
        if ok { CommandResult::Ok } else { self.fail() }
    }

    async fn run_control(&mut self, cmd: &Command) -> CommandResult {
        let ok = match cmd {
            Command::AioFlush => {
                self.wait_aio().await;
                true
            }
            // qemu-io reports nothing when a flush fails; only the exit status shows it.
            Command::Flush => self.dev().flush().await.is_ok(),
            Command::Truncate { len, prealloc } => self.truncate(*len, prealloc.as_deref()).await,
            Command::Length => match self.dev().len() {
                Ok(n) => {
                    self.out(human_size(n as f64));
                    true
                }
                Err(e) => {
                    self.out(format!("getlength: {}", e.strerror()));
                    false
                }
            },
            Command::Info => self.info(),
            Command::Map => self.map().await,
            Command::Alloc { offset, count } => self.alloc(*offset, *count).await,
            Command::Sleep { ms } => {
                let env = self.engine.env().clone();
                // A deadline that overflows fires at once, as qemu-io's timer does.
                if let Some(deadline) = ms
                    .checked_mul(1_000_000)
                    .and_then(|d| d.checked_add(env.now_ns()))
                {
                    env.sleep_until(deadline).await;
                }
                true
            }
            Command::Open { .. } => self.open_cmd(cmd).await,
            Command::Close => self.close().await.is_ok(),
            Command::Quit => return CommandResult::Quit,
            Command::Sigraise { signal } => return CommandResult::Raise(*signal),
            Command::Reopen {
                read_only,
                cache,
                options,
            } => {
                self.reopen(*read_only, cache.as_deref(), options.as_deref())
                    .await
            }
            Command::Zone { name } => {
                let what = name.replace('_', " ");
                self.out(format!("{what} failed: Operation not supported"));
                false
            }
            Command::Abort => return CommandResult::Abort,
            Command::Help(name) => self.help(name.as_deref()),
            Command::Break { .. }
            | Command::WaitBreak { .. }
            | Command::Resume { .. }
            | Command::RemoveBreak { .. } => self.breakpoint(cmd).await,
            _ => unreachable!("data commands run in exec_io"),
        };
        if ok { CommandResult::Ok } else { self.fail() }
    }

    fn dev(&self) -> Rc<BlockBackend> {
        self.dev.clone().expect("precheck ensures an open image")
    }
}
