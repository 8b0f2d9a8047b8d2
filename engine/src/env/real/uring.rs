//! The io_uring backend.
//!
//! Requests push SQEs as they start; the loop submits once per turn (one `io_uring_enter` that
//! also waits when nothing else is runnable). The user data of an SQE is the index of its slot in
//! the [`OpTable`], which owns the buffer until the CQE arrives. Short reads continue (zeroes past
//! EOF), short writes are resubmitted, `EAGAIN`/`EINTR` retried. When the submission queue is
//! full, or as many requests are in the kernel as the completion queue holds, new requests wait
//! in a backlog.
//!
//! Cross-thread wakes arrive as a poll completion on the loop's eventfd, re-armed after each.

use std::collections::VecDeque;
use std::task::Waker;

use io_uring::{IoUring, Probe, opcode, types};

use super::op::{Op, OpKind};
use super::shared::Shared;
use super::slab::{OpTable, SlotState};
use super::sys::{self, EventFd};

/// Submission queue entries.
const ENTRIES: u32 = 256;
/// User data of the eventfd poll.
const EFD_TOKEN: u64 = u64::MAX;
/// User data of a `POLL_REMOVE` (its own completion carries nothing).
const CANCEL_TOKEN: u64 = u64::MAX - 1;
/// Largest transfer put in one SQE (the kernel caps a transfer below 2 GiB anyway).
const MAX_CHUNK: usize = 1 << 30;

/// The ring and its in-flight operations.
pub(super) struct Uring {
    /// The ring.
    ring: IoUring,
    /// In-flight operations.
    pub(super) ops: OpTable,
    /// Slots waiting for room in the ring.
    backlog: VecDeque<u32>,
    /// SQEs pushed and not yet completed (the eventfd poll included).
    in_kernel: usize,
    /// Most SQEs the completion queue can answer at once.
    cap: usize,
    /// The kernel has `IORING_OP_FTRUNCATE` (6.9+); else ftruncate runs inline.
    has_ftruncate: bool,
    /// The eventfd poll is in the kernel.
    efd_armed: bool,
    /// The loop's eventfd (owned by the inbox, which outlives the ring).
    efd: i32,
    /// Completions of one reap, reused.
    cqes: Vec<(u64, i32)>,
}

