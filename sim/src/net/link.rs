//! One virtual connection ([`Link`]) and its two ends ([`SimConn`]).
//!
//! A link carries two one-way byte queues. A write is cut into a segment stamped with the virtual
//! time it reaches the peer (now plus a seeded latency, never earlier than the segment before it,
//! so a stream stays in order); a read takes what has arrived by now and otherwise waits for the
//! next arrival or for a fault to change the link. Faults act on the link itself: a partition
//! holds both directions (nothing arrives, writers wait), a reset fails both ends with
//! `ECONNRESET` (what was in flight is lost), a drop closes both ends silently (in-flight bytes are
//! lost and reads see end of stream).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use engine::env::LocalBoxFuture;
use engine::env::net::{Conn, NetAddr};
use engine::error::{Errno, Error, Result};
use engine::io::{BufResult, IoBuf};
use std::future::Future;

use super::NetCore;
use crate::clock::Sleep;

/// `ECONNRESET`.
pub(crate) fn conn_reset() -> Error {
    Error::io_msg(Errno::Other(104), "Connection reset by peer")
}

/// `EPIPE`.
pub(crate) fn broken_pipe() -> Error {
    Error::io_msg(Errno::Other(32), "Broken pipe")
}

/// One direction of a link: what the writer on one side sent and the reader on the other has not
/// taken yet.
#[derive(Default)]
struct Dir {
    /// Segments in order: arrival time and bytes.
    segs: VecDeque<(u64, Vec<u8>)>,
    /// Bytes of the front segment already read.
    front_read: usize,
    /// The writer shut its side: the reader sees end of stream once the queue is empty.
    eof: bool,
    /// The reader shut its side: further writes fail with `EPIPE`.
    reader_gone: bool,
    /// Arrival time of the last segment queued (the next one never arrives earlier).
    last_at: u64,
}

/// How a link ended, if it did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Broken {
    /// Both ends fail with `ECONNRESET`.
    Reset,
    /// Both ends see end of stream; writes fail with `EPIPE`.
    Dropped,
}

/// A connection between a client end (side 0) and a server end (side 1).
pub(crate) struct Link {
    pub(crate) id: u64,
    /// The listener address the client connected to (what faults are aimed at).
    pub(crate) addr: NetAddr,
    /// `dirs[s]` carries what side `s` writes.
    dirs: RefCell<[Dir; 2]>,
    broken: Cell<Option<Broken>>,
    pub(crate) partitioned: Cell<bool>,
    /// A reset cut a message: once what arrived before it is read, both ends fail.
    pending_reset: Cell<bool>,
    /// Tasks waiting on this link (readers, writers held by a partition).
    wakers: RefCell<Vec<Waker>>,
}

