//! The session's commands that move no guest data: `truncate`, `info`, `map`, `alloc`, `open`,
//! `help` and the breakpoint verbs. A child of `exec`, so it works on the session directly.

use crate::driver::{DriverKind, Prealloc};
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;

use super::super::command::Command;
use super::super::format::{alloc_line, human_size, map_line};
use super::super::help::long_help;
use super::super::open::{CacheMode, OpenSpec, parse_discard};
use super::super::spec::{COMMANDS, lookup_command};
use super::Session;

impl Session {
    pub(super) async fn truncate(&mut self, len: u64, prealloc: Option<&str>) -> bool {
        let r = match prealloc {
            None => self.dev().truncate(len).await,
            Some(mode) => {
                let Ok(mode) = Prealloc::parse(mode) else {
                    self.report_err(format!("Invalid preallocation mode '{mode}'"));
                    return false;
                };
                // BlockBackend::truncate takes no preallocation mode: a mode goes straight to
                // the device's root edge.
                match self.dev().root() {
                    Some(root) => root.truncate(len, true, mode).await,
                    None => self.dev().truncate(len).await,
                }
            }
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                self.report_err(e.message());
                false
            }
        }
    }

    pub(super) fn info(&mut self) -> bool {
        let Some(node) = self.dev().root_node() else {
            return false;
        };
        let caps = node.driver().caps();
        self.out(format!("format name: {}", caps.name));
        if caps.kind == DriverKind::Protocol {
            // qemu-io prints the line a second time for protocol nodes.
            self.out(format!("format name: {}", caps.name));
        }
        if caps.name.starts_with("null-") {
            // The null drivers have no image info: qemu-io stops here, silently failing.
            return false;
        }
        let info = node.driver().image_info();
        self.out(format!(
            "cluster size: {}",
            human_size(info.cluster_size as f64)
        ));
        self.out(format!(
            "vm state offset: {}",
            human_size(info.vm_state_offset as f64)
        ));
        if !info.specific.is_empty() {
            self.out("Format specific information:");
            for (name, value) in &info.specific {
                self.out(format!("    {name}: {value}"));
            }
        }
        true
    }

    pub(super) async fn map(&mut self) -> bool {
        let dev = self.dev();
        let Ok(len) = dev.len() else { return false };
        let mut run: Option<(u64, u64, bool)> = None;
        let mut off = 0;
        while off < len {
            let st = match dev.block_status(off, len - off).await {
                Ok(st) if st.len > 0 => st,
                Ok(_) => break,
                Err(e) => {
                    self.report_err(format!("Failed to get allocation status: {}", e.strerror()));
                    return false;
                }
            };
            let n = st.len.min(len - off);
            let alloc = st.mapping.is_allocated();
            run = match run {
                Some((start, rlen, a)) if a == alloc => Some((start, rlen + n, a)),
                Some((start, rlen, a)) => {
                    self.out(map_line(start, rlen, a));
                    Some((off, n, alloc))
                }
                None => Some((off, n, alloc)),
            };
            off += n;
        }
        if let Some((start, rlen, a)) = run {
            self.out(map_line(start, rlen, a));
        }
        true
    }

    pub(super) async fn alloc(&mut self, offset: u64, count: u64) -> bool {
        let dev = self.dev();
        let size = dev.len().unwrap_or(0);
        let count = if offset >= size {
            0
        } else {
            count.min(size - offset)
        };
        let (mut sum, mut off, mut rem) = (0, offset, count);
        while rem > 0 {
            match dev.block_status(off, rem).await {
                Ok(st) if st.len > 0 => {
                    let n = st.len.min(rem);
                    if st.mapping.is_allocated() {
                        sum += n;
                    }
                    off += n;
                    rem -= n;
                }
                Ok(_) => break,
                Err(e) => {
                    self.out(format!("is_allocated failed: {}", e.strerror()));
                    return false;
                }
            }
        }
        self.out(alloc_line(sum, count, offset));
        true
    }

    pub(super) async fn open_cmd(&mut self, cmd: &Command) -> bool {
        let Command::Open {
            read_only,
            snapshot,
            copy_on_read,
            nocache,
            force_share,
            native_aio,
            cache,
            discard,
            options,
            path,
        } = cmd
        else {
            return false;
        };
        if self.dev.is_some() {
            self.report_err("file open already, try 'help close'");
            return false;
        }
        let mut spec = OpenSpec {
            filename: path.clone(),
            options: options.clone(),
            read_only: *read_only,
            force_share: *force_share,
            aio: native_aio.then(|| "native".to_string()),
            ..OpenSpec::default()
        };
        if *nocache {
            spec.cache = CacheMode::None;
        }
        if let Some(mode) = cache {
            match CacheMode::parse(mode) {
                Ok(m) => spec.cache = m,
                Err(msg) => {
                    self.report_err(msg);
                    return false;
                }
            }
        }
        if let Some(mode) = discard {
            match parse_discard(mode) {
                Ok(unmap) => spec.discard_unmap = unmap,
                Err(msg) => {
                    self.report_err(msg);
                    return false;
                }
            }
        }
        spec.snapshot = *snapshot;
        spec.copy_on_read = *copy_on_read;
        match self.open(&spec).await {
            Ok(()) => true,
            Err(e) => {
                match path {
                    Some(p) => self.report_err(format!("can't open device {p}: {e}")),
                    None => self.report_err(format!("can't open: {e}")),
                }
                false
            }
        }
    }

    pub(super) fn help(&mut self, name: Option<&str>) -> bool {
        match name {
            None => {
                for c in COMMANDS {
                    self.out(c.usage(c.name));
                }
                self.out("");
                self.out("Use 'help commandname' for extended help.");
                true
            }
            Some(n) => match lookup_command(n) {
                Some(c) => {
                    self.out(c.usage(n));
                    if let Some(text) = long_help(c.name) {
                        let text = text.strip_suffix('\n').unwrap_or(text);
                        for line in text.split('\n') {
                            self.out(line);
                        }
                    }
                    true
                }
                None => {
                    self.out(format!("command {n} not found"));
                    false
                }
            },
        }
    }

    /// `break`, `wait_break`, `resume`, `remove_break`: act on the first node below the device
    /// whose driver has breakpoints (blkdebug). Without one, qemu-io's answer is ENOTSUP.
    pub(super) async fn breakpoint(&mut self, cmd: &Command) -> bool {
        let node = self
            .dev()
            .root_node()
            .and_then(|n| n.find_breakpoint_node());
        let enotsup = Error::io(Errno::ENOTSUP);
        let (what, r): (String, Result<()>) = match cmd {
            Command::Break { event, tag } => (
                "Could not set breakpoint".into(),
                match &node {
                    None => Err(enotsup),
                    Some(n) => match DebugEvent::from_name(event) {
                        None => Err(Error::io(Errno::ENOENT)),
                        Some(ev) => n.breakpoints().and_then(|b| b.debug_breakpoint(ev, tag)),
                    },
                },
            ),
            Command::Resume { tag } => (
                "Could not resume request".into(),
                match &node {
                    None => Err(enotsup),
                    Some(n) => n
                        .breakpoints()
                        .and_then(|b| b.debug_resume(tag))
                        .inspect(|()| {
                            // It was suspended, whether or not a wait_break saw it.
                            self.announce_suspended(tag);
                            self.announce_resuming(tag);
                        }),
                },
            ),
            Command::RemoveBreak { tag } => (
                format!("Could not remove breakpoint {tag}"),
                match &node {
                    None => Err(enotsup),
                    Some(n) => match n.breakpoints() {
                        Err(e) => Err(e),
                        Ok(b) => {
                            // Every request suspended under the tag goes on, even when the verb
                            // fails because the breakpoint itself is gone.
                            if b.debug_is_suspended(tag) {
                                self.announce_suspended(tag);
                            }
                            let r = b.debug_remove_breakpoint(tag);
                            while self.suspended.iter().any(|t| t == tag) {
                                self.announce_resuming(tag);
                            }
                            r
                        }
                    },
                },
            ),
            Command::WaitBreak { tag } => match &node {
                // qemu-io would wait forever here; refusing is more useful.
                None => (format!("Could not wait for breakpoint {tag}"), Err(enotsup)),
                Some(n) => {
                    if let Ok(b) = n.breakpoints() {
                        b.debug_wait_suspended(tag).await;
                        self.announce_suspended(tag);
                    }
                    return true;
                }
            },
            _ => return false,
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                self.out(format!("{what}: {}", e.strerror()));
                false
            }
        }
    }

    /// blkdebug's line for a request stopped at a breakpoint, once per request: printed when
    /// `wait_break` sees it (or, without one, just before `resume` releases it).
    fn announce_suspended(&mut self, tag: &str) {
        if !self.suspended.iter().any(|t| t == tag) {
            self.out(format!("blkdebug: Suspended request '{tag}'"));
            self.suspended.push(tag.to_string());
        }
    }

    /// blkdebug's line for a suspended request that goes on.
    fn announce_resuming(&mut self, tag: &str) {
        if let Some(i) = self.suspended.iter().position(|t| t == tag) {
            self.suspended.remove(i);
            self.out(format!("blkdebug: Resuming request '{tag}'"));
        }
    }
}
