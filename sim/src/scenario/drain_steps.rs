//! `drain begin NODE [subtree]` / `drain end NODE`: drained sections the scenario holds open.
//! The nodes inside one are told to the debug recorder, which flags any request reaching them.

use super::checks::within;
use super::outcome::{Failure, fail};
use super::syntax::Step;
use super::world::World;

/// A drain that has not completed after this much virtual time is a failure (QEMU would hang).
const DRAIN_TIMEOUT_NS: u64 = 10_000_000_000;

impl World<'_> {
    /// `drain begin NODE [subtree]`: returns once nothing is in flight at the node.
    pub(super) async fn drain_begin(
        &mut self,
        step: &Step,
        node: &str,
        subtree: bool,
    ) -> Result<(), Failure> {
        let line = step.line;
        let n = self
            .engine
            .node(node)
            .map_err(|e| fail("setup", line, e.to_string()))?;
        self.note(&format!(
            "{} ({} requests in flight)",
            step.text,
            n.in_flight()
        ));
        let drain = async {
            if subtree {
                n.subtree_drained_begin().await
            } else {
                n.drained_begin().await
            }
        };
        let section = within(&self.env, DRAIN_TIMEOUT_NS, drain)
            .await
            .ok_or_else(|| {
                fail(
                    "drain",
                    line,
                    format!(
                        "'{node}' still busy after {} s of draining",
                        DRAIN_TIMEOUT_NS / 1_000_000_000
                    ),
                )
            })?;
        self.note(&format!(
            "drained {node}: {} requests in flight",
            n.in_flight()
        ));
        let names: Vec<String> = section
            .nodes()
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        self.recorder.drained.borrow_mut().extend(names);
        self.drains
            .entry(node.to_string())
            .or_default()
            .push(section);
        Ok(())
    }

    /// `drain end NODE`: end the innermost drained section on the node.
    pub(super) fn drain_end(&mut self, step: &Step, node: &str) -> Result<(), Failure> {
        let line = step.line;
        let section = self.drains.get_mut(node).and_then(|v| v.pop());
        let section = section
            .ok_or_else(|| fail("setup", line, format!("no drained section on '{node}'")))?;
        {
            let mut drained = self.recorder.drained.borrow_mut();
            for n in section.nodes() {
                if let Some(pos) = drained.iter().position(|d| d == n.name()) {
                    drained.remove(pos);
                }
            }
        }
        section.end();
        self.note(&step.text);
        Ok(())
    }
}
