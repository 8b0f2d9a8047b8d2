//! Whole transfers out of the host's partial ones, for the `file` driver.
//!
//! A host read or write may move fewer bytes than asked (a signal, a quota, a device that splits
//! requests) or fail with a transient `EINTR`/`EAGAIN`. As QEMU's raw-posix backend does, the
//! driver loops until everything moved: a short transfer is continued from where it stopped, a
//! transient error is retried, a read that reaches the end of the file fills the rest with
//! zeroes, and a write that makes no progress fails with `EINVAL`. The guest never sees a short
//! count or a transient error.

use crate::env::HostFile;
use crate::error::{Errno, Error, Result};
use crate::io::{BufResult, IoBuf};

/// Consecutive transient failures with no progress before the error is passed on. A host that
/// keeps answering `EAGAIN` this often is not transient any more; without a bound a stuck file
/// would spin the event loop forever.
pub(super) const MAX_TRANSIENT_RETRIES: u32 = 1000;

/// `EINTR` and `EAGAIN`: try again, nothing happened.
fn transient(e: &Error) -> bool {
    matches!(e.errno(), Some(Errno::EAGAIN | Errno::Other(4)))
}

/// What one partial transfer left to do.
enum Step {
    /// `n` more bytes moved (0: end of file for a read).
    Moved(usize),
    /// Retry the same transfer.
    Retry,
}

/// Fold one attempt's outcome into the loop: progress, a retry, or the error to return.
fn step(r: Result<usize>, retries: &mut u32) -> Result<Step> {
    match r {
        Ok(n) => {
            *retries = 0;
            Ok(Step::Moved(n))
        }
        Err(e) if transient(&e) && *retries < MAX_TRANSIENT_RETRIES => {
            *retries += 1;
            Ok(Step::Retry)
        }
        Err(e) => Err(e),
    }
}

/// Fill all of `buf` from `offset`; bytes past the end of the file read as zeroes.
pub(super) async fn read_full(file: &dyn HostFile, mut buf: IoBuf, offset: u64) -> BufResult {
    let (mut done, mut retries) = (0usize, 0u32);
    while done < buf.len() {
        let (b, r) = file.read_part(buf, done, offset + done as u64).await;
        buf = b;
        match step(r, &mut retries) {
            Ok(Step::Moved(0)) => {
                buf.as_mut_slice()[done..].fill(0);
                break;
            }
            Ok(Step::Moved(n)) => done += n.min(buf.len() - done),
            Ok(Step::Retry) => {}
            Err(e) => return (buf, Err(e)),
        }
    }
    (buf, Ok(()))
}

/// Write all of `buf` at `offset` (durable on return with `fua`).
pub(super) async fn write_full(
    file: &dyn HostFile,
    mut buf: IoBuf,
    offset: u64,
    fua: bool,
) -> BufResult {
    let (mut done, mut retries) = (0usize, 0u32);
    while done < buf.len() {
        let (b, r) = file.write_part(buf, done, offset + done as u64, fua).await;
        buf = b;
        match step(r, &mut retries) {
            Ok(Step::Moved(0)) => {
                let e = Error::io_msg(
                    Errno::EINVAL,
                    format!(
                        "short write: no progress at offset {}",
                        offset + done as u64
                    ),
                );
                return (buf, Err(e));
            }
            Ok(Step::Moved(n)) => done += n.min(buf.len() - done),
            Ok(Step::Retry) => {}
            Err(e) => return (buf, Err(e)),
        }
    }
    (buf, Ok(()))
}
