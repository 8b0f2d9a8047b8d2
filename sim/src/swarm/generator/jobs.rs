//! Block jobs: stream, commit of an intermediate layer, active commit and mirror (full sync,
//! background or write-blocking), with pause, resume, set-speed, cancel and complete at drawn
//! points, and crashes in the middle. Every verb is issued where it is legal: a job started with
//! a speed limit is paused before it can finish, and only a paused or READY job is cancelled.

use serde_json::{Value, json};

use super::{Gen, Layer};
use crate::rng::{below, chance};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Commit,
    ActiveCommit,
    Mirror,
    Backup,
}

/// How long a scenario waits for a job's event before it counts as a hang.
const WAIT: &str = "timeout=30s";

impl Gen {
    fn job_kinds(&self) -> Vec<Kind> {
        let mut k = Vec::new();
        let n = self.chain.len();
        if self.f.mirror {
            k.push(Kind::Mirror);
        }
        if self.chain_known && self.f.stream && n >= 2 {
            k.push(Kind::Stream);
        }
        if self.chain_known && self.f.commit && n >= 3 {
            k.push(Kind::Commit);
        }
        if self.chain_known && self.f.active_commit && n >= 2 {
            k.push(Kind::ActiveCommit);
        }
        // Last, so that seeds without backups draw their jobs as before.
        if self.f.backup {
            k.push(Kind::Backup);
        }
        k
    }

    fn speed(&mut self) -> u64 {
        [8, 16, 32, 64][below(&mut self.r.jobs, 4) as usize] << 20
    }

    /// One job from start to its end (or to a crash in its middle).
    pub(super) fn job_round(&mut self) {
        let kinds = self.job_kinds();
        if kinds.is_empty() {
            return self.workload_round();
        }
        let kind = kinds[below(&mut self.r.jobs, kinds.len() as u64) as usize];
        if kind == Kind::Backup {
            return self.backup_round();
        }
        let id = self.fresh("j");
        let speed = self.speed();
        if matches!(kind, Kind::Mirror | Kind::ActiveCommit) {
            // The device moves to another node: its bitmaps would stop seeing its writes.
            self.retire_bitmaps();
        }
        if chance(&mut self.r.jobs, 0.7) {
            self.start_bg();
        }
        let (cmd, new_chain, needs_ready) = match kind {
            Kind::Stream => self.stream_cmd(&id, speed),
            Kind::Commit => self.commit_cmd(&id, speed),
            Kind::ActiveCommit => self.active_commit_cmd(&id, speed),
            Kind::Mirror => self.mirror_cmd(&id, speed),
            Kind::Backup => unreachable!("backup rounds are drawn above"),
        };
        self.qmp(&cmd);
        if self.f.crashes && !self.resized && chance(&mut self.r.crash, 0.3) {
            self.comment("power loss in the middle of the job");
            return self.crash_here(true);
        }
        if self.f.verbs && self.paused_verbs(&id) {
            return; // cancelled while paused
        }
        // A guest dirtying faster than the copy keeps a background mirror from converging
        // (QEMU's too): stop the guest before waiting for READY unless the mirror is
        // write-blocking; otherwise lift the speed limit.
        let converges = cmd["arguments"]["copy-mode"] == "write-blocking";
        if self.bg.is_some() && needs_ready && !converges {
            // The guest writes during the bulk copy for a while, then stops.
            let ms = 1 + below(&mut self.r.jobs, 30);
            self.step(format!("advance {ms}ms"));
            self.stop_bg();
        } else if self.bg.is_some() || (self.f.verbs && chance(&mut self.r.jobs, 0.4)) {
            self.qmp(&json!({"execute": "block-job-set-speed",
                             "arguments": {"device": id, "speed": 0}}));
        }
        if !needs_ready {
            self.step(format!("wait event BLOCK_JOB_COMPLETED device={id} {WAIT}"));
            self.drop_layers(&new_chain);
            self.adopt(new_chain);
            return;
        }
        self.ready_to_cutover(kind, &id, new_chain);
    }

