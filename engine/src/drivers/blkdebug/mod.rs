//! `blkdebug`: QEMU's debugging filter. It passes every request to its `image` child and, driven
//! by rules, injects errors, moves through a state machine and suspends requests at breakpoints,
//! so tests can reproduce error paths and exact interleavings. It can also fake device limits
//! (`align`, `max-transfer`, `*-write-zero`, `*-discard`) to force the generic path's
//! read-modify-write and splitting, and asserts that requests honour them.
//!
//! This module owns the driver (options, open, the `BlockDriver` impl); `rules.rs` the rule
//! engine, `breakpoints.rs` suspended requests, `limits.rs` the fake limits, `parse.rs` option parsing, `config.rs` the `.ini`
//! config file. Semantics follow `block/blkdebug.c`. Must not import `job`, `qmp`, `engine`,
//! `backend` or other drivers.

mod breakpoints;
mod config;
mod limits;
mod parse;
mod rules;

use std::cell::RefCell;

use serde_json::Value;

use crate::driver::{
    BlockDriver, ChildDesc, DriverCaps, DriverKind, ParentPerms, Prealloc, default_child_perms,
};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::request::filter;
use crate::types::{ChildRole, Perms};
use crate::util::{Options, yield_now};

use breakpoints::Breakpoints;
use limits::FakeLimits;
use parse::{RuleKind, perm_list, rule_list};
use rules::{Action, IoType, Rule, RuleSet};

const CAPS: DriverCaps = DriverCaps {
    name: "blkdebug",
    kind: DriverKind::Filter,
    supports_backing: false,
    // Passed down unchanged; the child's generic path emulates what its driver lacks.
    write_flags: ReqFlags::FUA.union(ReqFlags::WRITE_UNCHANGED),
    zero_flags: ReqFlags::FUA
        .union(ReqFlags::MAY_UNMAP)
        .union(ReqFlags::NO_FALLBACK)
        .union(ReqFlags::WRITE_UNCHANGED),
    reopen: false,
};

struct Blkdebug {
    image: Child,
    config: Option<String>,
    fake: FakeLimits,
    take_perms: Perms,
    unshare_perms: Perms,
    rules: RefCell<RuleSet>,
    breakpoints: Breakpoints,
}

/// Parse the legacy `blkdebug:CONFIG:IMAGE` file name into (config, image file name).
fn parse_legacy_filename(name: &str) -> Result<(Option<String>, String)> {
    let rest = name.strip_prefix("blkdebug:").ok_or_else(|| {
        Error::generic(format!(
            "File name string must start with 'blkdebug:' (got '{name}')"
        ))
    })?;
    let (config, image) = rest
        .split_once(':')
        .ok_or_else(|| Error::generic("blkdebug requires both config file and image path"))?;
    let config = (!config.is_empty()).then(|| config.to_string());
    Ok((config, image.to_string()))
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let mut config = opts.take_str("config")?;
        let mut image_spec = opts.take("image");
        if let Some(name) = opts.take_str("filename")? {
            let (legacy_config, image) = parse_legacy_filename(&name)?;
            if image_spec.is_some() || (config.is_some() && legacy_config.is_some()) {
                return Err(Error::generic(
                    "Cannot give both a blkdebug: file name and 'image' or 'config'",
                ));
            }
            config = config.or(legacy_config);
            image_spec = Some(serde_json::json!({"driver": "file", "filename": image}));
        }
        let image_spec = image_spec.ok_or_else(|| Error::param_missing("image"))?;
        let fake_values = FakeLimits::take(&mut opts)?;
        let inject = opts.take("inject-error");
        let set_state = opts.take("set-state");
        let take_perms = perm_list("take-child-perms", opts.take("take-child-perms"))?;
        let unshare_perms = perm_list("unshare-child-perms", opts.take("unshare-child-perms"))?;
        opts.finish()?;

        // QEMU adds the config file's rules and the options' rules, inject-error before
        // set-state; the order decides which set-state rule wins and which armed rule fires.
        let mut rules = RuleSet::new();
        let (mut injects, mut set_states) = match &config {
            Some(path) => config::read_rules(&ctx.env(), path).await?,
            None => (Vec::new(), Vec::new()),
        };
        if let Some(v) = inject {
            injects.extend(rule_list(RuleKind::InjectError, v)?);
        }
        if let Some(v) = set_state {
            set_states.extend(rule_list(RuleKind::SetState, v)?);
        }
        for rule in injects.into_iter().chain(set_states) {
            rules.add(rule);
        }

        let role = ChildRole::FILTERED | ChildRole::PRIMARY;
        let image = ctx.open_child("image", role, image_spec).await?;
        let fake = FakeLimits::validate(image.node().limits().request_align as u64, fake_values)?;
        let blkdebug = Blkdebug {
            image,
            config,
            fake,
            take_perms,
            unshare_perms,
            rules: RefCell::new(rules),
            breakpoints: Breakpoints::default(),
        };
        // "none" fires once, when the node is created (rules may arm errors or set a state).
        // No breakpoint exists yet, so nothing can suspend here.
        assert!(crate::driver::Breakpoints::debug_event(&blkdebug, DebugEvent::None).is_none());
        Ok(Box::new(blkdebug) as Box<dyn BlockDriver>)
    })
}

