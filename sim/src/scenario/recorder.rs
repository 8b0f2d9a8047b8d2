//! The run's debug-event listener: every debug event goes into the run's hash (and, when
//! tracing, the transcript), and a request reaching a node inside a drained section opened by
//! the scenario is remembered as a drain violation.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::env::{Env, LocalBoxFuture};
use engine::event::DebugEvent;
use engine::graph::{DebugListener, Node};

use super::transcript::{Transcript, fnv1a};

/// Records every debug event into the run's hash (and, when tracing, the transcript).
pub(super) struct DebugRecorder {
    pub(super) env: Rc<dyn Env>,
    pub(super) hash: Cell<u64>,
    pub(super) trace: Option<Rc<RefCell<Transcript>>>,
    /// Nodes inside a drained section opened by the scenario (after the drain returned).
    pub(super) drained: RefCell<Vec<String>>,
    /// The first request seen at a drained node.
    pub(super) drain_violation: RefCell<Option<String>>,
}

/// Events raised by a request entering a node's driver.
fn is_request_event(e: DebugEvent) -> bool {
    matches!(
        e,
        DebugEvent::Preadv
            | DebugEvent::Pwritev
            | DebugEvent::PwritevZero
            | DebugEvent::FlushToDisk
    )
}

impl DebugListener for DebugRecorder {
    fn on_event(&self, node: &Rc<Node>, event: DebugEvent) -> Option<LocalBoxFuture<'static, ()>> {
        let h = fnv1a(self.hash.get(), node.name().as_bytes());
        self.hash.set(fnv1a(h, event.name().as_bytes()));
        if let Some(t) = &self.trace {
            t.borrow_mut().line(
                self.env.now_ns(),
                &format!("trace {} {}", node.name(), event.name()),
            );
        }
        if is_request_event(event) && self.drained.borrow().iter().any(|n| n == node.name()) {
            let mut v = self.drain_violation.borrow_mut();
            if v.is_none() {
                *v = Some(format!(
                    "a {} request reached drained node '{}'",
                    event.name(),
                    node.name()
                ));
            }
        }
        None
    }
}
