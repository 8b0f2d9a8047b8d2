//! Internal snapshots at the Engine level: `blockdev-snapshot-internal-sync` and
//! `blockdev-snapshot-delete-internal-sync` with QEMU's checks and messages, plus list and
//! apply (revert) for tools and the simulator. The node is drained around each operation: a
//! guest write planned against the old mapping must not land in a cluster a new snapshot
//! shares. The format does the work (`FormatOps::snapshot_*`).
//!
//! A QMP transaction's internal-snapshot action calls these in two phases: prepare =
//! `snapshot_internal_create`, abort = `snapshot_internal_delete` with the id it returned.

use std::rc::Rc;

use crate::driver::{NewSnapshot, SnapshotInfo};
use crate::error::{Errno, Error, Result};
use crate::graph::Node;

use super::Engine;

impl Engine {
    /// The root node `device` names, with QEMU's refusals for internal snapshots.
    fn snapshot_root(&self, device: &str) -> Result<Rc<Node>> {
        self.root_bs(device)
    }

    /// `blockdev-snapshot-internal-sync`: snapshot `name` of the image at `device` (a device or
    /// a root node). Returns the new snapshot (its id undoes it: `snapshot_internal_delete`).
    pub async fn snapshot_internal_create(&self, device: &str, name: &str) -> Result<SnapshotInfo> {
        let bs = self.snapshot_root(device)?;
        if bs.is_read_only() {
            return Err(Error::generic(format!("Device '{device}' is read only")));
        }
        let ops = bs.driver().format_ops().filter(|o| o.can_snapshot());
        let Some(ops) = ops else {
            return Err(Error::generic(format!(
                "Block format '{}' used by device '{device}' does not support internal snapshots",
                bs.driver_name()
            )));
        };
        if name.is_empty() {
            return Err(Error::generic("Name is empty"));
        }
        if ops.snapshots().iter().any(|s| s.name == name) {
            return Err(Error::generic(format!(
                "Snapshot with name '{name}' already exists on device '{device}'"
            )));
        }
        let env = self.env();
        let (wall, vm) = (env.wall_clock_ns(), env.now_ns());
        let spec = NewSnapshot {
            id: None,
            name: name.to_string(),
            date_sec: (wall / 1_000_000_000) as u32,
            date_nsec: (wall % 1_000_000_000) as u32,
            vm_clock_nsec: vm,
            icount: None,
        };
        let _drained = bs.drained_begin().await;
        ops.snapshot_create(spec).await.map_err(|e| {
            Error::generic(format!(
                "Failed to create snapshot '{name}' on device '{device}': {}",
                e.strerror()
            ))
        })
    }

    /// `blockdev-snapshot-delete-internal-sync`: delete the snapshot of `device` with `id`
    /// and/or `name`; returns what it was.
    pub async fn snapshot_internal_delete(
        &self,
        device: &str,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SnapshotInfo> {
        let bs = self.snapshot_root(device)?;
        if id.is_none() && name.is_none() {
            return Err(Error::generic("Name or id must be provided"));
        }
        let ops = bs.driver().format_ops().filter(|o| o.can_snapshot());
        let Some(ops) = ops else {
            return Err(Error::generic(
                "Failed to get a snapshot list: Operation not supported",
            ));
        };
        let found = ops
            .snapshots()
            .iter()
            .any(|s| id.is_none_or(|i| s.id == i) && name.is_none_or(|n| s.name == n));
        if !found {
            return Err(Error::generic(format!(
                "Snapshot with id '{}' and name '{}' does not exist on device '{device}'",
                id.unwrap_or("null"),
                name.unwrap_or("null")
            )));
        }
        if bs.is_read_only() {
            return Err(Error::generic(
                "Failed to remove snapshot from snapshot list: Operation not permitted",
            ));
        }
        let _drained = bs.drained_begin().await;
        ops.snapshot_delete(id, name).await
    }

    /// The internal snapshots of the image at `device` (none for formats without them).
    pub fn snapshot_internal_list(&self, device: &str) -> Result<Vec<SnapshotInfo>> {
        let bs = self.lookup(Some(device), Some(device))?;
        Ok(bs
            .driver()
            .format_ops()
            .map(|o| o.snapshots())
            .unwrap_or_default())
    }

    /// Revert the image at `device` to the snapshot whose id, else name, is `key` (what
    /// `qemu-img snapshot -a` does; QEMU has no QMP command for it).
    pub async fn snapshot_internal_goto(&self, device: &str, key: &str) -> Result<()> {
        let bs = self.lookup(Some(device), Some(device))?;
        let Some(ops) = bs.driver().format_ops() else {
            return Err(Error::io(Errno::ENOTSUP));
        };
        let _drained = bs.drained_begin().await;
        ops.snapshot_goto(key).await
    }
}
