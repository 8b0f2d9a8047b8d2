//! A minimal `block-commit` for the active-layer case only, so scenarios can run active commit
//! on this branch. The full command (intermediate commit, every validation of the inventory)
//! belongs to block-commit proper; when both meet, its active-layer branch calls
//! `job::active_commit::start` as this does.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::job::{Job, JobOptions};
use crate::types::OnError;

use super::Engine;

/// Arguments of the active-layer `block-commit`.
#[derive(Clone, Debug, Default)]
pub struct ActiveCommitArgs {
    /// `job-id` (default: the device name).
    pub job_id: Option<String>,
    /// `device`.
    pub device: String,
    /// `top-node` (must be the active layer here).
    pub top_node: Option<String>,
    /// `base-node` (default: the bottom of the chain).
    pub base_node: Option<String>,
    /// `speed`.
    pub speed: Option<i64>,
    /// `on-error`.
    pub on_error: Option<OnError>,
    /// `filter-node-name`.
    pub filter_node_name: Option<String>,
    /// `auto-finalize`.
    pub auto_finalize: Option<bool>,
    /// `auto-dismiss`.
    pub auto_dismiss: Option<bool>,
}

impl Engine {
    /// `block-commit` of the active layer into a base below it.
    pub async fn block_commit_active(&self, a: ActiveCommitArgs) -> Result<Rc<Job>> {
        let bs = self
            .lookup(Some(&a.device), Some(&a.device))
            .map_err(|_| Error::not_found(format!("Device '{}' not found", a.device)))?;
        bs.check_op_blockers()?;
        let top = match &a.top_node {
            Some(n) => self.node(n)?,
            None => bs.clone(),
        };
        if !Rc::ptr_eq(&top, &bs) {
            return Err(Error::generic(
                "Only the active layer can be committed on this build (intermediate commit is \
                 block-commit's own)",
            ));
        }
        let base = match &a.base_node {
            Some(n) => self.node(n)?,
            None => {
                let mut n = top.clone();
                while let Some(e) = n.backing() {
                    n = e.child_node();
                }
                n
            }
        };
        if Rc::ptr_eq(&top, &base) {
            return Err(Error::generic("cannot commit an image into itself"));
        }
        base.check_op_blockers()?;
        let speed = u64::try_from(a.speed.unwrap_or(0))
            .map_err(|_| Error::generic("Invalid parameter 'speed'"))?;
        let opts = JobOptions {
            id: a.job_id.unwrap_or_else(|| a.device.clone()),
            internal: false,
            auto_finalize: a.auto_finalize.unwrap_or(true),
            auto_dismiss: a.auto_dismiss.unwrap_or(true),
            speed,
        };
        crate::job::active_commit::start(
            self.jobs(),
            &opts,
            top,
            base,
            a.on_error.unwrap_or(OnError::Report),
            a.filter_node_name,
        )
        .await
    }
}
