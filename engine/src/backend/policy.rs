//! Error policies of a backend: what happens to a failed guest request.

use serde_json::json;

use crate::error::{Errno, Result};
use crate::types::OnError;

use super::BlockBackend;

/// A device's I/O status (`query-block`'s `io-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// No error since the last `cont`.
    Ok,
    /// Stopped on an error other than ENOSPC.
    Failed,
    /// Stopped on ENOSPC.
    Nospace,
}

impl IoStatus {
    /// The QMP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IoStatus::Ok => "ok",
            IoStatus::Failed => "failed",
            IoStatus::Nospace => "nospace",
        }
    }
}

pub(super) enum Outcome<T> {
    Done(T),
    Retry,
}

/// What the policy does with an error: report it, ignore it, or stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Report,
    Ignore,
    Stop,
}

impl BlockBackend {
    /// Apply the error policy to a finished request. `Retry` means the machine was stopped and
    /// has been resumed: issue the request again.
    pub(super) async fn on_result(&self, result: Result<()>, is_read: bool) -> Outcome<Result<()>> {
        let Err(err) = result else {
            return Outcome::Done(Ok(()));
        };
        let opts = self.opts.get();
        let policy = if is_read { opts.rerror } else { opts.werror };
        let nospace = err.errno() == Some(Errno::ENOSPC);
        let action = match policy {
            OnError::Report => Action::Report,
            OnError::Ignore => Action::Ignore,
            OnError::Stop => Action::Stop,
            OnError::Enospc if nospace => Action::Stop,
            OnError::Enospc => Action::Report,
        };
        self.ctx.emit(
            "BLOCK_IO_ERROR",
            json!({
                "device": self.name,
                "node-name": self.root_node().map(|n| n.name().to_string()),
                "operation": if is_read { "read" } else { "write" },
                "action": match action { Action::Report => "report", Action::Ignore => "ignore", Action::Stop => "stop" },
                "nospace": nospace,
                "reason": err.message(),
            }),
        );
        match action {
            Action::Report => Outcome::Done(Err(err)),
            Action::Ignore => Outcome::Done(Ok(())),
            Action::Stop => {
                self.iostatus.set(if nospace {
                    IoStatus::Nospace
                } else {
                    IoStatus::Failed
                });
                self.machine.stop();
                self.machine.wait_running().await;
                Outcome::Retry
            }
        }
    }
}
