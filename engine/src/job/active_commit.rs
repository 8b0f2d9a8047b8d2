//! Active commit (`block-commit` whose top is the active layer): TEMPORARY placeholder.
//!
//! The mirror-based implementation (READY, pivot on `job-complete`) comes from the mirror
//! branch and replaces this file at merge. Until then the command validates everything, then
//! refuses here.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::types::OnError;

use super::{Job, JobOptions, JobRegistry};

/// Start an active commit of `top` (the active layer) into `base`, after `block-commit`
/// validated both. `filter_node_name` names the filter inserted above `top`.
pub async fn start(
    jobs: &Rc<JobRegistry>,
    opts: &JobOptions,
    top: &Rc<Node>,
    base: &Rc<Node>,
    on_error: OnError,
    filter_node_name: Option<&str>,
) -> Result<Rc<Job>> {
    let _ = (jobs, opts, top, base, on_error, filter_node_name);
    Err(Error::generic(
        "active commit is not available in this build",
    ))
}
