//! The chunked copy loop that stream, commit and rebase share: walk the image in chunks, sleep
//! for the speed limit and pass a pause point between chunks, stop once cancelled, and apply the
//! job's `on-error` policy to a failed chunk. Each job supplies only what one chunk does.

use std::future::Future;

use crate::error::{Error, Result};
use crate::types::OnError;

use super::{ErrorAction, Job};

/// What one chunk did: the bytes it covered (progress) and the bytes it copied (counted against
/// the speed limit); or its error and whether that was a read.
pub type ChunkResult = std::result::Result<(u64, u64), (Error, bool)>;

/// What `on-error: ignore` does with a failed chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoredChunk {
    /// Try the chunk again (QEMU's commit).
    Retry,
    /// Leave the chunk as it is and go on; the first such error is returned at the end
    /// (QEMU's stream: the gap means the backing chain must stay).
    Skip,
}

impl Job {
    /// Run `step(offset, want)` over `[0, len)` in chunks of at most `chunk` bytes. A `stop`
    /// policy retries the chunk once the user resumes the job (the pause point before the next
    /// try parks it); `report` ends the loop with the error. Returns the first error that
    /// [`IgnoredChunk::Skip`] passed over.
    pub async fn copy_in_chunks<F, Fut>(
        &self,
        len: u64,
        chunk: u64,
        policy: OnError,
        ignored: IgnoredChunk,
        step: F,
    ) -> Result<Option<Error>>
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: Future<Output = ChunkResult>,
    {
        self.copy_in_chunks_split(len, chunk, [policy, policy], ignored, step)
            .await
    }

    /// [`Job::copy_in_chunks`] with one policy for failed reads and one for failed writes
    /// (`[on-source-error, on-target-error]`, as backup has).
    pub async fn copy_in_chunks_split<F, Fut>(
        &self,
        len: u64,
        chunk: u64,
        policies: [OnError; 2],
        ignored: IgnoredChunk,
        mut step: F,
    ) -> Result<Option<Error>>
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: Future<Output = ChunkResult>,
    {
        let mut offset = 0;
        let mut copied = 0;
        let mut first_ignored = None;
        while offset < len {
            self.rate_limit(copied).await;
            copied = 0;
            if self.is_cancelled() {
                break;
            }
            let want = chunk.min(len - offset);
            let covered = match step(offset, want).await {
                Ok((n, c)) => {
                    copied = c;
                    n
                }
                Err((e, is_read)) => {
                    let policy = policies[usize::from(!is_read)];
                    match (self.error_action(policy, &e, is_read), ignored) {
                        (ErrorAction::Report, _) => return Err(e),
                        (ErrorAction::Stop, _) | (ErrorAction::Ignore, IgnoredChunk::Retry) => {
                            continue;
                        }
                        (ErrorAction::Ignore, IgnoredChunk::Skip) => {
                            first_ignored.get_or_insert(e);
                            want
                        }
                    }
                }
            };
            self.add_progress(covered);
            offset += covered;
        }
        Ok(first_ignored)
    }
}
