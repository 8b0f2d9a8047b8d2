//! NBD: a raw image exported by blk's own NBD server on the simulated network, a client node
//! (`driver=nbd`, `reconnect-delay` of several seconds) and a guest device on it, a workload
//! through it, and network faults while it runs (resets now and mid-message, drops, a
//! partition that heals, latency changes). Every fault ends well within the reconnect delay, so
//! no request may fail.
//!
//! Oracles: the data read back through the export equals the model (`verify` on the client
//! device), and the exported node itself holds the same (a device on it, checked against a
//! snapshot of that model): nothing acknowledged is lost across the reconnects.

use super::Gen;
use crate::rng::{below, chance, in_range};

/// The export's side of the scenario, once set up.
#[derive(Clone, Debug)]
pub(in crate::swarm) struct NbdSide {
    /// The server address in the scenario syntax (`unix:PATH`, `inet:HOST:PORT`).
    addr: String,
    /// The client device.
    device: String,
    /// The exported node.
    node: String,
    /// Seconds the client waits for a reconnect.
    reconnect_delay: u64,
}

impl Gen {
    /// One NBD round: set up on first use, then a workload under network faults, then the
    /// oracles.
    pub(super) fn nbd_round(&mut self) {
        let side = match self.nbd.clone() {
            Some(s) => s,
            None => self.nbd_setup(),
        };
        self.comment("NBD: a workload through the export under network faults");
        let w = self.fresh("nw");
        let count = in_range(&mut self.r.nbd, 40, 160);
        let depth = in_range(&mut self.r.nbd, 1, 4);
        self.step(format!(
            "workload start {w} device={} mix=write:60,read:25,flush:15 bs=4k..64k iodepth={depth} count={count}",
            side.device
        ));
        let faults = 1 + below(&mut self.r.nbd, 3);
        for _ in 0..faults {
            let ms = in_range(&mut self.r.nbd, 1, 20);
            self.step(format!("advance {ms}ms"));
            self.net_fault(&side);
        }
        self.step(format!("workload wait {w}"));
        self.step(format!("io {} flush", side.device));
        self.step(format!("verify {}", side.device));
        let snap = self.fresh("ns");
        let direct = self.fresh("nd");
        self.step(format!("model {} snapshot {snap}", side.device));
        self.step(format!(
            "device add {direct} node={} read-only share-rw",
            side.node
        ));
        self.step(format!("verify {direct} snapshot={snap}"));
        self.step(format!("device del {direct}"));
    }

    fn net_fault(&mut self, side: &NbdSide) {
        let a = &side.addr;
        match below(&mut self.r.nbd, 5) {
            0 => self.step(format!("net reset {a}")),
            1 => {
                let after = in_range(&mut self.r.nbd, 1, 200_000);
                self.step(format!("net reset {a} after={after}"));
            }
            2 => {
                // Shorter than the reconnect delay: requests wait, then go on.
                let ms = in_range(&mut self.r.nbd, 1, side.reconnect_delay * 500);
                self.step(format!("net partition {a}"));
                self.step(format!("advance {ms}ms"));
                self.step(format!("net heal {a}"));
            }
            3 => self.step(format!("net drop {a}")),
            _ => {
                let hi = in_range(&mut self.r.nbd, 20, 5000);
                self.step(format!("net latency 10us..{hi}us"));
            }
        }
    }

    fn nbd_setup(&mut self) -> NbdSide {
        self.comment("NBD: export a raw image over blk's own server, attach a client");
        let mib = in_range(&mut self.r.nbd, 1, 8);
        let node = "nbdx".to_string();
        self.step(format!("image create nbdx.img raw {mib}M"));
        self.qmp(
            &serde_json::json!({"execute": "blockdev-add", "arguments": {
            "node-name": node, "driver": "raw",
            "file": {"driver": "file", "filename": "nbdx.img"}}}),
        );
        let (addr, server, client) = if chance(&mut self.r.nbd, 0.5) {
            let path = "/run/blk-nbd.sock";
            (
                format!("unix:{path}"),
                serde_json::json!({"type": "unix", "data": {"path": path}}),
                serde_json::json!({"type": "unix", "path": path}),
            )
        } else {
            let port = in_range(&mut self.r.nbd, 10000, 60000).to_string();
            (
                format!("inet:192.0.2.1:{port}"),
                serde_json::json!({"type": "inet", "data": {"host": "192.0.2.1", "port": port}}),
                serde_json::json!({"type": "inet", "host": "192.0.2.1", "port": port}),
            )
        };
        self.qmp(&serde_json::json!({"execute": "nbd-server-start",
            "arguments": {"addr": server}}));
        self.qmp(
            &serde_json::json!({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": "nbde", "node-name": node, "name": "disk", "writable": true}}),
        );
        let reconnect_delay = in_range(&mut self.r.nbd, 5, 30);
        self.qmp(
            &serde_json::json!({"execute": "blockdev-add", "arguments": {
            "node-name": "nbdc", "driver": "nbd", "server": client, "export": "disk",
            "reconnect-delay": reconnect_delay}}),
        );
        let device = "nbdv".to_string();
        self.step(format!("device add {device} node=nbdc"));
        let side = NbdSide {
            addr,
            device,
            node,
            reconnect_delay,
        };
        self.nbd = Some(side.clone());
        side
    }
}
