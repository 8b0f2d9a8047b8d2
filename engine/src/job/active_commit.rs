//! Active commit: `block-commit` whose top is the active layer. A mirror-like job of type
//! "commit" copies what is allocated above the base into the base (which grows to the top's
//! size if needed), reaches READY, keeps the base in sync with guest writes, and on
//! `job-complete` cuts over: the device moves from the top to the base (drained), and the images
//! above the base leave the chain. The backing links between top and base are frozen while the
//! job runs.
//!
//! The QMP command and its validation live with block-commit (`engine/block_jobs.rs`); this is
//! the job.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::types::OnError;

use super::mirror::{self, CopyMode, MirrorParams, SyncMode};
use super::{Job, JobOptions, JobRegistry};

/// Start an active commit of `top` (the active layer) into `base` (in `top`'s backing chain),
/// after `block-commit` validated both. `filter_node_name` names the filter inserted above
/// `top`.
pub async fn start(
    jobs: &Rc<JobRegistry>,
    opts: &JobOptions,
    top: &Rc<Node>,
    base: &Rc<Node>,
    on_error: OnError,
    filter_node_name: Option<&str>,
) -> Result<Rc<Job>> {
    let (top, base) = (top.clone(), base.clone());
    let mut below = top.backing().map(|e| e.child_node());
    loop {
        match below {
            Some(n) if Rc::ptr_eq(&n, &base) => break,
            Some(n) => below = n.backing().map(|e| e.child_node()),
            None => {
                return Err(Error::generic(format!(
                    "'{}' is not in this backing file chain",
                    base.name()
                )));
            }
        }
    }
    // A read-only base is made writable for the job, as QEMU's active commit does, and goes
    // back to read-only when the job ends without a cutover.
    let reopened = crate::graph::reopen_read_write(&base).await?;
    let params = MirrorParams {
        source: top,
        target: base,
        replaces: None,
        sync: SyncMode::Commit,
        granularity: 0,
        buf_size: 0,
        zero_target: false,
        unmap: false,
        on_source_error: on_error,
        on_target_error: on_error,
        filter_node_name: filter_node_name.map(str::to_string),
        copy_mode: CopyMode::Background,
        target_backs_on_source: false,
        restore_read_only: reopened.clone(),
    };
    let started = mirror::start(jobs, opts, params).await;
    if started.is_err() {
        let _ = crate::graph::reopen_read_only(&reopened).await;
    }
    started
}
