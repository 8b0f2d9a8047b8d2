//! The simulator's network: virtual unix and inet listeners and connections on the virtual clock,
//! implementing the engine's [`HostNet`] seam, with faults a scenario injects by address.
//!
//! Latency comes from the seed's own [`Stream::Net`] so an extra packet never shifts the disk or
//! the scheduler. Listeners and connections live in ordered maps (no hash iteration), so a seed
//! replays byte for byte. Faults ([`SimNet::partition`], [`SimNet::drop_links`],
//! [`SimNet::reset_after`], [`SimNet::refuse`]) are aimed at a listener address and hit every
//! connection made to it; [`SimNet::heal`] ends a partition or a refusal, so clients reconnect.

mod link;
mod listener;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::{Rc, Weak};

use engine::env::LocalBoxFuture;
use engine::env::net::{Conn, HostNet, Listener, NetAddr};
use engine::error::{Errno, Error, Result};
use rand_chacha::ChaCha8Rng;

use crate::clock::{Clock, Sleep};
use crate::rng::in_range;
use crate::trace::{Trace, tag};

use link::{Broken, Link, SimConn};
use listener::SimListener;

/// Events folded into the trace (`[event, link id, bytes]`).
pub(crate) mod ev {
    pub const CONNECT: u64 = 1;
    pub const ACCEPT: u64 = 2;
    pub const WRITE: u64 = 3;
    pub const READ: u64 = 4;
    pub const FAULT: u64 = 5;
}

/// First port handed out for an inet listen on port 0.
const FIRST_EPHEMERAL_PORT: u16 = 40000;

/// Default one-way latency range, in ns (a local socket: tens of microseconds).
const DEFAULT_LATENCY_NS: (u64, u64) = (20_000, 200_000);

/// State shared by the network, its listeners and its connections.
pub(crate) struct NetCore {
    pub(crate) clock: Rc<Clock>,
    trace: Rc<Trace>,
    rng: RefCell<ChaCha8Rng>,
    latency: Cell<(u64, u64)>,
    listeners: RefCell<BTreeMap<NetAddr, Rc<SimListener>>>,
    links: RefCell<BTreeMap<u64, Weak<Link>>>,
    next_link: Cell<u64>,
    next_port: Cell<u16>,
    refused: RefCell<BTreeSet<NetAddr>>,
    partitioned: RefCell<BTreeSet<NetAddr>>,
    /// Bytes still allowed through connections to an address before they are reset.
    reset_budget: RefCell<BTreeMap<NetAddr, u64>>,
}

impl NetCore {
    pub(crate) fn record(&self, event: u64, link: u64, bytes: u64) {
        self.trace.record(tag::NET, &[event, link, bytes]);
    }

    fn latency(&self) -> u64 {
        let (lo, hi) = self.latency.get();
        in_range(&mut self.rng.borrow_mut(), lo, hi)
    }

    /// When a write of `len` bytes on `link` arrives, and how many bytes of it get through
    /// before a reset cuts it (`None`: all of them).
    pub(crate) fn plan_write(&self, link: &Link, len: usize) -> (u64, Option<usize>) {
        let at = self.clock.now() + self.latency();
        let mut budgets = self.reset_budget.borrow_mut();
        let Some(left) = budgets.get_mut(&link.addr) else {
            return (at, None);
        };
        if (len as u64) < *left {
            *left -= len as u64;
            return (at, None);
        }
        let keep = *left as usize;
        budgets.remove(&link.addr);
        self.record(ev::FAULT, link.id, keep as u64);
        (at, Some(keep))
    }

    /// Every live link to `addr`, in creation order.
    fn links_to(&self, addr: &NetAddr) -> Vec<Rc<Link>> {
        let mut links = self.links.borrow_mut();
        links.retain(|_, w| w.strong_count() > 0);
        links
            .values()
            .filter_map(Weak::upgrade)
            .filter(|l| &l.addr == addr && !l.is_broken())
            .collect()
    }

    fn new_link(&self, addr: &NetAddr) -> Rc<Link> {
        let id = self.next_link.get();
        self.next_link.set(id + 1);
        let link = Link::new(id, addr.clone());
        link.partitioned
            .set(self.partitioned.borrow().contains(addr));
        self.links.borrow_mut().insert(id, Rc::downgrade(&link));
        link
    }

    pub(crate) fn unlisten(&self, addr: &NetAddr) {
        self.listeners.borrow_mut().remove(addr);
    }
}

/// The virtual network of one simulated world. Cloning is cheap (an `Rc`).
#[derive(Clone)]
pub struct SimNet {
    core: Rc<NetCore>,
}

impl SimNet {
    pub(crate) fn new(clock: Rc<Clock>, trace: Rc<Trace>, rng: ChaCha8Rng) -> SimNet {
        SimNet {
            core: Rc::new(NetCore {
                clock,
                trace,
                rng: RefCell::new(rng),
                latency: Cell::new(DEFAULT_LATENCY_NS),
                listeners: RefCell::new(BTreeMap::new()),
                links: RefCell::new(BTreeMap::new()),
                next_link: Cell::new(1),
                next_port: Cell::new(FIRST_EPHEMERAL_PORT),
                refused: RefCell::new(BTreeSet::new()),
                partitioned: RefCell::new(BTreeSet::new()),
                reset_budget: RefCell::new(BTreeMap::new()),
            }),
        }
    }

    /// Set the one-way latency range (ns) drawn for each write and connect.
    pub fn set_latency(&self, lo_ns: u64, hi_ns: u64) {
        assert!(lo_ns <= hi_ns, "latency range {lo_ns}..={hi_ns}");
        self.core.latency.set((lo_ns, hi_ns));
    }

