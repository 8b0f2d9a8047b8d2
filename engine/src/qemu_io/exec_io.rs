//! The data commands: `read`, `readv`, `write`, `writev`, `discard`, and `aio_read` /
//! `aio_write`, which run as tasks spawned on the env and print when they complete.
//!
//! Elapsed times come from `Env::now_ns` around the request (for aio: from submission).
//! Owns [`AioState`], the count of aio requests in flight that the session waits on.

use std::cell::Cell;
use std::rc::Rc;

use crate::backend::BlockBackend;
use crate::env::{Env, OpenOptions};
use crate::io::{IoBuf, ReqFlags};
use crate::util::Notify;

use super::command::{AioWrite, Command, Read, Stats, Vectored, Write, WriteData};
use super::format::{Timing, hexdump, report};
use super::{OutLine, Sink};

/// aio requests in flight, shared with their tasks.
#[derive(Default)]
pub(super) struct AioState {
    pub outstanding: Cell<u64>,
    pub idle: Notify,
}

/// What a data command needs; cheap to clone into an aio task.
#[derive(Clone)]
pub(super) struct IoCtx {
    pub env: Rc<dyn Env>,
    pub dev: Rc<BlockBackend>,
    pub out: Rc<dyn Sink>,
    pub timing: Timing,
    pub quiet: bool,
    pub aio: Rc<AioState>,
}

impl IoCtx {
    fn out(&self, text: impl Into<String>) {
        self.out.line(OutLine::out(text));
    }

    fn err(&self, text: impl Into<String>) {
        self.out.line(OutLine::err(text));
    }

    /// Pattern check, then (unless quiet) the hexdump and the report. Returns false on a
    /// pattern mismatch.
    fn finish_read(
        &self,
        offset: u64,
        data: &[u8],
        check: Option<(u8, u64, u64)>,
        dump: bool,
        stats: Stats,
        start: u64,
    ) -> bool {
        let elapsed = self.env.now_ns().saturating_sub(start);
        let stats = self.stats(stats);
        let mut ok = true;
        if let Some((pattern, voff, vlen)) = check {
            let range = &data[voff as usize..(voff + vlen) as usize];
            if range.iter().any(|&b| b != pattern) {
                self.out(format!(
                    "Pattern verification failed at offset {}, {vlen} bytes",
                    offset + voff
                ));
                ok = false;
            }
        }
        if !stats.quiet {
            if dump {
                for l in hexdump(offset, data) {
                    self.out(l);
                }
            }
            self.report("read", offset, data.len() as u64, stats, elapsed);
        }
        ok
    }

    /// A command's reporting flags with the session-wide quiet mode applied.
    fn stats(&self, stats: Stats) -> Stats {
        Stats {
            quiet: stats.quiet || self.quiet,
            ..stats
        }
    }

    fn report(&self, op: &str, offset: u64, count: u64, stats: Stats, elapsed: u64) {
        if self.stats(stats).quiet {
            return;
        }
        for l in report(op, offset, count, elapsed, stats.machine, self.timing) {
            self.out(l);
        }
    }

    async fn read(&self, r: &Read) -> bool {
        let start = self.env.now_ns();
        let buf = IoBuf::new(r.len as usize);
        let (buf, res) = if r.vmstate {
            self.dev.load_vmstate(r.offset, buf).await
        } else {
            self.dev.read(r.offset, buf).await
        };
        if let Err(e) = res {
            self.out(format!("read failed: {}", e.strerror()));
            return false;
        }
        let check = r.verify.map(|v| (v.pattern, v.offset, v.len));
        self.finish_read(r.offset, buf.as_slice(), check, r.dump, r.stats, start)
    }

    async fn readv(&self, v: &Vectored) -> bool {
        let start = self.env.now_ns();
        let total = v.total();
        let (buf, res) = self.dev.read(v.offset, IoBuf::new(total as usize)).await;
        if let Err(e) = res {
            self.out(format!("readv failed: {}", e.strerror()));
            return false;
        }
        let check = v.pattern.map(|p| (p, 0, total));
        self.finish_read(v.offset, buf.as_slice(), check, v.dump, v.stats, start)
    }

