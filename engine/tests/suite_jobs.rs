//! Test binary `jobs`: block jobs: the job core, stream, commit, mirror, backup (simulated and on real files), errors, reopen, crashes.
//! Each file below was its own test crate; it is a module here (see engine/Cargo.toml).

// Shared helpers, loaded once for the whole binary; test files `use crate::` them.
mod qcow2_support;
mod support;

#[path = "backup.rs"]
mod backup;
#[path = "backup_errors.rs"]
mod backup_errors;
#[path = "block_job_crash.rs"]
mod block_job_crash;
#[path = "block_job_errors.rs"]
mod block_job_errors;
#[path = "block_job_reopen.rs"]
mod block_job_reopen;
#[path = "block_stream_commit.rs"]
mod block_stream_commit;
#[path = "job_core.rs"]
mod job_core;
#[path = "mirror.rs"]
mod mirror;
#[path = "mirror_errors.rs"]
mod mirror_errors;
#[path = "mirror_real.rs"]
mod mirror_real;
#[path = "snapshot_external.rs"]
mod snapshot_external;
#[path = "snapshot_real.rs"]
mod snapshot_real;
#[path = "transaction.rs"]
mod transaction;
