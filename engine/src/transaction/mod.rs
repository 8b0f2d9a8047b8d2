//! QMP `transaction`: several block actions that take effect together or not at all.
//!
//! Every action implements [`Action`]. The runner ([`run`]) prepares the actions in order; the
//! first failure stops it, and every action whose prepare was called (the failing one included,
//! since it may have done part of its work) is aborted in reverse order. When all prepared,
//! every action commits in order. Either way every called action is cleaned last, in order.
//! Only `prepare` may fail: commit, abort and clean do what they can and never report.
//!
//! The single commands that QEMU defines as one-action transactions (`blockdev-snapshot-sync`,
//! `blockdev-snapshot`, `blockdev-backup`, `drive-backup` as actions) go through [`run`] too.
//!
//! One file per action family: `snapshot` (external snapshots), `bitmaps` (the dirty bitmap
//! verbs), `backup` (the backup jobs, created in prepare and started in commit),
//! `internal_snapshot` (a qcow2 internal snapshot, deleted again on abort). An action is
//! added by implementing [`Action`] in a new file and giving its QMP type a row in
//! `qmp/transaction.rs`.

use std::rc::Rc;

use crate::engine::Engine;
use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::job::JobTxn;

mod backup;
mod bitmaps;
mod internal_snapshot;
mod snapshot;

pub use backup::BackupAction;
pub use bitmaps::{BitmapAction, BitmapVerb};
pub use internal_snapshot::InternalSnapshot;
pub use snapshot::{ExternalSnapshot, SnapshotSource};

/// `properties.completion-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// Each job completes on its own (the default).
    #[default]
    Individual,
    /// The jobs the transaction starts finish together: one failing cancels the others.
    Grouped,
}

impl CompletionMode {
    /// QMP's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompletionMode::Individual => "individual",
            CompletionMode::Grouped => "grouped",
        }
    }
}

/// What the actions of one transaction share.
pub struct TxnCtx<'a> {
    /// The engine the actions act on.
    pub engine: &'a Engine,
    /// The completion mode.
    pub mode: CompletionMode,
    /// The job transaction grouped jobs join (`None`: each job in a transaction of its own).
    pub jobs: Option<Rc<JobTxn>>,
}

/// One action of a transaction.
pub trait Action {
    /// The QMP action type (`blockdev-snapshot-sync`, ...), for messages.
    fn kind(&self) -> &'static str;

    /// Whether the action takes part in `completion-mode=grouped` (only the backup jobs do).
    fn supports_grouped(&self) -> bool {
        false
    }

    /// Check everything and do the work, keeping what abort needs to undo it. The only step
    /// that may fail; on failure the action must still be abortable (it may have done part).
    fn prepare<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>>;

    /// Every action prepared: make the change final.
    fn commit<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Some action failed: undo whatever prepare did (also after a failed prepare).
    fn abort<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// After commit or abort: release what the action held (drained sections, references).
    fn clean<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The `abort` action: always fails, so the transaction undoes everything before it.
pub struct AbortAction;

impl Action for AbortAction {
    fn kind(&self) -> &'static str {
        "abort"
    }

    fn prepare<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async { Err(Error::generic("Transaction aborted using Abort action")) })
    }
}

/// QEMU refuses `grouped` for every action that starts no job, in prepare.
fn check_completion_mode(action: &dyn Action, mode: CompletionMode) -> Result<()> {
    if mode == CompletionMode::Grouped && !action.supports_grouped() {
        return Err(Error::generic(format!(
            "Action '{}' does not support transaction property completion-mode = {}",
            action.kind(),
            mode.as_str()
        )));
    }
    Ok(())
}

/// Run a transaction: prepare all, then commit all, or abort all in reverse; clean all.
pub async fn run(
    engine: &Engine,
    mut actions: Vec<Box<dyn Action>>,
    mode: CompletionMode,
) -> Result<()> {
    let cx = TxnCtx {
        engine,
        mode,
        jobs: (mode == CompletionMode::Grouped).then(JobTxn::new),
    };
    let mut called = 0;
    let mut failure = None;
    for action in actions.iter_mut() {
        called += 1;
        let r = match check_completion_mode(action.as_ref(), mode) {
            Ok(()) => action.prepare(&cx).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failure = Some(e);
            break;
        }
    }
    match &failure {
        None => {
            for action in actions.iter_mut() {
                action.commit(&cx).await;
            }
        }
        Some(_) => {
            for action in actions[..called].iter_mut().rev() {
                action.abort(&cx).await;
            }
        }
    }
    for action in actions[..called].iter_mut() {
        action.clean(&cx).await;
    }
    failure.map_or(Ok(()), Err)
}

/// Run one action as a transaction of its own (the single QMP commands).
pub async fn run_one(engine: &Engine, action: Box<dyn Action>) -> Result<()> {
    run(engine, vec![action], CompletionMode::Individual).await
}
