//! A virtual listening socket: a backlog of accepted-but-not-yet-taken server ends.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use engine::env::LocalBoxFuture;
use engine::env::net::{Conn, Listener, NetAddr};
use engine::error::{Errno, Error, Result};

use super::link::SimConn;
use super::{NetCore, ev};

pub(crate) struct SimListener {
    addr: NetAddr,
    core: Rc<NetCore>,
    backlog: RefCell<VecDeque<SimConn>>,
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl SimListener {
    pub(crate) fn new(addr: NetAddr, core: Rc<NetCore>) -> Rc<SimListener> {
        Rc::new(SimListener {
            addr,
            core,
            backlog: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            waker: RefCell::new(None),
        })
    }

    /// A client connected: queue its server end.
    pub(crate) fn enqueue(&self, conn: SimConn) {
        self.backlog.borrow_mut().push_back(conn);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl Listener for SimListener {
    fn accept(&self) -> LocalBoxFuture<'_, Result<Rc<dyn Conn>>> {
        Box::pin(poll_fn(move |cx| {
            if self.closed.get() {
                return Poll::Ready(Err(Error::io_msg(Errno::Other(22), "Listener closed")));
            }
            match self.backlog.borrow_mut().pop_front() {
                Some(conn) => {
                    self.core.record(ev::ACCEPT, conn.link.id, 0);
                    Poll::Ready(Ok(Rc::new(conn) as Rc<dyn Conn>))
                }
                None => {
                    *self.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }))
    }

    fn local_addr(&self) -> NetAddr {
        self.addr.clone()
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.core.unlisten(&self.addr);
        // Connections nobody accepted are refused (dropping their server end closes them).
        self.backlog.borrow_mut().clear();
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}
