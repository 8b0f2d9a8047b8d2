//! QMP transactions and external snapshots: a round draws a `transaction` of 1–4 actions
//! (an external snapshot of the device, dirty bitmap verbs on bitmaps the same transaction
//! adds, and where the internal-snapshot family may run, a qcow2 internal snapshot of the
//! device's top), sometimes with one action made to fail (the `abort` action, a duplicate bitmap or
//! overlay node name, a verb on a bitmap that does not exist), then checks the all-or-nothing
//! oracle with the runner's expectations:
//! - a failed transaction: the error is the failing action's; the device is still on the same
//!   node with the same chain depth, none of the transaction's bitmaps exists, the overlay file
//!   it would have created does not exist; the guest data is unchanged (`verify drive0`);
//! - a committed one: the device is on the overlay, one layer deeper, each added bitmap is
//!   there; the overlay joins the chain (and the images checked after restarts and at the end).
//!   An internal snapshot taken is adopted by the runner (`isnap drive0 taken NAME`: it must
//!   exist, and holds the data of that point), so later snapshot rounds apply it and `verify`
//!   the device against it; a failed transaction must leave no such snapshot. A transaction
//!   with an internal snapshot runs without the background workload (the point in time must
//!   be known to the model) and appends no overlay.
//!
//! The named bitmaps of the `bitmaps` family are checked and removed before a snapshot (the
//! device moves to the overlay, where their node no longer sees guest writes). Half the
//! transactions run under a background guest workload. Draws from a stream of its own, so
//! seeds without transactions are unchanged.

use serde_json::{Value, json};

use super::snapshots::MAX_SNAPSHOTS;
use super::{Gen, Layer};
use crate::rng::{below, chance};

/// One drawn action and what it leaves when the transaction commits.
struct Drawn {
    action: Value,
    /// The bitmap (node, name) it adds.
    adds: Option<(String, String)>,
    /// The overlay (node, file) it appends.
    overlay: Option<(String, String)>,
    /// The internal snapshot of drive0's top it takes.
    isnap: Option<String>,
}

impl Gen {
    /// One transaction round, checked against the all-or-nothing oracle.
    pub(super) fn transaction_round(&mut self) {
        self.stop_bg();
        let top = self.chain[0].node.clone();
        let depth = self.chain.len() - 1;
        let n = 1 + below(&mut self.r.transactions, 4) as usize;
        let fail_at = chance(&mut self.r.transactions, 0.35)
            .then(|| below(&mut self.r.transactions, n as u64) as usize);
        let isnap_at = self.txn_isnap_at(n);
        let mut node = top.clone();
        let mut drawn: Vec<Drawn> = Vec::new();
        let mut error = None;
        for i in 0..n {
            let d = if fail_at == Some(i) {
                let (d, msg) = self.failing_action(&node, &drawn);
                error = Some(msg);
                d
            } else if isnap_at == Some(i) && drawn.iter().all(|d| d.overlay.is_none()) {
                self.isnap_action()
            } else {
                self.action(&node, &drawn)
            };
            if let Some((n, _)) = &d.overlay {
                node = n.clone();
            }
            drawn.push(d);
            if error.is_some() {
                break;
            }
        }
        if drawn.iter().any(|d| d.overlay.is_some()) {
            self.retire_bitmaps();
        }
        // Half the time the guest keeps writing through the transaction: the snapshot drains
        // the device's node while it appends the overlay.
        let quiet = drawn.iter().any(|d| d.isnap.is_some());
        if chance(&mut self.r.transactions, 0.5) && !quiet {
            self.start_bg();
        }
        let actions: Vec<Value> = drawn.iter().map(|d| d.action.clone()).collect();
        self.qmp(&json!({"execute": "transaction", "arguments": {"actions": actions}}));
        match error {
            Some(msg) => self.rolled_back(&top, depth, &drawn, &msg),
            None => self.committed(&drawn, depth),
        }
        self.start_bg();
        let ms = 1 + below(&mut self.r.transactions, 20);
        self.step(format!("advance {ms}ms"));
        self.verify();
    }

