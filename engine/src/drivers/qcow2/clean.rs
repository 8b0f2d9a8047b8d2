//! `cache-clean-interval`: every interval on the env clock, the metadata tables that are clean
//! and were not used during the whole last interval are dropped from the L2 and refcount caches
//! (an idle image gives its memory back, as in QEMU). Runs only when the option is given.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::cell::Cell;
use std::rc::{Rc, Weak};

use crate::env::Env;
use crate::graph::Node;
use crate::util::{Either, Notify, race};

use super::Qcow2;

/// Owned by the driver: dropping it (the image closes) ends the cleaning task.
pub(crate) struct Cleaner {
    stopped: Rc<Cell<bool>>,
    stop: Rc<Notify>,
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.stopped.set(true);
        self.stop.notify_all();
    }
}

/// Start cleaning the caches of the qcow2 `node` every `secs` seconds.
pub(crate) fn start(env: Rc<dyn Env>, node: Weak<Node>, secs: u64) -> Cleaner {
    let stopped = Rc::new(Cell::new(false));
    let stop = Rc::new(Notify::new());
    let (s, n) = (stopped.clone(), stop.clone());
    let period = secs.saturating_mul(1_000_000_000);
    let task_env = env.clone();
    env.spawn(
        "qcow2 cache cleaner",
        Box::pin(async move {
            loop {
                let deadline = task_env.now_ns().saturating_add(period);
                let woke = race(task_env.sleep_until(deadline), n.wait()).await;
                if s.get() || matches!(woke, Either::Right(())) {
                    return;
                }
                let Some(node) = node.upgrade() else { return };
                let Some(ops) = node.driver().format_ops() else {
                    return;
                };
                ops.clean_unused_tables().await;
            }
        }),
    );
    Cleaner { stopped, stop }
}

/// (L2 tables, refcount blocks) cached by the qcow2 `node` (None for other drivers): what
/// the cache options and the cleaner leave in memory.
pub fn cached_tables(node: &Node) -> Option<(usize, usize)> {
    Some(node.driver().format_ops()?.cached_tables())
}

impl Qcow2 {
    /// One cleaning round, under the metadata lock (no table is in use across it).
    pub(crate) async fn clean_unused_tables(&self) {
        let _held = &self.meta.lock().await;
        self.l2.cache.drop_unused();
        self.alloc.cache.drop_unused();
    }
}
