//! Backup jobs (blockdev-backup with sync full, top or none) and their oracle: the model of the
//! guest view is saved the moment the job starts (`model drive0 snapshot`, with no guest I/O
//! in flight), and when the job is done the target, read through a device of its own, must
//! equal that view; `verify drive0` then checks that the backup left the source alone.
//!
//! sync=top and sync=none targets are qcow2 images backed by the source's backing node and by
//! the source itself, so the target's view is the whole point-in-time view (sync=none is
//! fleecing: the view is checked while the job runs, then the job is cancelled). Drawn around
//! the job: a speed, a background workload during the copy (guest writes go through
//! copy-before-write), pause/resume/cancel, and a target write fault under a drawn
//! `on-target-error` policy while no guest writes (a failing copy-before-write would fail the
//! guest's write, which the model does not expect), and `compress` into qcow2 targets. Each round removes its target again.
//! Draws from a stream of its own, so seeds without backups are unchanged.

use serde_json::json;

use super::Gen;
use crate::rng::{below, chance};

const WAIT: &str = "timeout=30s";

/// How a backup round's job ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The target holds the view at the start (sync=none: the job still runs).
    Complete,
    /// The job failed (on-target-error report).
    Failed,
    /// Cancelled by the round.
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    Full,
    Top,
    None,
}

impl Gen {
    /// One backup from start to end, checked against the view at its start.
    pub(super) fn backup_round(&mut self) {
        let sync = self.draw_sync();
        let id = self.fresh("b");
        let node = self.fresh("t");
        let backing = match sync {
            Sync::Full => None,
            Sync::Top => Some(self.chain[1].node.clone()),
            Sync::None => Some(self.chain[0].node.clone()),
        };
        let path = self.backup_target(&node, backing.as_deref());
        // No guest I/O in flight: the model now is the view the job starts from.
        self.stop_bg();
        self.step(format!("model drive0 snapshot {id}"));
        let fault = self.draw_target_fault(&path, sync);
        let r = &mut self.r.backup;
        // Slow enough that the job outlives the drawn waits and verbs (at least 2 s for the
        // smallest device); set-speed lifts the limit before the round waits for the end.
        let speed = [1u64, 2][below(r, 2) as usize] << 20;
        let mut args = json!({"job-id": id, "device": "drive0", "target": node,
                              "sync": name(sync), "speed": speed});
        if let Some((_, policy)) = &fault {
            args["on-target-error"] = json!(policy);
        }
        if chance(r, 0.3) {
            args["x-perf"] = json!({"max-workers": 1 + below(r, 8),
                                    "max-chunk": 65536 << below(r, 5)});
        }
        // Compressed copies into a qcow2 target; not with a fault: a compressed write that
        // failed halfway leaves clusters a retry may not overwrite (EIO, as in QEMU).
        if fault.is_none() && path.ends_with(".qcow2") && chance(r, 0.3) {
            args["compress"] = json!(true);
        }
        self.qmp(&json!({"execute": "blockdev-backup", "arguments": args}));
        let end = match fault {
            Some((f, policy)) => self.faulted_job(&id, &f, &policy),
            None => self.running_job(&id, sync),
        };
        if end == End::Complete {
            let dev = self.fresh("bk");
            self.step(format!("device add {dev} node={node} read-only share-rw"));
            self.step(format!("verify {dev} snapshot={id}"));
            self.step(format!("device del {dev}"));
        }
        if sync == Sync::None && end != End::Cancelled {
            self.qmp(&json!({"execute": "job-cancel", "arguments": {"id": id}}));
            self.step(format!("wait event BLOCK_JOB_CANCELLED device={id} {WAIT}"));
        }
        self.qmp(&json!({"execute": "blockdev-del", "arguments": {"node-name": node}}));
        self.verify();
    }

    fn draw_sync(&mut self) -> Sync {
        let qcow2_top = self.f.qcow2 && self.chain_known && !self.chain.is_empty();
        let r = &mut self.r.backup;
        match below(r, 4) {
            0 | 1 => Sync::Full,
            2 if qcow2_top && self.chain.len() >= 2 => Sync::Top,
            3 if qcow2_top => Sync::None,
            _ => Sync::Full,
        }
    }