    /// A valid action on `node` (the device's node once the earlier actions took effect).
    fn action(&mut self, node: &str, before: &[Drawn]) -> Drawn {
        let own: Vec<(String, String)> = before.iter().filter_map(|d| d.adds.clone()).collect();
        // No overlay after an internal snapshot: the snapshot belongs to the device's top.
        let snapshotted = before
            .iter()
            .any(|d| d.overlay.is_some() || d.isnap.is_some());
        let pick = below(&mut self.r.transactions, 4);
        if pick == 0 && !snapshotted {
            return self.snapshot_action();
        }
        if pick == 1 && !own.is_empty() {
            let (bn, name) =
                own[below(&mut self.r.transactions, own.len() as u64) as usize].clone();
            let kind = [
                "block-dirty-bitmap-clear",
                "block-dirty-bitmap-enable",
                "block-dirty-bitmap-disable",
            ][below(&mut self.r.transactions, 3) as usize];
            return plain(json!({"type": kind, "data": {"node": bn, "name": name}}));
        }
        if pick == 2 && !own.is_empty() {
            let (bn, name) = own[0].clone();
            let (_, src) = own[own.len() - 1].clone();
            if own.iter().all(|(n, _)| *n == bn) {
                return plain(json!({"type": "block-dirty-bitmap-merge",
                    "data": {"node": bn, "target": name, "bitmaps": [src]}}));
            }
        }
        let name = self.fresh("tx");
        let g = [512u64, 4096, 65536][below(&mut self.r.transactions, 3) as usize];
        Drawn {
            action: json!({"type": "block-dirty-bitmap-add",
                "data": {"node": node, "name": name, "granularity": g}}),
            adds: Some((node.to_string(), name)),
            overlay: None,
            isnap: None,
        }
    }

    /// Where (if anywhere) among `n` actions an internal snapshot goes: only while the
    /// internal-snapshot family could take one now.
    fn txn_isnap_at(&mut self, n: usize) -> Option<usize> {
        if self.isnaps.len() >= MAX_SNAPSHOTS || !self.isnap_possible() {
            return None;
        }
        chance(&mut self.r.txn_isnap, 0.6).then(|| below(&mut self.r.txn_isnap, n as u64) as usize)
    }

    fn isnap_action(&mut self) -> Drawn {
        let name = self.fresh("tsn");
        Drawn {
            action: json!({"type": "blockdev-snapshot-internal-sync",
                "data": {"device": "drive0", "name": name}}),
            adds: None,
            overlay: None,
            isnap: Some(name),
        }
    }

    fn snapshot_action(&mut self) -> Drawn {
        let node = self.fresh("ov");
        let path = format!("{node}.qcow2");
        Drawn {
            action: snapshot(&path, &node),
            adds: None,
            overlay: Some((node, path)),
            isnap: None,
        }
    }

    /// An action that fails in prepare, with QEMU's message.
    fn failing_action(&mut self, node: &str, before: &[Drawn]) -> (Drawn, String) {
        let own: Vec<(String, String)> = before.iter().filter_map(|d| d.adds.clone()).collect();
        match below(&mut self.r.transactions, 4) {
            0 if !own.is_empty() => {
                let (bn, name) = own[0].clone();
                let a = json!({"type": "block-dirty-bitmap-add",
                    "data": {"node": bn, "name": name}});
                (plain(a), format!("Bitmap already exists: {name}"))
            }
            1 if !before.iter().any(|d| d.overlay.is_some()) => {
                // The overlay's name is taken by a node of the chain.
                let taken = self.chain
                    [below(&mut self.r.transactions, self.chain.len() as u64) as usize]
                    .node
                    .clone();
                let path = format!("{}.qcow2", self.fresh("ov"));
                let a = snapshot(&path, &taken);
                let msg = "New overlay node-name already in use".to_string();
                (plain(a), msg)
            }
            2 => {
                let name = self.fresh("missing");
                let a = json!({"type": "block-dirty-bitmap-clear",
                    "data": {"node": node, "name": name}});
                (plain(a), format!("Dirty bitmap '{name}' not found"))
            }
            _ => (
                plain(json!({"type": "abort", "data": {}})),
                "Transaction aborted using Abort action".to_string(),
            ),
        }
    }

