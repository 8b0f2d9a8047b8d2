//! NBD: per round, a raw image exported by blk's own NBD server on the simulated network, a
//! client node (`driver=nbd`, `reconnect-delay` of several seconds) and a guest device on it, a
//! workload through it, and network faults while it runs (resets now and mid-message, drops, a
//! partition that heals, latency changes). Every fault ends well within the reconnect delay.
//!
//! Oracles: no request failed (no `BLOCK_IO_ERROR` of the device), the data read back through
//! the export equals the model (`verify` on the client device), and the exported node itself
//! holds the same (a device on it, checked against a snapshot of that model): nothing
//! acknowledged is lost across the reconnects.

use serde_json::json;

use super::Gen;
use crate::rng::{below, chance, in_range};

/// The server, once an NBD round started it.
#[derive(Clone, Debug)]
pub(in crate::swarm) struct NbdServer {
    /// The address in the scenario syntax (`unix:PATH`, `inet:HOST:PORT`).
    addr: String,
    /// The `server` option of a client node.
    client: serde_json::Value,
}

/// One round's export and client.
struct Side {
    device: String,
    node: String,
    export: String,
    client: String,
    /// Seconds the client waits for a reconnect.
    reconnect_delay: u64,
}

impl Gen {
    /// One NBD round: a fresh image exported and attached through a client (a file a fault of an
    /// earlier round may have poisoned is never reused), a workload under network faults, the
    /// oracles, then everything is taken down again.
    pub(super) fn nbd_round(&mut self) {
        let server = match self.nbd.clone() {
            Some(s) => s,
            None => self.nbd_server(),
        };
        let side = self.nbd_side(&server);
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
            self.net_fault(&server.addr, side.reconnect_delay);
        }
        self.step(format!("workload wait {w}"));
        // Every fault healed within the reconnect delay: no request may have failed.
        self.step(format!(
            "expect no-event BLOCK_IO_ERROR device={}",
            side.device
        ));
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
        self.nbd_teardown(&side);
    }

    fn net_fault(&mut self, addr: &str, reconnect_delay: u64) {
        match below(&mut self.r.nbd, 5) {
            0 => self.step(format!("net reset {addr}")),
            1 => {
                let after = in_range(&mut self.r.nbd, 1, 200_000);
                self.step(format!("net reset {addr} after={after}"));
            }
            2 => {
                // Shorter than the reconnect delay: requests wait, then go on.
                let ms = in_range(&mut self.r.nbd, 1, reconnect_delay * 500);
                self.step(format!("net partition {addr}"));
                self.step(format!("advance {ms}ms"));
                self.step(format!("net heal {addr}"));
            }
            3 => self.step(format!("net drop {addr}")),
            _ => {
                let hi = in_range(&mut self.r.nbd, 20, 5000);
                self.step(format!("net latency 10us..{hi}us"));
            }
        }
    }

    fn nbd_server(&mut self) -> NbdServer {
        self.comment("NBD: blk's own server on the simulated network");
        let (addr, listen, client) = if chance(&mut self.r.nbd, 0.5) {
            let path = "/run/blk-nbd.sock";
            (
                format!("unix:{path}"),
                json!({"type": "unix", "data": {"path": path}}),
                json!({"type": "unix", "path": path}),
            )
        } else {
            let port = in_range(&mut self.r.nbd, 10000, 60000).to_string();
            (
                format!("inet:192.0.2.1:{port}"),
                json!({"type": "inet", "data": {"host": "192.0.2.1", "port": port}}),
                json!({"type": "inet", "host": "192.0.2.1", "port": port}),
            )
        };
        self.qmp(&json!({"execute": "nbd-server-start", "arguments": {"addr": listen}}));
        let server = NbdServer { addr, client };
        self.nbd = Some(server.clone());
        server
    }

    fn nbd_side(&mut self, server: &NbdServer) -> Side {
        let n = self.fresh("");
        let side = Side {
            device: format!("nbdv{n}"),
            node: format!("nbdx{n}"),
            export: format!("nbde{n}"),
            client: format!("nbdc{n}"),
            reconnect_delay: in_range(&mut self.r.nbd, 5, 30),
        };
        let mib = in_range(&mut self.r.nbd, 1, 8);
        let path = format!("{}.img", side.node);
        self.step(format!("image create {path} raw {mib}M"));
        self.qmp(&json!({"execute": "blockdev-add", "arguments": {
            "node-name": side.node, "driver": "raw",
            "file": {"driver": "file", "filename": path}}}));
        self.qmp(&json!({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": side.export, "node-name": side.node, "writable": true}}));
        self.qmp(&json!({"execute": "blockdev-add", "arguments": {
            "node-name": side.client, "driver": "nbd", "server": server.client,
            "export": side.node, "reconnect-delay": side.reconnect_delay}}));
        self.step(format!("device add {} node={}", side.device, side.client));
        side
    }

    fn nbd_teardown(&mut self, side: &Side) {
        self.step(format!("device del {}", side.device));
        self.qmp(&json!({"execute": "blockdev-del", "arguments": {"node-name": side.client}}));
        // Hard: the server may still be closing the client's connection.
        self.qmp(&json!({"execute": "block-export-del",
            "arguments": {"id": side.export, "mode": "hard"}}));
        self.qmp(&json!({"execute": "blockdev-del", "arguments": {"node-name": side.node}}));
    }
}