    /// A fresh target image of the device's size (qcow2 when it needs a backing node).
    /// Returns its path.
    fn backup_target(&mut self, node: &str, backing: Option<&str>) -> String {
        let qcow2 = backing.is_some() || chance(&mut self.r.backup, 0.6);
        let cluster = if qcow2 {
            [4, 64][below(&mut self.r.backup, 2) as usize]
        } else {
            0
        };
        self.target_image(node, cluster, backing)
    }

    /// With faults on, sometimes a write fault on the target (full sync only: the job's own
    /// copies hit it, no guest write does) and the policy it runs under.
    fn draw_target_fault(&mut self, path: &str, sync: Sync) -> Option<(String, String)> {
        if !self.f.faults || sync != Sync::Full || !chance(&mut self.r.backup, 0.4) {
            return None;
        }
        let policy = ["report", "ignore", "stop"][below(&mut self.r.backup, 3) as usize];
        let f = self.fresh("f");
        self.step(format!(
            "fault inject {f} eio path={path} ops=write,zeroes once"
        ));
        Some((f, policy.to_string()))
    }

    /// The job under a target fault, with no guest I/O.
    fn faulted_job(&mut self, id: &str, fault: &str, policy: &str) -> End {
        self.step(format!(
            "wait event BLOCK_JOB_ERROR device={id} operation=write action={policy} {WAIT}"
        ));
        self.step(format!("fault clear {fault}"));
        if policy == "report" {
            self.step(format!("wait event BLOCK_JOB_COMPLETED device={id} {WAIT}"));
            return End::Failed;
        }
        if policy == "stop" {
            self.step(format!(
                "wait event JOB_STATUS_CHANGE id={id} status=paused {WAIT}"
            ));
            self.qmp(&json!({"execute": "job-resume", "arguments": {"id": id}}));
        }
        self.qmp(&json!({"execute": "block-job-set-speed",
                         "arguments": {"device": id, "speed": 0}}));
        self.step(format!("wait event BLOCK_JOB_COMPLETED device={id} {WAIT}"));
        End::Complete
    }

    /// The job with guest writes going through copy-before-write, maybe paused and resumed or
    /// cancelled.
    fn running_job(&mut self, id: &str, sync: Sync) -> End {
        if chance(&mut self.r.backup, 0.7) {
            self.start_bg();
            let ms = 1 + below(&mut self.r.backup, 40);
            self.step(format!("advance {ms}ms"));
        }
        // sync=top may have nothing to copy and be done at once: no verbs for it.
        if self.f.verbs && sync != Sync::Top && chance(&mut self.r.backup, 0.4) {
            self.qmp(&json!({"execute": "job-pause", "arguments": {"id": id}}));
            let ms = 1 + below(&mut self.r.backup, 20);
            self.step(format!("advance {ms}ms"));
            if chance(&mut self.r.backup, 0.3) {
                self.stop_bg();
                self.qmp(&json!({"execute": "job-cancel", "arguments": {"id": id}}));
                self.step(format!("wait event BLOCK_JOB_CANCELLED device={id} {WAIT}"));
                return End::Cancelled;
            }
            self.qmp(&json!({"execute": "job-resume", "arguments": {"id": id}}));
        }
        self.stop_bg();
        if sync == Sync::None {
            // Fleecing: the target shows the view at the start while the job runs.
            return End::Complete;
        }
        if sync == Sync::Full {
            self.qmp(&json!({"execute": "block-job-set-speed",
                             "arguments": {"device": id, "speed": 0}}));
        }
        self.step(format!(
            "wait event BLOCK_JOB_COMPLETED device={id} timeout=60s"
        ));
        End::Complete
    }
}

fn name(sync: Sync) -> &'static str {
    match sync {
        Sync::Full => "full",
        Sync::Top => "top",
        Sync::None => "none",
    }
}