impl Blkdebug {
    /// QEMU's `rule_check`: fail the request if an armed rule matches it, after one yield
    /// unless the rule says `immediately`.
    async fn rule_check(&self, offset: u64, bytes: u64, iotype: IoType) -> Result<()> {
        let hit = self.rules.borrow_mut().check_io(offset, bytes, iotype);
        let Some(hit) = hit else {
            return Ok(());
        };
        if !hit.immediately {
            // The error completes asynchronously, as QEMU's aio_co_schedule + yield does.
            yield_now().await;
        }
        Err(match Errno::from_code(hit.errno) {
            Errno::Other(n) => Error::io_msg(Errno::Other(n), format!("Unknown error {n}")),
            errno => Error::io(errno),
        })
    }
}

impl BlockDriver for Blkdebug {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn limits(&self) -> Limits {
        let own = self.fake.limits();
        own.merge_child(self.image.node().limits())
    }

    fn len(&self) -> u64 {
        self.image.len()
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let len = buf.len() as u64;
            self.fake.assert_rw(offset, len);
            if let Err(e) = self.rule_check(offset, len, IoType::Read).await {
                return (buf, Err(e));
            }
            self.image.read(offset, buf, flags).await
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let len = buf.len() as u64;
            self.fake.assert_rw(offset, len);
            if let Err(e) = self.rule_check(offset, len, IoType::Write).await {
                return (buf, Err(e));
            }
            self.image.write(offset, buf, flags).await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.fake.assert_zeroes(offset, len);
            self.rule_check(offset, len, IoType::WriteZeroes).await?;
            self.image.write_zeroes(offset, len, flags).await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.fake.assert_discard(offset, len);
            self.rule_check(offset, len, IoType::Discard).await?;
            self.image.discard(offset, len).await
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        // Nothing is cached here; the generic path flushes `image` afterwards. A flush has no
        // range, so only sector-less rules can fail it.
        Box::pin(async move { self.rule_check(0, 0, IoType::Flush).await })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            self.rule_check(offset, len, IoType::BlockStatus).await?;
            self.image.block_status(offset, len).await
        })
    }

    fn truncate(
        &self,
        len: u64,
        exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        filter::truncate_filtered(&self.image, len, exact, prealloc)
    }

    fn child_perms(&self, child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        let (perm, shared) = default_child_perms(child, parent);
        (perm | self.take_perms, shared & !self.unshare_perms)
    }

    fn close(&self) -> LocalBoxFuture<'_, Result<()>> {
        // Nothing may stay parked on a node that goes away.
        self.breakpoints.release_all();
        Box::pin(async { Ok(()) })
    }

    fn breakpoints(&self) -> Option<&dyn crate::driver::Breakpoints> {
        Some(self)
    }

    fn filename(&self) -> String {
        let image = self.image.node().driver().filename();
        // QEMU's form, an empty config when there is none ("blkdebug::IMAGE").
        let config = self.config.as_deref().unwrap_or("");
        format!("blkdebug:{config}:{image}")
    }

    fn specific_info(&self) -> Value {
        Value::Null
    }
}

/// The breakpoint verbs (the driver-facing side of [`Breakpoints`], the parked requests).
impl crate::driver::Breakpoints for Blkdebug {
    fn debug_event(&self, event: DebugEvent) -> Option<LocalBoxFuture<'_, ()>> {
        let outcome = self.rules.borrow_mut().process_event(event);
        if outcome.suspend.is_empty() {
            if let Some(state) = outcome.new_state {
                self.rules.borrow_mut().set_state(state);
            }
            return None;
        }
        let new_state = outcome.new_state;
        let parked = self.breakpoints.park(outcome.suspend);
        Some(Box::pin(async move {
            parked.wait().await;
            // As in QEMU, the event's new state takes effect once the request goes on.
            if let Some(state) = new_state {
                self.rules.borrow_mut().set_state(state);
            }
        }))
    }

    fn debug_breakpoint(&self, event: DebugEvent, tag: &str) -> Result<()> {
        self.rules.borrow_mut().add(Rule {
            event,
            state: 0,
            action: Action::Suspend {
                tag: tag.to_string(),
            },
        });
        Ok(())
    }

    fn debug_remove_breakpoint(&self, tag: &str) -> Result<()> {
        let removed = self.rules.borrow_mut().remove_breakpoints(tag);
        // Suspended requests go on either way; but as in QEMU the verb fails (ENOENT) when no
        // breakpoint was left to remove, which is the case once its one shot has fired.
        self.breakpoints.resume_all(tag);
        if removed {
            Ok(())
        } else {
            Err(Error::io_msg(
                Errno::ENOENT,
                format!(
                    "Could not remove breakpoint '{tag}': no such breakpoint or suspended request"
                ),
            ))
        }
    }

    fn debug_resume(&self, tag: &str) -> Result<()> {
        self.breakpoints.resume(tag)
    }

    fn debug_is_suspended(&self, tag: &str) -> bool {
        self.breakpoints.is_suspended(tag)
    }

    fn debug_wait_suspended(&self, tag: &str) -> LocalBoxFuture<'_, ()> {
        Box::pin(self.breakpoints.wait_suspended(tag.to_string()))
    }
}
