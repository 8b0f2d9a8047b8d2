//! The machine's run state, shared by every backend of an engine: `werror=stop` stops it (event
//! `STOP`), `cont` resumes it (event `RESUME`), and guest requests wait while it is stopped.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use serde_json::json;

use crate::graph::GraphCtx;
use crate::util::Notify;

use super::BlockBackend;
use super::policy::IoStatus;

/// Run state of the guest machine.
pub struct Machine {
    ctx: Rc<GraphCtx>,
    running: Cell<bool>,
    resumed: Notify,
    backends: RefCell<Vec<Weak<BlockBackend>>>,
}

impl Machine {
    /// A running machine.
    pub fn new(ctx: &Rc<GraphCtx>) -> Rc<Machine> {
        Rc::new(Machine {
            ctx: ctx.clone(),
            running: Cell::new(true),
            resumed: Notify::new(),
            backends: RefCell::new(Vec::new()),
        })
    }

    /// True unless stopped by an I/O error (or `stop`).
    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    /// Stop the machine (idempotent); emits `STOP` once.
    pub fn stop(&self) {
        if self.running.replace(false) {
            self.ctx.emit("STOP", json!({}));
        }
    }

    /// Resume the machine: reset every backend's I/O status and let waiting requests retry.
    pub fn cont(&self) {
        self.backends.borrow_mut().retain(|w| w.strong_count() > 0);
        for bb in self.backends.borrow().iter().filter_map(Weak::upgrade) {
            bb.iostatus.set(IoStatus::Ok);
        }
        if !self.running.replace(true) {
            self.ctx.emit("RESUME", json!({}));
        }
        self.resumed.notify_all();
    }

    /// Track a backend so `cont` resets its status.
    pub fn register(&self, bb: &Rc<BlockBackend>) {
        self.backends.borrow_mut().push(Rc::downgrade(bb));
    }

    pub(super) async fn wait_running(&self) {
        while !self.running.get() {
            self.resumed.wait().await;
        }
    }
}