impl Uring {
    /// Set up a ring; `Err` when the host refuses io_uring (old kernel, seccomp, EPERM) or lacks
    /// the features the loop needs (waiting with a timeout, `IORING_FEAT_EXT_ARG`, 5.11+).
    pub(super) fn new(efd: &EventFd) -> std::io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)
            .or_else(|_| IoUring::new(ENTRIES))?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let needed = [opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE];
        if !needed
            .iter()
            .chain(&[opcode::Fallocate::CODE, opcode::PollAdd::CODE])
            .all(|&c| probe.is_supported(c))
        {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        let cap = ring.params().cq_entries() as usize;
        Ok(Uring {
            has_ftruncate: probe.is_supported(opcode::Ftruncate::CODE),
            ring,
            ops: OpTable::default(),
            backlog: VecDeque::new(),
            in_kernel: 0,
            cap,
            efd_armed: false,
            efd: efd.raw(),
            cqes: Vec::with_capacity(cap),
        })
    }

    /// Start `op`: push its SQE (or backlog it). Ops without an opcode complete inline.
    pub(super) fn start(&mut self, op: Op, waker: &Waker) -> u32 {
        let slot = self.ops.insert(op, waker);
        let s = &self.ops.slots[slot as usize];
        if s.kind == OpKind::Ftruncate && !self.has_ftruncate {
            let r = sys::ftruncate(s.fd, s.len);
            self.ops.complete(slot, r.err().map_or(0, |e| -e));
        } else {
            self.queue(slot);
        }
        slot
    }

    /// Push the SQE for the rest of slot `index`, or backlog it when there is no room.
    fn queue(&mut self, index: u32) {
        if !self.backlog.is_empty() || !self.push(index) {
            self.backlog.push_back(index);
        }
    }

    /// Try to push the SQE of slot `index`.
    fn push(&mut self, index: u32) -> bool {
        // Keep one entry of each queue for the eventfd poll, so a cross-thread wake always
        // reaches a loop that sleeps with a full ring.
        let sq_full = {
            let sq = self.ring.submission();
            sq.len() + 1 >= sq.capacity()
        };
        if sq_full || self.in_kernel + usize::from(!self.efd_armed) + 1 > self.cap {
            return false;
        }
        let s = &mut self.ops.slots[index as usize];
        let fd = types::Fd(s.fd);
        let entry = match s.kind {
            OpKind::Read | OpKind::Write { .. } => {
                let buf = s.buf.as_mut().expect("read/write slot has a buffer");
                let len = (buf.len() - s.done).min(MAX_CHUNK) as u32;
                // SAFETY: done < len, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(s.done) };
                let off = s.offset + s.done as u64;
                match s.kind {
                    OpKind::Write { dsync } => {
                        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                        opcode::Write::new(fd, ptr, len)
                            .offset(off)
                            .rw_flags(flags)
                            .build()
                    }
                    _ => opcode::Read::new(fd, ptr, len).offset(off).build(),
                }
            }
            OpKind::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::Fallocate { mode } => opcode::Fallocate::new(fd, s.len)
                .offset(s.offset)
                .mode(mode)
                .build(),
            OpKind::Ftruncate => opcode::Ftruncate::new(fd, s.len).build(),
            OpKind::Poll { events } => opcode::PollAdd::new(fd, events as u16 as u32).build(),
        };
        // SAFETY: the buffer and fd the entry names are owned by the slot until its CQE is reaped.
        let ok = unsafe {
            self.ring
                .submission()
                .push(&entry.user_data(u64::from(index)))
        }
        .is_ok();
        self.in_kernel += usize::from(ok);
        ok
    }

    /// Move backlogged slots into the ring while there is room.
    fn flush_backlog(&mut self) {
        while let Some(&index) = self.backlog.front() {
            if !self.push(index) {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Arm the eventfd poll if it is not in the kernel.
    fn arm_efd(&mut self) {
        if self.efd_armed {
            return;
        }
        let entry = opcode::PollAdd::new(types::Fd(self.efd), libc::POLLIN as u32)
            .build()
            .user_data(EFD_TOKEN);
        // SAFETY: a poll names no memory.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.efd_armed = true;
            self.in_kernel += 1;
        }
    }

    /// One turn: submit, maybe wait (see [`super::dispatch::Io::turn`]), reap.
    pub(super) fn turn(&mut self, block: Option<Option<u64>>, shared: &Shared) {
        if block.is_some() {
            self.arm_efd();
        }
        self.flush_backlog();
        let res = match block {
            Some(timeout) => match timeout {
                Some(ns) => {
                    let ts = types::Timespec::new()
                        .sec(ns / 1_000_000_000)
                        .nsec((ns % 1_000_000_000) as u32);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submit_and_wait(1),
            },
            None => {
                let sq = self.ring.submission();
                if sq.is_empty() && !sq.taskrun() {
                    Ok(0)
                } else {
                    drop(sq);
                    self.ring.submit()
                }
            }
        };
        if block.is_some() {
            // Awake before reaping: the wakes of these completions come from this thread and
            // must not write the eventfd (three wasted syscalls per request).
            shared.awake();
        }
        match res.as_ref().map_err(std::io::Error::raw_os_error) {
            Ok(_) | Err(Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(_) => panic!("io_uring_enter failed: {}", res.unwrap_err()),
        }
        self.reap();
    }

    /// Process every available completion.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        self.in_kernel -= cqes.len();
        for &(token, res) in &cqes {
            if token == EFD_TOKEN {
                self.efd_armed = false;
                sys::drain_eventfd(self.efd);
            } else if token != CANCEL_TOKEN {
                self.handle(token as u32, res);
            }
        }
        cqes.clear();
        self.cqes = cqes;
        self.flush_backlog();
    }

    /// Handle the CQE of slot `index`.
    fn handle(&mut self, index: u32, res: i32) {
        if res == -libc::EINTR || res == -libc::EAGAIN {
            return self.queue(index);
        }
        let s = &mut self.ops.slots[index as usize];
        let res = match s.kind {
            OpKind::Read | OpKind::Write { .. } if res >= 0 => {
                let buf = s.buf.as_mut().expect("read/write slot has a buffer");
                s.done += res as usize;
                let pos = s.offset + s.done as u64;
                if s.done >= buf.len() || s.state == SlotState::Orphaned {
                    0
                } else if s.kind == OpKind::Read && (res == 0 || sys::at_eof(s.fd, pos)) {
                    // EOF: the rest reads as zeroes. (A short read is checked against the size
                    // rather than retried: under O_DIRECT the retry offset may be unaligned.)
                    buf.as_mut_slice()[s.done..].fill(0);
                    0
                } else if res == 0 {
                    -libc::ENOSPC // a write that makes no progress would loop forever
                } else {
                    return self.queue(index);
                }
            }
            _ => res,
        };
        self.ops.complete(index, res);
    }

    /// The future of slot `index` was dropped. A readiness poll may never complete by itself
    /// (a socket nobody writes to), and its slot keeps the fd open: take it out of the kernel.
    pub(super) fn cancel(&mut self, index: u32) {
        let poll = matches!(self.ops.slots[index as usize].kind, OpKind::Poll { .. });
        let in_flight = self.ops.slots[index as usize].state == SlotState::InFlight;
        self.ops.cancel(index);
        if poll && in_flight {
            if let Some(pos) = self.backlog.iter().position(|&i| i == index) {
                self.backlog.remove(pos);
                return self.ops.complete(index, -libc::ECANCELED);
            }
            self.remove_poll(index);
        }
    }

    /// Push a `POLL_REMOVE` for the poll of slot `index` (its CQE then arrives as cancelled).
    fn remove_poll(&mut self, index: u32) {
        let entry = opcode::PollRemove::new(u64::from(index))
            .build()
            .user_data(CANCEL_TOKEN);
        // SAFETY: a poll removal names no memory.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.in_kernel += 1;
        }
    }

    /// Wait for every operation in the kernel (teardown: the kernel may still write into the
    /// buffers, which must outlive that). Readiness polls are removed first: they may never
    /// complete on their own.
    pub(super) fn quiesce(&mut self) {
        self.backlog.clear();
        let polls: Vec<u32> = (0..self.ops.slots.len() as u32)
            .filter(|&i| {
                let s = &self.ops.slots[i as usize];
                matches!(s.kind, OpKind::Poll { .. })
                    && matches!(s.state, SlotState::InFlight | SlotState::Orphaned)
            })
            .collect();
        for i in polls {
            self.remove_poll(i);
        }
        while self.in_kernel > usize::from(self.efd_armed) {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
    }
}