impl Link {
    pub(crate) fn new(id: u64, addr: NetAddr) -> Rc<Link> {
        Rc::new(Link {
            id,
            addr,
            dirs: RefCell::new([Dir::default(), Dir::default()]),
            broken: Cell::new(None),
            partitioned: Cell::new(false),
            pending_reset: Cell::new(false),
            wakers: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.get().is_some() || self.pending_reset.get()
    }

    /// Reset after the bytes already queued: writes fail now, reads once drained.
    pub(crate) fn reset_after_queued(&self) {
        self.pending_reset.set(true);
        self.wake_all();
    }

    /// Wake every task waiting on the link (after any change to it).
    pub(crate) fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    fn park(&self, cx: &Context<'_>) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
    }

    /// End the link: every byte in flight is lost.
    pub(crate) fn break_link(&self, how: Broken) {
        if self.broken.get().is_none() {
            self.broken.set(Some(how));
        }
        for d in self.dirs.borrow_mut().iter_mut() {
            d.segs.clear();
            d.front_read = 0;
        }
        self.wake_all();
    }

    /// Close side `side`'s end, both directions (the peer reads what was sent, then end of
    /// stream; its writes fail).
    pub(crate) fn shut(&self, side: usize) {
        {
            let mut dirs = self.dirs.borrow_mut();
            dirs[side].eof = true;
            dirs[1 - side].reader_gone = true;
            dirs[1 - side].segs.clear();
            dirs[1 - side].front_read = 0;
        }
        self.wake_all();
    }

    /// Queue `bytes` from `side`, arriving at `at` at the earliest.
    pub(crate) fn push(&self, side: usize, at: u64, bytes: Vec<u8>) {
        {
            let mut dirs = self.dirs.borrow_mut();
            let d = &mut dirs[side];
            let at = at.max(d.last_at);
            d.last_at = at;
            if !bytes.is_empty() {
                d.segs.push_back((at, bytes));
            }
        }
        self.wake_all();
    }

    /// Whether side `side` may write now: `Err` when it never will.
    fn write_state(&self, side: usize) -> Result<bool> {
        match self.broken.get() {
            Some(Broken::Reset) => return Err(conn_reset()),
            Some(Broken::Dropped) => return Err(broken_pipe()),
            None if self.pending_reset.get() => return Err(conn_reset()),
            None => {}
        }
        let dirs = self.dirs.borrow();
        if dirs[side].eof || dirs[side].reader_gone {
            return Err(broken_pipe());
        }
        Ok(!self.partitioned.get())
    }

    /// One read attempt for `side` at time `now`: the bytes copied, or the arrival time of the
    /// next segment to wait for (`None`: wait for a change).
    fn try_read(&self, side: usize, now: u64, out: &mut [u8]) -> Poll<Result<usize>> {
        match self.broken.get() {
            Some(Broken::Reset) => return Poll::Ready(Err(conn_reset())),
            Some(Broken::Dropped) => return Poll::Ready(Ok(0)),
            None => {}
        }
        let mut dirs = self.dirs.borrow_mut();
        if dirs[1 - side].reader_gone {
            // This end was shut: reads see end of stream.
            return Poll::Ready(Ok(0));
        }
        let d = &mut dirs[1 - side];
        if self.partitioned.get() {
            return Poll::Pending;
        }
        let Some((at, seg)) = d.segs.front() else {
            return if self.pending_reset.get() {
                Poll::Ready(Err(conn_reset()))
            } else if d.eof {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        };
        if *at > now {
            return Poll::Pending;
        }
        let avail = &seg[d.front_read..];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        d.front_read += n;
        if d.front_read == seg.len() {
            d.segs.pop_front();
            d.front_read = 0;
        }
        Poll::Ready(Ok(n))
    }

    /// When the next segment for `side` arrives, if one is queued.
    fn next_arrival(&self, side: usize) -> Option<u64> {
        self.dirs.borrow()[1 - side].segs.front().map(|s| s.0)
    }
}

/// One end of a link, as the engine sees it.
pub(crate) struct SimConn {
    pub(crate) link: Rc<Link>,
    pub(crate) side: usize,
    pub(crate) core: Rc<NetCore>,
}

impl SimConn {
    async fn read_into(&self, buf: &mut IoBuf) -> Result<usize> {
        let mut sleep: Option<Pin<Box<Sleep>>> = None;
        poll_fn(|cx| {
            let now = self.core.clock.now();
            if let Poll::Ready(r) = self.link.try_read(self.side, now, buf.as_mut_slice()) {
                if let Ok(n) = &r {
                    self.core.record(super::ev::READ, self.link.id, *n as u64);
                }
                return Poll::Ready(r);
            }
            self.link.park(cx);
            if !self.link.partitioned.get()
                && let Some(at) = self.link.next_arrival(self.side)
            {
                let s = match &mut sleep {
                    Some(s) if s.deadline() == at => s,
                    slot => slot.insert(Box::pin(Sleep::new(self.core.clock.clone(), at))),
                };
                if s.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        // A partition holds the writer until it heals (or the link breaks).
        poll_fn(|cx| match self.link.write_state(self.side) {
            Err(e) => Poll::Ready(Err(e)),
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => {
                self.link.park(cx);
                Poll::Pending
            }
        })
        .await?;
        let (at, cut) = self.core.plan_write(&self.link, bytes.len());
        self.core
            .record(super::ev::WRITE, self.link.id, bytes.len() as u64);
        match cut {
            None => {
                self.link.push(self.side, at, bytes.to_vec());
                Ok(())
            }
            Some(keep) => {
                // Reset mid-message: the peer gets a prefix, then the link fails.
                self.link.push(self.side, at, bytes[..keep].to_vec());
                self.link.reset_after_queued();
                Err(conn_reset())
            }
        }
    }
}

impl Conn for SimConn {
    fn read(&self, buf: IoBuf) -> LocalBoxFuture<'_, (IoBuf, Result<usize>)> {
        Box::pin(async move {
            let mut buf = buf;
            let r = self.read_into(&mut buf).await;
            (buf, r)
        })
    }

    fn write_all(&self, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let r = self.write_bytes(buf.as_slice()).await;
            (buf, r)
        })
    }

    fn shutdown(&self) {
        self.link.shut(self.side);
    }

    fn peer(&self) -> String {
        if self.side == 0 {
            self.link.addr.to_string()
        } else {
            format!("sim-client-{}", self.link.id)
        }
    }
}

impl Drop for SimConn {
    fn drop(&mut self) {
        self.link.shut(self.side);
    }
}
