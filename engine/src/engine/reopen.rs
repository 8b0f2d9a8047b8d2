//! Reopening a device's image with another access mode (qemu-io's `reopen -r`/`-w`): the
//! device's own permissions and the node graph's read-only state change together, or not at
//! all.

use crate::backend::BlockBackend;
use crate::error::{Error, Result};
use crate::graph::reopen_set_read_only;
use crate::types::Perms;
use crate::util::Options;

use super::Engine;

/// What a device needs on top of reading to write its image.
fn write_perms() -> Perms {
    Perms::WRITE | Perms::RESIZE
}

impl Engine {
    /// Switch the image under `bb` to read-only (`true`) or read-write. Going read-only, the
    /// device first gives up its write permissions (so the graph's check sees no writer);
    /// going read-write, it takes them once the nodes are writable. On error the device and
    /// the nodes are as they were.
    pub async fn reopen_device(&self, bb: &BlockBackend, read_only: bool) -> Result<()> {
        let node = bb
            .root_node()
            .ok_or_else(|| Error::generic(format!("Device '{}' has no medium", bb.name())))?;
        let o = bb.options();
        if read_only {
            bb.set_perms(o.perm & !write_perms(), o.shared)?;
            if let Err(e) = reopen_set_read_only(&node, true).await {
                // Taking back what was held a moment ago cannot conflict.
                let _ = bb.set_perms(o.perm, o.shared);
                return Err(e);
            }
            return Ok(());
        }
        reopen_set_read_only(&node, false).await?;
        if let Err(e) = bb.set_perms(o.perm | write_perms(), o.shared) {
            let _ = reopen_set_read_only(&node, true).await;
            return Err(e);
        }
        Ok(())
    }
}

/// Options of one node in a `blockdev-reopen` (QEMU's blockdev options: everything the node
/// is to have; what is left out takes its default).
struct ReopenRequest {
    node: std::rc::Rc<crate::graph::Node>,
    read_only: bool,
    /// The driver's own options, when the request gives any (they are then set anew, the
    /// ones left out going back to their defaults).
    driver: Option<Options>,
}

/// Generic node options: a blockdev-reopen may not change them in blk (the driver's own
/// options and the access mode it may).
const GENERIC_OPTIONS: [&str; 5] = [
    "cache",
    "discard",
    "detect-zeroes",
    "force-share",
    "auto-read-only",
];

/// Children given by node name in a blockdev-reopen: they must stay what they are.
const CHILD_OPTIONS: [&str; 4] = ["file", "backing", "data-file", "image"];

impl Engine {
    /// QMP `blockdev-reopen`: every listed node gets its new options, all or none. blk changes
    /// the access mode (`read-only`) and the driver's own options (qcow2's cache sizes, lazy
    /// refcounts, ...: when a request gives any, the driver's options are set anew, those left
    /// out going back to their defaults, as QEMU does; a request without any leaves them as
    /// they are). The driver and the children must be given as they are (`file`/`backing` by
    /// node name); the generic options (`cache`, `discard`, ...) are refused as QEMU refuses an
    /// option it cannot change.
    pub async fn blockdev_reopen(&self, options: &[serde_json::Value]) -> Result<()> {
        let mut requests = Vec::new();
        for (i, o) in options.iter().enumerate() {
            requests.push(self.reopen_request(i, o)?);
        }
        let nodes: Vec<_> = requests.iter().map(|r| r.node.clone()).collect();
        let _drained = self.ctx.drain_nodes(nodes).await;
        // Phase 1: every driver checks and stages its new options; the first refusal aborts
        // what was staged and changes nothing.
        let mut staged: Vec<std::rc::Rc<crate::graph::Node>> = Vec::new();
        for r in &mut requests {
            let Some(opts) = r.driver.take() else {
                continue;
            };
            if let Err(e) = r.node.driver().reopen_prepare_options(opts).await {
                r.node.driver().reopen_abort();
                for n in staged {
                    n.driver().reopen_abort();
                }
                return Err(e);
            }
            staged.push(r.node.clone());
        }
        let mut done: Vec<(std::rc::Rc<crate::graph::Node>, bool)> = Vec::new();
        for r in &requests {
            let was = r.node.is_read_only();
            if let Err(e) = reopen_set_read_only(&r.node, r.read_only).await {
                // Undo in reverse order: each node goes back to the mode it had, and the
                // staged options are dropped.
                for (node, was) in done.into_iter().rev() {
                    let _ = reopen_set_read_only(&node, was).await;
                }
                for n in staged {
                    n.driver().reopen_abort();
                }
                return Err(e);
            }
            done.push((r.node.clone(), was));
        }
        // Phase 2: the staged options take effect (a switch's own commit may have applied
        // them already; then there is nothing left to do).
        for n in staged {
            n.driver().reopen_commit();
        }
        Ok(())
    }

