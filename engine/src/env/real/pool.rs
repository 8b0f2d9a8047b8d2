//! The worker-pool backend: blocking syscalls on a few threads, for hosts where io_uring is
//! unavailable (old kernels, seccomp) or when asked for with `BLK_IO_BACKEND=threads`.
//!
//! The loop batches the jobs of one turn and hands them over under one lock; workers post
//! completions to the loop's inbox ([`Shared`]), which writes the eventfd only when the loop
//! sleeps. Buffers travel to the worker and back by value (`IoBuf` is `Send`); the loop-side slot
//! keeps the file open until the completion is reaped.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Waker;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::op::{Done, Op, OpKind};
use super::shared::Shared;
use super::slab::OpTable;
use super::sys;
use crate::io::IoBuf;

/// Number of worker threads.
pub(super) const WORKERS: usize = 4;

/// One blocking operation for a worker.
struct Job {
    /// Slot of the operation on the loop side.
    slot: u32,
    /// The fd (kept open by the slot).
    fd: RawFd,
    /// What to do.
    kind: OpKind,
    /// Byte offset.
    offset: u64,
    /// Length or new size (non-data ops).
    len: u64,
    /// The data buffer, owned by the worker meanwhile.
    buf: Option<IoBuf>,
}

/// The job queue the workers share.
#[derive(Default)]
struct Queue {
    /// Jobs in hand-over order.
    jobs: VecDeque<Job>,
    /// Set when the pool is dropped: workers exit.
    shutdown: bool,
}

/// State shared by the loop and the workers.
struct PoolShared {
    /// The job queue.
    queue: Mutex<Queue>,
    /// Signalled when jobs arrive or at shutdown.
    cv: Condvar,
    /// The loop's inbox, for completions.
    inbox: Arc<Shared>,
}

/// The loop side of the pool backend.
pub(super) struct PoolIo {
    /// In-flight operations.
    pub(super) ops: OpTable,
    /// Jobs of this turn, handed over together in [`PoolIo::flush`].
    pending: Vec<Job>,
    /// State shared with the workers.
    shared: Arc<PoolShared>,
    /// The workers, joined on drop.
    threads: Vec<JoinHandle<()>>,
    /// Slots of readiness polls (`OpKind::Poll`): the loop itself polls their fds when it waits,
    /// so a socket nobody writes to never ties up a worker.
    polls: Vec<u32>,
}

impl PoolIo {
    /// Start the workers; they deliver completions to `inbox`.
    pub(super) fn new(inbox: Arc<Shared>) -> PoolIo {
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            inbox,
        });
        let threads = (0..WORKERS)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("blk-io-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawn I/O worker thread")
            })
            .collect();
        PoolIo {
            ops: OpTable::default(),
            pending: Vec::new(),
            shared,
            threads,
            polls: Vec::new(),
        }
    }

    /// Queue `op` for the workers (handed over at the end of the turn).
    pub(super) fn start(&mut self, mut op: Op, waker: &Waker) -> u32 {
        let buf = op.buf.take();
        let (kind, offset, len) = (op.kind, op.offset, op.len);
        let slot = self.ops.insert(op, waker);
        if let OpKind::Poll { .. } = kind {
            self.polls.push(slot);
            return slot;
        }
        let fd = self.ops.slots[slot as usize].fd;
        self.pending.push(Job {
            slot,
            fd,
            kind,
            offset,
            len,
            buf,
        });
        slot
    }

    /// Hand this turn's jobs to the workers.
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len();
        self.shared.queue.lock().jobs.extend(self.pending.drain(..));
        if n == 1 {
            self.shared.cv.notify_one();
        } else {
            self.shared.cv.notify_all();
        }
    }

    /// The future of slot `index` was dropped; a readiness poll is over at once (it holds no
    /// buffer and no worker, and its slot keeps the fd open).
    pub(super) fn cancel(&mut self, index: u32) {
        self.ops.cancel(index);
        if let Some(pos) = self.polls.iter().position(|&i| i == index) {
            self.polls.swap_remove(pos);
            self.ops.complete(index, -libc::ECANCELED);
        }
    }

    /// True when readiness polls are waiting.
    pub(super) fn has_polls(&self) -> bool {
        !self.polls.is_empty()
    }

    /// Wait (at most `timeout_ns`, `None`: no limit) until `efd` or one of the polled fds is
    /// ready, and complete the polls that are.
    pub(super) fn wait_polls(&mut self, efd: RawFd, timeout_ns: Option<u64>) {
        let mut fds: Vec<libc::pollfd> = std::iter::once((efd, libc::POLLIN))
            .chain(self.polls.iter().map(|&i| {
                let s = &self.ops.slots[i as usize];
                let OpKind::Poll { events } = s.kind else {
                    unreachable!("a non-poll slot among the polls")
                };
                (s.fd, events)
            }))
            .map(|(fd, events)| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        if sys::ppoll(&mut fds, timeout_ns) <= 0 {
            return;
        }
        if fds[0].revents != 0 {
            sys::drain_eventfd(efd);
        }
        let mut i = 0;
        for pfd in &fds[1..] {
            if pfd.revents != 0 {
                let slot = self.polls.swap_remove(i);
                self.ops.complete(slot, 0);
            } else {
                i += 1;
            }
        }
    }

    /// Apply completions delivered by the workers (drains `done`).
    pub(super) fn reap(&mut self, done: &mut Vec<Done>) {
        for d in done.drain(..) {
            self.ops.slots[d.slot as usize].buf = d.buf;
            self.ops.complete(d.slot, d.res);
        }
    }
}

impl Drop for PoolIo {
    fn drop(&mut self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.cv.notify_all();
        for t in self.threads.drain(..) {
            // A worker that panicked has nothing left to clean up; keep shutting down.
            let _ = t.join();
        }
    }
}

/// A worker: take jobs until shutdown, run them, post the results.
fn worker(shared: &PoolShared) {
    loop {
        let job = {
            let mut q = shared.queue.lock();
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                shared.cv.wait(&mut q);
            }
        };
        let done = run(job);
        shared.inbox.deliver(|inbox| inbox.done.push(done));
    }
}

/// Run one job with blocking syscalls.
fn run(mut job: Job) -> Done {
    let fd = job.fd;
    let r = match (job.kind, job.buf.as_mut()) {
        (OpKind::Read, Some(buf)) => sys::read_full(fd, buf, job.offset),
        (OpKind::Write { dsync }, Some(buf)) => sys::write_full(fd, buf, job.offset, dsync),
        (OpKind::Read | OpKind::Write { .. }, None) => Ok(()),
        (OpKind::Fdatasync, _) => sys::fdatasync(fd),
        (OpKind::Fallocate { mode }, _) => sys::fallocate(fd, mode, job.offset, job.len),
        (OpKind::Ftruncate, _) => sys::ftruncate(fd, job.len),
        (OpKind::Poll { .. }, _) => unreachable!("readiness polls stay on the loop"),
    };
    Done {
        slot: job.slot,
        res: r.err().map_or(0, |e| -e),
        buf: job.buf,
    }
}
