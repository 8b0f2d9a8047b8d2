//! `io DEVICE COMMAND` (and `io? ...`, which may fail): qemu-io command lines on a device, one
//! qemu-io session per device, with the guest's writes mirrored into the reference model.
//!
//! Writes update the model in the order their completion reports appear in the output: a
//! synchronous write may complete after an overlapping aio write that was reported while it ran,
//! and then its data is the one that stays. aio writes are in flight in the model (a crash may
//! or may not keep them) until reported, or until the session has nothing outstanding; they then
//! count as completed, or as "old or new" if the session reported a failure meanwhile.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use engine::Engine;
use engine::backend::BlockBackend;
use engine::qemu_io::{
    AioWrite, Command, CommandResult, Session, SessionConfig, Timing, VecSink, Write,
    WriteData as IoData, parse_command,
};

use super::model::{DeviceModel, Ticket, WriteData};

/// qemu-io's default write pattern.
const DEFAULT_PATTERN: u8 = 0xcd;

struct DeviceIo {
    session: Session,
    sink: Rc<VecSink>,
    /// aio writes in flight; `true` once a completion could not be told apart from another's.
    aio: Vec<(Ticket, bool)>,
    aio_failed: bool,
}

/// The qemu-io sessions of a run, by device.
#[derive(Default)]
pub struct IoSessions {
    sessions: BTreeMap<String, DeviceIo>,
}

/// What one `io` step produced.
pub struct IoOutcome {
    /// The command's output lines.
    pub lines: Vec<String>,
    /// False when the command failed.
    pub ok: bool,
}

fn write_data(w: &Write) -> Result<WriteData, String> {
    match &w.data {
        IoData::Pattern(b) => Ok(WriteData::Fill(*b)),
        IoData::Zeroes => Ok(WriteData::Zero),
        IoData::File(_) => {
            Err("'write -s FILE' is not supported in scenarios (its data is not modelled)".into())
        }
    }
}

fn aio_data(a: &AioWrite) -> WriteData {
    if a.zero {
        WriteData::Zero
    } else {
        WriteData::Fill(a.io.pattern.unwrap_or(DEFAULT_PATTERN))
    }
}

impl IoSessions {
    /// Run one command line on `device`, keeping `model` up to date.
    pub async fn run(
        &mut self,
        engine: &Rc<Engine>,
        bb: Rc<BlockBackend>,
        model: &Rc<RefCell<DeviceModel>>,
        device: &str,
        line: &str,
    ) -> Result<IoOutcome, String> {
        let dev = self.sessions.entry(device.to_string()).or_insert_with(|| {
            let sink = Rc::new(VecSink::new());
            let cfg = SessionConfig {
                timing: Timing::Omit,
                device_name: device.to_string(),
                ..SessionConfig::default()
            };
            let mut session = Session::new(engine.clone(), sink.clone(), cfg);
            session.attach(bb);
            DeviceIo {
                session,
                sink,
                aio: Vec::new(),
                aio_failed: false,
            }
        });
        let cmd = parse_command(line).ok();
        let mut ticket = None;
        let mut flush_start = None;
        match &cmd {
            // A VM state write (`-b`) lands past the guest disk: nothing to model.
            Some(Command::Write(w)) if !w.vmstate => {
                let data = write_data(w)?;
                ticket = Some(model.borrow_mut().begin_write(w.offset, w.len, &data));
            }
            Some(Command::Writev(v)) => {
                let data = WriteData::Fill(v.pattern.unwrap_or(DEFAULT_PATTERN));
                ticket = Some(model.borrow_mut().begin_write(v.offset, v.total(), &data));
            }
            Some(Command::AioWrite(a)) => {
                let t = model
                    .borrow_mut()
                    .begin_write(a.io.offset, a.io.total(), &aio_data(a));
                dev.aio.push((t, false));
            }
            Some(Command::Flush) => flush_start = Some(model.borrow().flush_start()),
            Some(Command::Truncate { .. }) => {
                return Err(
                    "'truncate' is not supported in scenarios (sizes are not modelled)".into(),
                );
            }
            _ => {}
        }
        let result = dev.session.run_line(line).await;
        let ok = result == CommandResult::Ok;
        match (flush_start, ok) {
            (Some(start), true) => model.borrow_mut().flush_done(start),
            (Some(_), false) => model.borrow_mut().flush_failed(),
            _ => {}
        }
        if let (Some(Command::Discard { offset, len, .. }), true) = (&cmd, ok) {
            model.borrow_mut().discarded(*offset, *len);
        }
        let lines = self.take_output(device, model, ticket.map(|t| (t, ok)));
        Ok(IoOutcome { lines, ok })
    }