    fn reopen_request(&self, i: usize, options: &serde_json::Value) -> Result<ReopenRequest> {
        let Some(map) = options.as_object() else {
            return Err(Error::generic(format!(
                "Invalid parameter type for 'options[{i}]', expected: object"
            )));
        };
        // The blockdev schema first: a driver, and what that driver cannot be without.
        let Some(driver) = map.get("driver").and_then(|v| v.as_str()) else {
            return Err(Error::param_missing(format!("options[{i}].driver")));
        };
        let required = if driver == "file" { "filename" } else { "file" };
        if !map.contains_key(required) && driver != "null-co" && driver != "null-aio" {
            return Err(Error::param_missing(format!("options[{i}].{required}")));
        }
        let Some(name) = map.get("node-name").and_then(|v| v.as_str()) else {
            return Err(Error::generic("node-name not specified"));
        };
        let node = self.ctx.node(name).ok_or_else(|| {
            Error::generic(format!("Failed to find node with node-name='{name}'"))
        })?;
        let mut read_only = false;
        let mut driver_opts = serde_json::Map::new();
        for (key, value) in map {
            let is_driver_option = !matches!(
                key.as_str(),
                "node-name" | "driver" | "filename" | "read-only"
            ) && !GENERIC_OPTIONS.contains(&key.as_str())
                && !CHILD_OPTIONS.contains(&key.as_str());
            if is_driver_option {
                driver_opts.insert(key.clone(), value.clone());
                continue;
            }
            let same = match key.as_str() {
                "node-name" => true,
                "driver" => value.as_str() == Some(node.driver_name()),
                "filename" => value.as_str() == Some(node.driver().filename().as_str()),
                "read-only" => {
                    read_only = value.as_bool().ok_or_else(|| {
                        Error::generic(format!(
                            "Invalid parameter type for 'options[{i}].read-only', expected: boolean"
                        ))
                    })?;
                    true
                }
                generic if GENERIC_OPTIONS.contains(&generic) => false,
                child => self.same_child(&node, child, value)?,
            };
            if !same {
                return Err(Error::generic(format!("Cannot change the option '{key}'")));
            }
        }
        let driver = if driver_opts.is_empty() {
            None
        } else {
            Some(Options::new(serde_json::Value::Object(driver_opts))?)
        };
        Ok(ReopenRequest {
            node,
            read_only,
            driver,
        })
    }

    /// Whether `value` names the node's current `child` (a name that is no node at all is
    /// QEMU's lookup error).
    fn same_child(
        &self,
        node: &crate::graph::Node,
        child: &str,
        value: &serde_json::Value,
    ) -> Result<bool> {
        let Some(wanted) = value.as_str() else {
            return Ok(false);
        };
        if self.ctx.node(wanted).is_none() {
            return Err(Error::generic(format!(
                "Cannot find device='' nor node-name='{wanted}'"
            )));
        }
        Ok(node
            .children()
            .iter()
            .any(|e| e.name() == child && e.child_node().name() == wanted))
    }
}