    /// The buffer for `write -s FILE`: the file's bytes repeated. Errors go to stderr.
    async fn file_data(&self, path: &str, len: u64) -> Option<IoBuf> {
        let file = match self.env.fs().open(path, OpenOptions::default()) {
            Ok(f) => f,
            Err(e) => {
                self.err(format!("{path}: {}", e.strerror()));
                return None;
            }
        };
        let size = file.len().unwrap_or(0);
        if size == 0 {
            self.err(format!("{path}: file is empty"));
            return None;
        }
        let n = size.min(len) as usize;
        let (src, r) = file.read_at(IoBuf::new(n), 0).await;
        if let Err(e) = r {
            self.err(format!("{path}: {}", e.strerror()));
            return None;
        }
        let mut buf = IoBuf::new(len as usize);
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = src.as_slice()[i % n];
        }
        Some(buf)
    }

    async fn write(&self, w: &Write) -> bool {
        let mut flags = ReqFlags::NONE;
        if w.fua {
            flags |= ReqFlags::FUA;
        }
        let res = match &w.data {
            WriteData::Zeroes => {
                if w.unmap {
                    flags |= ReqFlags::MAY_UNMAP;
                }
                if w.no_fallback {
                    flags |= ReqFlags::NO_FALLBACK;
                }
                // -c means nothing to a write-zeroes request; qemu-io's succeeds on raw.
                let start = self.env.now_ns();
                self.dev
                    .write_zeroes(w.offset, w.len, flags)
                    .await
                    .map(|()| start)
            }
            data => {
                let buf = match data {
                    WriteData::Pattern(p) => IoBuf::filled(w.len as usize, *p),
                    WriteData::File(path) => match self.file_data(path, w.len).await {
                        Some(b) => b,
                        None => return false,
                    },
                    WriteData::Zeroes => unreachable!(),
                };
                if w.compressed {
                    flags |= ReqFlags::WRITE_COMPRESSED;
                }
                let start = self.env.now_ns();
                let written = if w.vmstate {
                    // The VM state takes plain bytes: -c, -f and -u mean nothing to it.
                    self.dev.save_vmstate(w.offset, buf).await
                } else {
                    self.dev.write(w.offset, buf, flags).await
                };
                written.1.map(|()| start)
            }
        };
        match res {
            Ok(start) => {
                let elapsed = self.env.now_ns().saturating_sub(start);
                self.report("wrote", w.offset, w.len, w.stats, elapsed);
                true
            }
            Err(e) => {
                self.out(format!("write failed: {}", e.strerror()));
                false
            }
        }
    }

    async fn writev(&self, v: &Vectored) -> bool {
        let total = v.total();
        let buf = IoBuf::filled(total as usize, v.pattern.unwrap_or(0xcd));
        let flags = if v.fua { ReqFlags::FUA } else { ReqFlags::NONE };
        let start = self.env.now_ns();
        match self.dev.write(v.offset, buf, flags).await.1 {
            Ok(()) => {
                let elapsed = self.env.now_ns().saturating_sub(start);
                self.report("wrote", v.offset, total, v.stats, elapsed);
                true
            }
            Err(e) => {
                self.out(format!("writev failed: {}", e.strerror()));
                false
            }
        }
    }

    async fn discard(&self, offset: u64, len: u64, stats: Stats) -> bool {
        let start = self.env.now_ns();
        match self.dev.discard(offset, len).await {
            Ok(()) => {
                let elapsed = self.env.now_ns().saturating_sub(start);
                self.report("discard", offset, len, stats, elapsed);
                true
            }
            Err(e) => {
                self.out(format!("discard failed: {}", e.strerror()));
                false
            }
        }
    }

    /// Run `fut` as an aio task, counted until it completes.
    fn spawn(&self, name: &str, fut: impl std::future::Future<Output = ()> + 'static) {
        let aio = self.aio.clone();
        aio.outstanding.set(aio.outstanding.get() + 1);
        self.env.spawn(
            name,
            Box::pin(async move {
                fut.await;
                aio.outstanding.set(aio.outstanding.get() - 1);
                if aio.outstanding.get() == 0 {
                    aio.idle.notify_all();
                }
            }),
        );
    }

    fn aio_read(&self, v: &Vectored) {
        if v.invalid {
            self.out("injecting invalid read request");
            return;
        }
        let (io, v) = (self.clone(), v.clone());
        let start = self.env.now_ns();
        self.spawn("qemu-io aio_read", async move {
            let total = v.total();
            let (buf, res) = io.dev.read(v.offset, IoBuf::new(total as usize)).await;
            match res {
                // qemu-io's aio_read completion calls itself "readv".
                Err(e) => io.out(format!("readv failed: {}", e.strerror())),
                Ok(()) => {
                    let check = v.pattern.map(|p| (p, 0, total));
                    // A mismatch is reported but, as in qemu-io, not counted as a failure.
                    io.finish_read(v.offset, buf.as_slice(), check, v.dump, v.stats, start);
                }
            }
        });
    }

    fn aio_write(&self, w: &AioWrite) {
        if w.io.invalid {
            self.out("injecting invalid write request");
            return;
        }
        let (io, w) = (self.clone(), w.clone());
        let start = self.env.now_ns();
        self.spawn("qemu-io aio_write", async move {
            let total = w.io.total();
            let mut flags = if w.io.fua {
                ReqFlags::FUA
            } else {
                ReqFlags::NONE
            };
            let res = if w.zero {
                if w.unmap {
                    flags |= ReqFlags::MAY_UNMAP;
                }
                io.dev.write_zeroes(w.io.offset, total, flags).await
            } else {
                let buf = IoBuf::filled(total as usize, w.io.pattern.unwrap_or(0xcd));
                io.dev.write(w.io.offset, buf, flags).await.1
            };
            match res {
                Err(e) => io.out(format!("aio_write failed: {}", e.strerror())),
                Ok(()) => {
                    let elapsed = io.env.now_ns().saturating_sub(start);
                    io.report("wrote", w.io.offset, total, w.io.stats, elapsed);
                }
            }
        });
    }
}

/// Run a data command: `Some(success)`, or `None` if `cmd` is not a data command.
pub(super) async fn run(io: &IoCtx, cmd: &Command) -> Option<bool> {
    Some(match cmd {
        Command::Read(r) => io.read(r).await,
        Command::Readv(v) => io.readv(v).await,
        Command::Write(w) => io.write(w).await,
        Command::Writev(v) => io.writev(v).await,
        Command::Discard { offset, len, stats } => io.discard(*offset, *len, *stats).await,
        Command::AioRead(v) => {
            io.aio_read(v);
            true
        }
        Command::AioWrite(w) => {
            io.aio_write(w);
            true
        }
        _ => return None,
    })
}
