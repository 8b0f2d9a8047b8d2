//! `blockdev-snapshot-internal-sync` as a transaction action: prepare takes the qcow2 internal
//! snapshot (the Engine's checks, QEMU's messages), abort deletes the snapshot it took, by id,
//! so a failed transaction leaves the image's snapshot table as it was. The node stays drained
//! from prepare to clean, as QEMU holds it: no guest write lands between this snapshot and the
//! other actions' points in time (a bitmap added, an overlay appended in the same transaction).

use crate::driver::SnapshotInfo;
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::graph::DrainedSection;

use super::{Action, TxnCtx};

/// One internal snapshot action.
pub struct InternalSnapshot {
    device: String,
    name: String,
    /// The snapshot prepare took, which abort removes.
    taken: Option<SnapshotInfo>,
    /// The node's drained section, from prepare to clean.
    drained: Option<DrainedSection>,
}

impl InternalSnapshot {
    /// Snapshot `device` (a device or node name) as `name`.
    pub fn new(device: String, name: String) -> InternalSnapshot {
        InternalSnapshot {
            device,
            name,
            taken: None,
            drained: None,
        }
    }
}

impl Action for InternalSnapshot {
    fn kind(&self) -> &'static str {
        "blockdev-snapshot-internal-sync"
    }

    fn prepare<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // An unknown device is refused by the create below, with QEMU's message.
            if let Ok(bs) = cx.engine.root_bs(&self.device) {
                self.drained = Some(bs.drained_begin().await);
            }
            let sn = cx
                .engine
                .snapshot_internal_create(&self.device, &self.name)
                .await?;
            self.taken = Some(sn);
            Ok(())
        })
    }

    fn abort<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(sn) = self.taken.take() {
                // Best effort, as every abort: the snapshot was just taken by this action.
                let _ = cx
                    .engine
                    .snapshot_internal_delete(&self.device, Some(&sn.id), None)
                    .await;
            }
        })
    }

    fn clean<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            self.drained = None;
        })
    }
}
