//! Restart after jobs moved a device (a mirror's pivot, an active commit), and `check-file` of
//! an image file. A family of steps (see `step`).
//!
//! `restart` replays the recorded `blockdev-add`s and `device add`s. A pivot moved the device to
//! another node (the mirror's target, the commit's base), which the replay alone would not
//! reproduce. So at `crash` every device's root *as the graph has it* is recorded: job filters
//! (mirror-top) are looked through, since they do not survive a restart. A device whose root is
//! no longer the node it was added on is re-attached on restart to that node: by its name when
//! the replay re-created it, otherwise by opening its image file (a drive-mirror target).

use std::rc::Rc;

use engine::drivers::qcow2;
use engine::graph::{Node, open_node};
use engine::job::mirror::FILTER_DRIVER;
use engine::util::Options;
use serde_json::json;

use super::outcome::{Failure, fail};
use super::syntax::Arg;
use super::world::{PivotedDevice, Setup, World};

/// The device's root without job filters above it (mirror-top, and the copy-before-write
/// filter a backup job inserted: one added by `blockdev-add` is replayed by the restart).
fn effective_root(mut node: Rc<Node>) -> Rc<Node> {
    while node.driver_name() == FILTER_DRIVER
        || (node.driver_name() == engine::job::backup::CBW_DRIVER && node.is_implicit())
    {
        match node.primary_child() {
            Some(e) => node = e.child_node(),
            None => break,
        }
    }
    node
}

fn node_arg(args: &[Arg]) -> Option<&str> {
    args.iter()
        .find(|a| a.key == "node")
        .and_then(|a| a.value.as_deref())
}

impl World<'_> {
    /// At a crash: note every device a job moved.
    pub(super) fn record_pivots(&mut self) {
        let mut setup = std::mem::take(&mut self.setup);
        for s in &mut setup {
            let (name, args) = match s {
                Setup::Device(name, args) => (name.clone(), args.clone()),
                Setup::Pivoted(p) => (p.name.clone(), p.args.clone()),
                Setup::Qmp(_) | Setup::DeviceDel(_) => continue,
            };
            let Some(root) = self
                .engine
                .backend(&name)
                .ok()
                .and_then(|bb| bb.root_node())
                .map(effective_root)
            else {
                continue;
            };
            if node_arg(&args) == Some(root.name()) {
                continue;
            }
            self.note(&format!(
                "crash: device {name} is on node '{}' ({})",
                root.name(),
                root.driver().filename()
            ));
            *s = Setup::Pivoted(PivotedDevice {
                name,
                args,
                node: root.name().to_string(),
                implicit: root.is_implicit(),
                filename: root.driver().filename(),
                format: root.driver_name().to_string(),
            });
        }
        // A pivoted device is re-attached after every node is back: its new node may have
        // been added after the device (a mirror target), and attaching it by file first would
        // make that node's own replay a duplicate.
        let (pivoted, mut rest): (Vec<Setup>, Vec<Setup>) = setup
            .into_iter()
            .partition(|s| matches!(s, Setup::Pivoted(_)));
        rest.extend(pivoted);
        self.setup = rest;
    }

    /// On restart: attach the device to its post-pivot node.
    pub(super) async fn reattach_pivoted(&mut self, p: &PivotedDevice) -> Result<(), String> {
        let node = if !p.implicit && self.engine.graph().node(&p.node).is_some() {
            p.node.clone()
        } else {
            let name = if p.implicit {
                format!("{}-root", p.name)
            } else {
                p.node.clone()
            };
            let cmd = json!({"driver": p.format, "node-name": name,
                             "file": {"driver": "file", "filename": p.filename}});
            self.engine
                .blockdev_add(cmd)
                .await
                .map_err(|e| format!("reopening '{}' failed: {e}", p.filename))?;
            name
        };
        let mut args: Vec<Arg> = p.args.iter().filter(|a| a.key != "node").cloned().collect();
        args.push(Arg {
            key: "node".into(),
            value: Some(node.clone()),
            column: 0,
        });
        self.device_add(&p.name, &args)?;
        self.note(&format!("restart: device {} on node '{node}'", p.name));
        Ok(())
    }

    /// `check-file PATH`: open the image read-only on its own (no backing) and check it.
    pub(super) async fn check_file(&mut self, line: usize, path: &str) -> Result<(), Failure> {
        let opts = Options::new(
            json!({"driver": "qcow2", "read-only": true, "backing": null,
            "file": {"driver": "file", "filename": path, "read-only": true}}),
        )
        .map_err(|e| fail("setup", line, e.to_string()))?;
        let node = open_node(self.engine.graph(), opts)
            .await
            .map_err(|e| fail("image-check", line, format!("{path}: {e}")))?;
        let report = qcow2::check_node(&node, None).await;
        engine::graph::close_unused(&node).await;
        let report = report.map_err(|e| fail("image-check", line, format!("{path}: {e}")))?;
        self.note(&format!(
            "check {path}: {} corruptions, {} leaks, {} check errors",
            report.corruptions, report.leaks, report.check_errors
        ));
        if report.corruptions > 0 || report.check_errors > 0 {
            return Err(fail(
                "check",
                line,
                format!("{path}: {}", report.messages.join("; ")),
            ));
        }
        Ok(())
    }
}
