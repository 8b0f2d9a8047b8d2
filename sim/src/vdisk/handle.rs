//! [`SimFile`]: an open virtual file, implementing the engine's `HostFile`.
//!
//! Every data operation is submitted (permission and `O_DIRECT` checks, a latency drawn from the
//! disk stream, faults decided), sleeps on the virtual clock, and takes effect when it completes.
//! If the caller drops the future of a side-effecting operation before it completes, the
//! operation is not cancelled: like a real disk request it completes anyway, in an "orphan" task
//! (unless the host crashed meanwhile, which abandons it).

use std::cell::RefCell;
use std::rc::Rc;

use engine::env::{Allocation, HostFile, LocalBoxFuture, OpenOptions};
use engine::io::{BufResult, IoBuf};
use engine::{Errno, Error, Result};

use super::FsInner;
use super::file::VFile;
use super::ops::{Effect, complete, stale, trace_done};
use crate::clock::Sleep;
use crate::fault::{FaultPlan, OpKind, OpTarget};

/// Trace code of an allocation query (not a fault target).
const OP_ALLOCATION: u64 = 8;

/// An open virtual file.
pub(crate) struct SimFile {
    fs: Rc<FsInner>,
    file: Rc<RefCell<VFile>>,
    path: String,
    opts: OpenOptions,
    epoch: u64,
}

/// A side-effecting operation between submission and completion. Dropped early, it hands itself
/// to an orphan task that completes it at its deadline.
struct InFlight {
    fs: Rc<FsInner>,
    file: Rc<RefCell<VFile>>,
    epoch: u64,
    deadline: u64,
    plan: FaultPlan,
    effect: Option<Effect>,
}

impl InFlight {
    fn complete(mut self) -> (Option<IoBuf>, Result<u64>) {
        let effect = self.effect.take().expect("completed once");
        complete(&self.fs, &self.file, self.epoch, &self.plan, effect)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(effect) = self.effect.take() else {
            return;
        };
        if self.fs.epoch.get() != self.epoch {
            return; // the host crashed: the request is gone
        }
        let Some(exec) = self.fs.exec.upgrade() else {
            return;
        };
        let (fs, file, epoch, deadline) = (
            self.fs.clone(),
            self.file.clone(),
            self.epoch,
            self.deadline,
        );
        let plan = std::mem::take(&mut self.plan);
        let clock = fs.clock.clone();
        exec.spawn(
            "disk-orphan",
            Box::pin(async move {
                Sleep::new(clock, deadline).await;
                let _ = complete(&fs, &file, epoch, &plan, effect);
            }),
        );
    }
}

impl SimFile {
    pub(crate) fn new(
        fs: Rc<FsInner>,
        file: Rc<RefCell<VFile>>,
        path: &str,
        opts: OpenOptions,
    ) -> SimFile {
        let epoch = fs.epoch.get();
        SimFile {
            fs,
            file,
            path: path.to_string(),
            opts,
            epoch,
        }
    }

