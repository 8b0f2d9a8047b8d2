//! Raising debug events: the node's own driver (blkdebug) first, then global listeners
//! (simulator breakpoints and traces). One cheap test each when nobody listens.

use std::rc::Rc;

use crate::event::DebugEvent;
use crate::graph::Node;

/// Raise `event` at `node`; suspends if a rule or breakpoint says so.
#[inline]
pub(crate) async fn raise(node: &Rc<Node>, event: DebugEvent) {
    let driver_listens = node.driver().breakpoints().is_some();
    if driver_listens || node.ctx().debug.active() {
        raise_slow(node, event, driver_listens).await;
    }
}

async fn raise_slow(node: &Rc<Node>, event: DebugEvent, driver_listens: bool) {
    if driver_listens
        && let Some(suspend) = node
            .driver()
            .breakpoints()
            .and_then(|b| b.debug_event(event))
    {
        suspend.await;
    }
    for listener in node.ctx().debug_listeners() {
        if let Some(suspend) = listener.on_event(node, event) {
            suspend.await;
        }
    }
}