    /// A job that went READY: maybe a power loss or a cancel, else a cutover under light
    /// guest load, then the chain it leaves.
    fn ready_to_cutover(&mut self, kind: Kind, id: &str, new_chain: Vec<Layer>) {
        self.step(format!("wait event BLOCK_JOB_READY device={id} {WAIT}"));
        if self.f.crashes && !self.resized && chance(&mut self.r.crash, 0.2) {
            self.comment("power loss while the job is READY");
            return self.crash_here(true);
        }
        let ms = below(&mut self.r.jobs, 10);
        self.step(format!("advance {ms}ms"));
        if self.f.verbs && chance(&mut self.r.jobs, 0.3) {
            // Cancel after READY: the job completes without moving the device.
            self.qmp(&json!({"execute": "block-job-cancel", "arguments": {"device": id}}));
            self.step(format!("wait event BLOCK_JOB_COMPLETED device={id} {WAIT}"));
            return;
        }
        if self.bg.is_none() && chance(&mut self.r.jobs, 0.5) {
            // Light, bounded guest load across the pivot (an endless one could keep a
            // background mirror from ever finding nothing dirty).
            let name = self.fresh("p");
            let n = 5 + below(&mut self.r.jobs, 30);
            let us = 300 + below(&mut self.r.jobs, 1500);
            self.step(format!(
                "workload start {name} device=drive0 mix=write:80,read:20 bs=512..8192 iodepth=1 count={n} think={us}us"
            ));
            self.bg = Some(name);
        }
        let (verb, arg) = if chance(&mut self.r.jobs, 0.5) {
            ("job-complete", "id")
        } else {
            ("block-job-complete", "device")
        };
        self.qmp(&json!({"execute": verb, "arguments": {arg: id}}));
        self.step(format!("wait event BLOCK_JOB_COMPLETED device={id} {WAIT}"));
        if kind == Kind::ActiveCommit {
            self.drop_layers(&new_chain);
        }
        self.adopt(new_chain);
        self.verify();
    }

    /// Delete the layers a finished stream or commit took out of the chain. The monitor
    /// added them, so they outlive the job and still hold the layer below as their backing
    /// file: after an active commit QEMU then no longer sees the base as a root node, and a
    /// later job on `drive0` is refused with "Need a root block node". A management layer
    /// deletes them, top first (each is in use by the one above it until that one goes).
    fn drop_layers(&mut self, new_chain: &[Layer]) {
        let gone: Vec<String> = self
            .chain
            .iter()
            .filter(|l| !new_chain.iter().any(|k| k.node == l.node))
            .map(|l| l.node.clone())
            .collect();
        for node in gone {
            self.qmp(&json!({"execute": "blockdev-del", "arguments": {"node-name": node}}));
        }
    }

    /// Pause (right after start: the speed limit keeps the job from finishing first), let time
    /// pass, maybe change the speed, then resume or cancel. True when the job was cancelled.
    fn paused_verbs(&mut self, id: &str) -> bool {
        if !chance(&mut self.r.jobs, 0.6) {
            return false;
        }
        let (pause, resume) = if chance(&mut self.r.jobs, 0.5) {
            ("job-pause", "job-resume")
        } else {
            ("block-job-pause", "block-job-resume")
        };
        let arg = |v: &str| {
            if v.starts_with("job-") {
                "id"
            } else {
                "device"
            }
        };
        self.qmp(&json!({"execute": pause, "arguments": {arg(pause): id}}));
        let ms = 1 + below(&mut self.r.jobs, 20);
        self.step(format!("advance {ms}ms"));
        if chance(&mut self.r.jobs, 0.4) {
            let s = self.speed();
            self.qmp(&json!({"execute": "block-job-set-speed",
                             "arguments": {"device": id, "speed": s}}));
        }
        if chance(&mut self.r.jobs, 0.25) {
            // Without force QEMU refuses to cancel a paused job; job-cancel always forces.
            self.qmp(&json!({"execute": "block-job-cancel", "arguments": {"device": id}}));
            self.step(format!(
                r#"expect error GenericError "'{id}' is currently paused""#
            ));
            if chance(&mut self.r.jobs, 0.5) {
                self.qmp(&json!({"execute": "job-cancel", "arguments": {"id": id}}));
            } else {
                self.qmp(&json!({"execute": "block-job-cancel",
                                 "arguments": {"device": id, "force": true}}));
            }
            self.step(format!(
                "wait event BLOCK_JOB_CANCELLED device={id} timeout=30s"
            ));
            return true;
        }
        self.qmp(&json!({"execute": resume, "arguments": {arg(resume): id}}));
        false
    }

