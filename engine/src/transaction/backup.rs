//! `blockdev-backup` and `drive-backup` as transaction actions: prepare sets the job up (the
//! copy-before-write filter goes in, so the point in time is the transaction's) without
//! starting it, in the transaction's job group when `completion-mode` is grouped; commit
//! starts it; abort cancels the never-started job, which takes its filter out and gives a
//! sync=bitmap bitmap back. The only actions that accept `completion-mode=grouped`.

use std::rc::Rc;

use crate::engine::BackupArgs;
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::job::Job;

use super::{Action, TxnCtx};

/// One backup action.
pub struct BackupAction {
    args: BackupArgs,
    /// drive-backup (the target is a file to create or open) rather than blockdev-backup.
    drive: bool,
    job: Option<Rc<Job>>,
}

impl BackupAction {
    /// `blockdev-backup`.
    pub fn blockdev(args: BackupArgs) -> BackupAction {
        BackupAction {
            args,
            drive: false,
            job: None,
        }
    }

    /// `drive-backup`.
    pub fn drive(args: BackupArgs) -> BackupAction {
        BackupAction {
            args,
            drive: true,
            job: None,
        }
    }
}

impl Action for BackupAction {
    fn kind(&self) -> &'static str {
        if self.drive {
            "drive-backup"
        } else {
            "blockdev-backup"
        }
    }

    fn supports_grouped(&self) -> bool {
        true
    }

    fn prepare<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let args = self.args.clone();
            let txn = cx.jobs.clone();
            let job = if self.drive {
                cx.engine.drive_backup_created(args, txn).await?
            } else {
                cx.engine.blockdev_backup_created(args, txn).await?
            };
            self.job = Some(job);
            Ok(())
        })
    }

    fn commit<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(job) = &self.job {
                job.start();
            }
        })
    }

    fn abort<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(job) = self.job.take()
                && job.status() == crate::job::JobStatus::Created
            {
                // A created job can always be cancelled; in a grouped transaction another
                // member's abort may have concluded it already.
                let _ = job.cancel(true).await;
            }
        })
    }
}