    /// The oracle after a failed transaction: nothing it did is left.
    fn rolled_back(&mut self, top: &str, depth: usize, drawn: &[Drawn], msg: &str) {
        self.step(format!("expect error GenericError {}", json!(msg)));
        self.expect_device(top, depth);
        for d in drawn {
            if let Some((node, name)) = &d.adds {
                self.qmp(&json!({"execute": "x-debug-block-dirty-bitmap-sha256",
                    "arguments": {"node": node, "name": name}}));
                // The node itself is gone too when it was the aborted overlay.
                let gone = if drawn
                    .iter()
                    .any(|o| o.overlay.as_ref().is_some_and(|(n, _)| n == node))
                {
                    format!("Node '{node}' not found")
                } else {
                    format!("Dirty bitmap '{name}' not found")
                };
                self.step(format!("expect error GenericError {}", json!(gone)));
            }
            if let Some(name) = &d.isnap {
                self.qmp(&json!({"execute": "blockdev-snapshot-delete-internal-sync",
                    "arguments": {"device": "drive0", "name": name}}));
                let gone = format!(
                    "Snapshot with id 'null' and name '{name}' does not exist on device 'drive0'"
                );
                self.step(format!("expect error GenericError {}", json!(gone)));
            }
            if let Some((_, path)) = &d.overlay {
                let probe = self.fresh("probe");
                self.qmp(
                    &json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
                    "node-name": probe, "file": {"driver": "file", "filename": path}}}),
                );
                let gone = format!("Could not open '{path}': No such file or directory");
                self.step(format!("expect error GenericError {}", json!(gone)));
            }
        }
    }

    /// After a committed transaction: the overlay is the device's node, the bitmaps exist.
    fn committed(&mut self, drawn: &[Drawn], depth: usize) {
        for d in drawn {
            if let Some((node, path)) = &d.overlay {
                self.chain.insert(
                    0,
                    Layer {
                        node: node.clone(),
                        path: path.clone(),
                    },
                );
                self.qcow2_paths.push(path.clone());
                // The new top has no blkdebug file, no compressed-write cluster size drawn.
                self.blkdebug_live = false;
                self.top_compress_cluster = None;
                self.expect_device(node, depth + 1);
            }
        }
        for d in drawn {
            if let Some((node, name)) = &d.adds {
                self.qmp(&json!({"execute": "x-debug-block-dirty-bitmap-sha256",
                    "arguments": {"node": node, "name": name}}));
            }
            if let Some(name) = &d.isnap {
                self.step(format!("isnap drive0 taken {name}"));
                self.isnaps.push(name.clone());
                // Half the time the guest writes on, then the image goes back to the
                // snapshot: the device must read the data of the transaction's point again.
                if chance(&mut self.r.txn_isnap, 0.5) {
                    self.io_round();
                    self.step(format!("isnap drive0 apply {name}"));
                    self.verify();
                }
            }
        }
    }

    fn expect_device(&mut self, node: &str, depth: usize) {
        self.qmp(&json!({"execute": "query-block"}));
        self.step(format!(
            "expect return {}",
            json!([{"device": "drive0", "inserted": {"node-name": node,
                                                     "backing_file_depth": depth}}])
        ));
    }
}

fn plain(action: Value) -> Drawn {
    Drawn {
        action,
        adds: None,
        overlay: None,
        isnap: None,
    }
}

fn snapshot(path: &str, node: &str) -> Value {
    json!({"type": "blockdev-snapshot-sync", "data": {"device": "drive0",
        "snapshot-file": path, "snapshot-node-name": node, "format": "qcow2"}})
}