    fn check_live(&self) -> Result<()> {
        if self.fs.epoch.get() == self.epoch {
            Ok(())
        } else {
            Err(stale())
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.opts.write {
            Ok(())
        } else {
            Err(Error::io_msg(
                Errno::Other(9),
                format!("'{}' is not open for writing", self.path),
            ))
        }
    }

    /// `len` bytes of `buf` at file `offset`, starting `skip` bytes into the buffer.
    fn check_direct(&self, offset: u64, buf: &IoBuf, skip: usize) -> Result<()> {
        // direct_align is a power of two.
        let align = u64::from(self.direct_align());
        let misaligned = |v: u64| v & (align - 1) != 0;
        let len = (buf.len() - skip) as u64;
        if misaligned(offset)
            || misaligned(len)
            || misaligned(skip as u64)
            || (buf.align() as u64) < align
        {
            return Err(Error::invalid(format!(
                "O_DIRECT request not aligned to {align}: offset {offset}, length {len}, buffer \
                 alignment {}",
                buf.align()
            )));
        }
        Ok(())
    }

    /// Draw the latency, decide the faults; returns the completion deadline and the plan.
    /// `partial`: one transfer of `read_part`/`write_part`, which partial-only faults target.
    fn submit(&self, op: OpKind, offset: u64, len: u64, partial: bool) -> (u64, FaultPlan) {
        let latency = match op {
            OpKind::Flush => self.fs.config.flush_latency,
            _ => self.fs.config.latency,
        };
        let ns = latency.sample(&mut self.fs.disk_rng.borrow_mut());
        let file_len = self.file.borrow().len;
        let now = self.fs.clock.now();
        let target = OpTarget {
            path: &self.path,
            op,
            offset,
            len,
            file_len,
            partial,
            align: u64::from(self.direct_align()),
            now,
            max_latency: latency.max_ns(),
        };
        let plan = self.fs.faults.borrow_mut().plan(&target, &self.fs.trace);
        let deadline = now.saturating_add(ns).saturating_add(plan.extra_ns);
        (deadline.max(plan.not_before), plan)
    }

    /// Run a side-effecting operation: checks, latency, completion. Returns the bytes a write
    /// moved (0 for other operations).
    async fn run(&self, effect: Effect, partial: bool) -> (Option<IoBuf>, Result<u64>) {
        let (op, offset, len) = effect.describe();
        let checked = self.check_live().and_then(|()| self.check_writable());
        let checked = match (&effect, checked) {
            (
                Effect::Write {
                    buf, offset, skip, ..
                },
                Ok(()),
            ) if self.opts.direct => self.check_direct(*offset, buf, *skip),
            (_, c) => c,
        };
        if let Err(e) = checked {
            let res = Err(e);
            trace_done(
                &self.fs,
                op.code(),
                self.file.borrow().id,
                offset,
                len,
                &res,
            );
            let buf = if let Effect::Write { buf, .. } = effect {
                Some(buf)
            } else {
                None
            };
            return (buf, res.map(|()| 0));
        }
        let (deadline, plan) = self.submit(op, offset, len, partial);
        let in_flight = InFlight {
            fs: self.fs.clone(),
            file: self.file.clone(),
            epoch: self.epoch,
            deadline,
            plan,
            effect: Some(effect),
        };
        Sleep::new(self.fs.clock.clone(), deadline).await;
        in_flight.complete()
    }

    /// Read into `buf[skip..]` from `offset`; returns the bytes moved (all of them unless
    /// `partial`: then a fault may cut the transfer short).
    async fn read(
        &self,
        mut buf: IoBuf,
        skip: usize,
        offset: u64,
        partial: bool,
    ) -> (IoBuf, Result<u64>) {
        let len = (buf.len() - skip) as u64;
        let checked = match self.check_live() {
            Ok(()) if self.opts.direct => self.check_direct(offset, &buf, skip),
            c => c,
        };
        if let Err(e) = checked {
            let res = Err(e);
            trace_done(
                &self.fs,
                OpKind::Read.code(),
                self.file.borrow().id,
                offset,
                len,
                &res,
            );
            return (buf, res.map(|()| 0));
        }
        let (deadline, plan) = self.submit(OpKind::Read, offset, len, partial);
        Sleep::new(self.fs.clock.clone(), deadline).await;
        let res = self.finish_read(&mut buf.as_mut_slice()[skip..], offset, &plan);
        trace_done(
            &self.fs,
            OpKind::Read.code(),
            self.file.borrow().id,
            offset,
            len,
            &res,
        );
        (buf, res)
    }

    fn finish_read(&self, buf: &mut [u8], offset: u64, plan: &FaultPlan) -> Result<u64> {
        self.check_live()?;
        if plan.eio {
            return Err(Error::io_msg(
                Errno::EIO,
                "read: Input/output error (injected)",
            ));
        }
        if let Some(errno) = plan.transient {
            return Err(Error::io_msg(errno, "read: interrupted (injected)"));
        }
        let mut f = self.file.borrow_mut();
        if plan.evict {
            f.evict_lost();
        }
        if let Some(s) = plan.latent_sector {
            f.bad.insert(s);
        }
        // Past the end of the file the virtual disk reads zeroes (a partial read too: only a
        // fault cuts it short), so partial and whole reads draw and trace the same.
        let n = plan.short.unwrap_or(buf.len() as u64);
        if let Some(s) = f.first_bad(offset, offset + n) {
            return Err(Error::io_msg(
                Errno::EIO,
                format!("read: latent sector error at sector {s}"),
            ));
        }
        f.read(offset, &mut buf[..n as usize]);
        if let Some(bit) = plan.bitrot_bit.filter(|b| b / 8 < n) {
            buf[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        Ok(n)
    }

    /// Write `buf[skip..]` at `offset`; returns the bytes that landed.
    async fn write(
        &self,
        buf: IoBuf,
        skip: usize,
        offset: u64,
        fua: bool,
        partial: bool,
    ) -> (IoBuf, Result<u64>) {
        let effect = Effect::Write {
            buf,
            skip,
            offset,
            fua,
        };
        let (buf, res) = self.run(effect, partial).await;
        (buf.expect("write hands its buffer back"), res)
    }

    async fn allocation_query(&self, offset: u64, len: u64) -> Result<(Allocation, u64)> {
        self.check_live()?;
        let ns = self
            .fs
            .config
            .latency
            .sample(&mut self.fs.disk_rng.borrow_mut());
        Sleep::new(
            self.fs.clock.clone(),
            self.fs.clock.now().saturating_add(ns),
        )
        .await;
        self.check_live()?;
        let f = self.file.borrow();
        let res = if len == 0 {
            (Allocation::Hole, 0)
        } else if offset >= f.len {
            // Beyond the end everything reads as zeroes.
            (Allocation::Hole, len)
        } else {
            let end = offset.saturating_add(len).min(f.len);
            let (data, n) = f.current.extent(offset, end);
            (
                if data {
                    Allocation::Data
                } else {
                    Allocation::Hole
                },
                n,
            )
        };
        trace_done(&self.fs, OP_ALLOCATION, f.id, offset, res.1, &Ok(()));
        Ok(res)
    }
}

fn unit(res: (Option<IoBuf>, Result<u64>)) -> Result<()> {
    res.1.map(|_| ())
}

impl HostFile for SimFile {
    fn read_at(&self, buf: IoBuf, offset: u64) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let (buf, res) = self.read(buf, 0, offset, false).await;
            (buf, res.map(|_| ()))
        })
    }