    /// Addresses listened on now.
    pub fn listening(&self) -> Vec<NetAddr> {
        self.core.listeners.borrow().keys().cloned().collect()
    }

    /// Live connections to `addr`.
    pub fn connections(&self, addr: &NetAddr) -> usize {
        self.core.links_to(addr).len()
    }

    /// Partition `addr`: nothing moves on its connections (reads and writes wait) and new
    /// connections to it hang until [`SimNet::heal`].
    pub fn partition(&self, addr: &NetAddr) {
        self.core.partitioned.borrow_mut().insert(addr.clone());
        for l in self.core.links_to(addr) {
            self.core.record(ev::FAULT, l.id, 1);
            l.partitioned.set(true);
            l.wake_all();
        }
    }

    /// Refuse new connections to `addr` (`ECONNREFUSED`) until [`SimNet::heal`].
    pub fn refuse(&self, addr: &NetAddr) {
        self.core.refused.borrow_mut().insert(addr.clone());
    }

    /// End partitions and refusals of `addr`: held bytes flow on, new connections succeed.
    pub fn heal(&self, addr: &NetAddr) {
        self.core.refused.borrow_mut().remove(addr);
        self.core.partitioned.borrow_mut().remove(addr);
        for l in self.core.links_to(addr) {
            l.partitioned.set(false);
            l.wake_all();
        }
    }

    /// Drop every connection to `addr`: bytes in flight are lost, both ends see end of stream.
    /// Returns how many connections were dropped.
    pub fn drop_links(&self, addr: &NetAddr) -> usize {
        self.break_links(addr, Broken::Dropped)
    }

    /// Reset every connection to `addr` now (`ECONNRESET` on both ends).
    pub fn reset_now(&self, addr: &NetAddr) -> usize {
        self.break_links(addr, Broken::Reset)
    }

    fn break_links(&self, addr: &NetAddr, how: Broken) -> usize {
        let links = self.core.links_to(addr);
        for l in &links {
            self.core.record(ev::FAULT, l.id, 2);
            l.break_link(how);
        }
        links.len()
    }

    /// Let `bytes` more bytes through connections to `addr`, then reset the connection that
    /// carries the next one, cutting its message.
    pub fn reset_after(&self, addr: &NetAddr, bytes: u64) {
        self.core
            .reset_budget
            .borrow_mut()
            .insert(addr.clone(), bytes);
    }

    /// Power loss of the machine: every listener closes and every connection resets; faults
    /// aimed at addresses end (the network itself did not fail).
    pub fn power_loss(&self) {
        let listeners: Vec<_> = self.core.listeners.borrow().values().cloned().collect();
        for l in listeners {
            engine::env::net::Listener::close(&*l);
        }
        let links: Vec<_> = self
            .core
            .links
            .borrow()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for l in links {
            l.break_link(Broken::Reset);
        }
        self.core.links.borrow_mut().clear();
        self.core.refused.borrow_mut().clear();
        self.core.partitioned.borrow_mut().clear();
        self.core.reset_budget.borrow_mut().clear();
    }

    async fn connect_to(&self, addr: NetAddr) -> Result<Rc<dyn Conn>> {
        // The handshake takes a round trip, and hangs while the address is partitioned.
        let rtt = self.core.latency() * 2;
        Sleep::new(self.core.clock.clone(), self.core.clock.now() + rtt).await;
        while self.core.partitioned.borrow().contains(&addr) {
            Sleep::new(self.core.clock.clone(), self.core.clock.now() + 1_000_000).await;
        }
        if self.core.refused.borrow().contains(&addr) {
            return Err(refused(&addr));
        }
        let listener = self.core.listeners.borrow().get(&addr).cloned();
        let Some(listener) = listener else {
            return Err(match &addr {
                NetAddr::Unix(_) => Error::io_msg(Errno::ENOENT, "No such file or directory"),
                NetAddr::Inet { .. } => refused(&addr),
            });
        };
        let link = self.core.new_link(&addr);
        self.core.record(ev::CONNECT, link.id, 0);
        let server = SimConn {
            link: link.clone(),
            side: 1,
            core: self.core.clone(),
        };
        listener.enqueue(server);
        Ok(Rc::new(SimConn {
            link,
            side: 0,
            core: self.core.clone(),
        }))
    }
}

fn refused(addr: &NetAddr) -> Error {
    Error::io_msg(
        Errno::Other(111),
        format!("Failed to connect to '{addr}': Connection refused"),
    )
}

impl HostNet for SimNet {
    fn listen(&self, addr: &NetAddr) -> Result<Rc<dyn Listener>> {
        let addr = match addr {
            NetAddr::Inet { host, port: 0 } => {
                let port = self.core.next_port.get();
                self.core.next_port.set(port.wrapping_add(1));
                NetAddr::Inet {
                    host: host.clone(),
                    port,
                }
            }
            a => a.clone(),
        };
        if self.core.listeners.borrow().contains_key(&addr) {
            return Err(Error::io_msg(
                Errno::Other(98),
                format!("Failed to bind socket to {addr}: Address already in use"),
            ));
        }
        let l = SimListener::new(addr.clone(), self.core.clone());
        self.core.listeners.borrow_mut().insert(addr, l.clone());
        Ok(l)
    }

    fn connect(&self, addr: &NetAddr) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>> {
        Box::pin(self.connect_to(addr.clone()))
    }
}

#[cfg(test)]
mod tests;