    /// A new image `node` of the device's size for a job's target, with `blockdev-add`:
    /// qcow2 with `cluster` KiB clusters over `backing` (none when `None`), or raw for a
    /// `cluster` of 0. Returns its path.
    pub(super) fn target_image(
        &mut self,
        node: &str,
        cluster: u64,
        backing: Option<&str>,
    ) -> String {
        let qcow2 = cluster != 0;
        let path = format!("{node}.{}", if qcow2 { "qcow2" } else { "img" });
        if qcow2 {
            self.step(format!(
                "image create {path} qcow2 {} cluster_size={cluster}k",
                self.size
            ));
            self.qcow2_paths.push(path.clone());
        } else {
            self.step(format!("image create {path} raw {}", self.size));
        }
        let drv = if qcow2 { "qcow2" } else { "raw" };
        let mut add = json!({"node-name": node, "driver": drv,
                             "file": {"driver": "file", "filename": path}});
        if qcow2 {
            add["backing"] = backing.map_or(Value::Null, |b| json!(b));
        }
        self.qmp(&json!({"execute": "blockdev-add", "arguments": add}));
        path
    }

    fn adopt(&mut self, chain: Vec<Layer>) {
        if chain.first().map(|l| l.node.as_str()) != Some("top") {
            self.blkdebug_live = false;
        }
        self.chain = chain;
        self.chain_known = true;
    }

    fn stream_cmd(&mut self, id: &str, speed: u64) -> (Value, Vec<Layer>, bool) {
        let n = self.chain.len();
        // base-node: a layer that stays (none: everything is copied into the top).
        let base = below(&mut self.r.jobs, n as u64) as usize; // 0 = no base
        let mut args = json!({"job-id": id, "device": "drive0", "speed": speed});
        let mut chain = vec![self.chain[0].clone()];
        if base >= 2 {
            args["base-node"] = json!(self.chain[base].node);
            chain.extend(self.chain[base..].iter().cloned());
        }
        (
            json!({"execute": "block-stream", "arguments": args}),
            chain,
            false,
        )
    }

    fn commit_cmd(&mut self, id: &str, speed: u64) -> (Value, Vec<Layer>, bool) {
        let n = self.chain.len();
        let top = 1 + below(&mut self.r.jobs, (n - 2) as u64) as usize;
        let base = top + 1 + below(&mut self.r.jobs, (n - top - 1) as u64) as usize;
        let args = json!({"job-id": id, "device": "drive0", "speed": speed,
                          "top-node": self.chain[top].node, "base-node": self.chain[base].node});
        let mut chain: Vec<Layer> = self.chain[..top].to_vec();
        chain.extend(self.chain[base..].iter().cloned());
        (
            json!({"execute": "block-commit", "arguments": args}),
            chain,
            false,
        )
    }

    fn active_commit_cmd(&mut self, id: &str, speed: u64) -> (Value, Vec<Layer>, bool) {
        let n = self.chain.len();
        let base = 1 + below(&mut self.r.jobs, (n - 1) as u64) as usize;
        let mut args = json!({"job-id": id, "device": "drive0", "speed": speed});
        if base != n - 1 || chance(&mut self.r.jobs, 0.5) {
            args["base-node"] = json!(self.chain[base].node);
        }
        let chain = self.chain[base..].to_vec();
        (
            json!({"execute": "block-commit", "arguments": args}),
            chain,
            true,
        )
    }

    fn mirror_cmd(&mut self, id: &str, speed: u64) -> (Value, Vec<Layer>, bool) {
        let node = self.fresh("t");
        let qcow2 = chance(&mut self.r.jobs, 0.7);
        let cluster = if qcow2 {
            [4, 64][below(&mut self.r.jobs, 2) as usize]
        } else {
            0
        };
        let path = self.target_image(&node, cluster, None);
        let mode = if chance(&mut self.r.jobs, 0.5) {
            "background"
        } else {
            "write-blocking"
        };
        let args = json!({"job-id": id, "device": "drive0", "target": node, "sync": "full",
                          "copy-mode": mode, "speed": speed});
        let chain = vec![Layer { node, path }];
        (
            json!({"execute": "blockdev-mirror", "arguments": args}),
            chain,
            true,
        )
    }
}