    /// Output printed since the last call (aio completions arrive between steps), settling the
    /// model's writes in the order they report completion: `sync` is the synchronous write the
    /// step just ran (with its success), settled at its own report, after the aio writes that
    /// reported before it. aio writes still unsettled count once nothing is outstanding.
    pub fn take_output(
        &mut self,
        device: &str,
        model: &Rc<RefCell<DeviceModel>>,
        mut sync: Option<(Ticket, bool)>,
    ) -> Vec<String> {
        let Some(dev) = self.sessions.get_mut(device) else {
            return Vec::new();
        };
        let lines: Vec<String> = dev.sink.take().into_iter().map(|l| l.text).collect();
        for l in &lines {
            // A completion report names the write: settle it in the order it really completed.
            if let Some((bytes, offset)) = parse_wrote(l) {
                let same = |t: &Ticket| t.offset() == offset && t.len() == bytes;
                if sync.as_ref().is_some_and(|(t, _)| same(t)) {
                    // The synchronous write's report; with an aio write of the same range in
                    // flight it may be that one's instead, so both count as "this or before".
                    let collides = dev.aio.iter().any(|(t, _)| same(t));
                    for (t, ambiguous) in dev.aio.iter_mut() {
                        *ambiguous |= same(t);
                    }
                    let (t, ok) = sync.take().expect("matched above");
                    model.borrow_mut().complete_write(t, ok && !collides);
                    continue;
                }
                let matching = dev.aio.iter().filter(|(t, _)| same(t)).count();
                if matching > 1 {
                    // Writes of one range are indistinguishable in the output: any of them may
                    // have landed last, so each counts as "this or what was there".
                    for (t, ambiguous) in dev.aio.iter_mut() {
                        *ambiguous |= same(t);
                    }
                }
                if let Some(pos) = dev.aio.iter().position(|(t, _)| same(t)) {
                    let (t, ambiguous) = dev.aio.remove(pos);
                    model.borrow_mut().complete_write(t, !ambiguous);
                }
            } else if l.contains("failed") && !dev.aio.is_empty() {
                dev.aio_failed = true;
            }
        }
        if let Some((t, ok)) = sync {
            // No report (a failure, or `-q`): it completed when the command returned.
            model.borrow_mut().complete_write(t, ok);
        }
        if dev.session.aio_in_flight() == 0 && !dev.aio.is_empty() {
            let ok = !dev.aio_failed;
            for (t, ambiguous) in dev.aio.drain(..) {
                model.borrow_mut().complete_write(t, ok && !ambiguous);
            }
            dev.aio_failed = false;
        }
        lines
    }

    /// Devices with a session.
    pub fn devices(&self) -> Vec<String> {
        self.sessions.keys().cloned().collect()
    }
}

/// "wrote 4096/4096 bytes at offset 1048576" → (4096, 1048576).
fn parse_wrote(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("wrote ")?;
    let (counts, offset) = rest.split_once(" bytes at offset ")?;
    let (done, _) = counts.split_once('/')?;
    Some((done.parse().ok()?, offset.trim().parse().ok()?))
}