    fn write_at(&self, buf: IoBuf, offset: u64, fua: bool) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let (buf, res) = self.write(buf, 0, offset, fua, false).await;
            (buf, res.map(|_| ()))
        })
    }

    fn read_part(
        &self,
        buf: IoBuf,
        skip: usize,
        offset: u64,
    ) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            let (buf, res) = self.read(buf, skip, offset, true).await;
            (buf, res.map(|n| n as usize))
        })
    }

    fn write_part(
        &self,
        buf: IoBuf,
        skip: usize,
        offset: u64,
        fua: bool,
    ) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            let (buf, res) = self.write(buf, skip, offset, fua, true).await;
            (buf, res.map(|n| n as usize))
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // The flush covers what completed before it was submitted.
            let mark = self.file.borrow().mark();
            unit(self.run(Effect::Flush { mark }, false).await)
        })
    }

    fn len(&self) -> Result<u64> {
        self.check_live()?;
        Ok(self.file.borrow().len)
    }

    fn set_len(&self, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move { unit(self.run(Effect::SetLen(len), false).await) })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move { unit(self.run(Effect::Discard { offset, len }, false).await) })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            unit(
                self.run(
                    Effect::Zeroes {
                        offset,
                        len,
                        unmap: may_unmap,
                    },
                    false,
                )
                .await,
            )
        })
    }

    fn preallocate(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move { unit(self.run(Effect::Prealloc { offset, len }, false).await) })
    }

    fn allocation(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<(Allocation, u64)>> {
        Box::pin(self.allocation_query(offset, len))
    }

    fn direct_align(&self) -> u32 {
        if self.opts.direct {
            self.fs.config.direct_align
        } else {
            1
        }
    }
}
