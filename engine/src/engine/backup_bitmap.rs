//! The named dirty bitmap of a backup (`bitmap`, `bitmap-mode`, sync=bitmap/incremental): found
//! on the source and checked as QEMU checks it, frozen behind a successor while the job runs
//! (writes meanwhile go to the successor), and settled by `bitmap-mode` when the job ends:
//! what was copied leaves the bitmap on success (`on-success`, `always`), or always (`always`,
//! which on failure also keeps what was not copied); `never` and failures merge the successor
//! back so that nothing written is lost.

use std::rc::Rc;

use crate::bitmap::{Bitmap, HBits, Use};
use crate::error::{Error, Result};
use crate::graph::Node;
use crate::job::backup::{BackupBitmap, BitmapHook, BitmapMode};

/// The bitmap arguments of a backup, resolved: the sync mode as the job runs it (incremental is
/// sync=bitmap with `on-success`) and the named bitmap with its mode, if one was given.
pub(super) struct ResolvedBitmap {
    pub(super) bitmap: Rc<Bitmap>,
    pub(super) mode: BitmapMode,
}

/// Find `name` on `bs` and check it against the sync mode (`sync` already desugared from
/// incremental), with QEMU's messages in QEMU's order.
pub(super) fn resolve(
    bs: &Node,
    name: &str,
    sync: &str,
    mode: Option<BitmapMode>,
) -> Result<ResolvedBitmap> {
    let bitmap = bs
        .bitmaps()
        .find(name)
        .ok_or_else(|| Error::generic(format!("Bitmap '{name}' could not be found")))?;
    let mode = match mode {
        Some(m) => m,
        None if sync == "bitmap" => {
            return Err(Error::generic(
                "Bitmap sync mode must be given when providing a bitmap",
            ));
        }
        None => BitmapMode::OnSuccess,
    };
    if sync == "none" {
        return Err(Error::generic(format!(
            "sync mode '{sync}' does not produce meaningful bitmap outputs"
        )));
    }
    if mode == BitmapMode::Never && sync != "bitmap" {
        return Err(Error::generic(format!(
            "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode \
             '{sync}'"
        )));
    }
    bitmap.check(Use::Read)?;
    Ok(ResolvedBitmap { bitmap, mode })
}

/// Freeze the bitmap behind a successor and hand the job its bits and the hook that settles it.
/// The caller calls [`undo`] if the job then fails to start.
pub(super) fn freeze(r: &ResolvedBitmap) -> Result<BackupBitmap> {
    r.bitmap.create_successor()?;
    let (bits, granularity) = {
        let b = r.bitmap.bits();
        (b.bits().clone(), b.granularity())
    };
    Ok(BackupBitmap {
        bits,
        granularity,
        mode: r.mode,
        hook: Rc::new(SettleNamed(r.bitmap.clone())),
    })
}

/// The job did not start: the bitmap gets its successor's bits back and records again.
pub(super) fn undo(r: &ResolvedBitmap) {
    let _ = r.bitmap.reclaim();
}

/// Settles a named bitmap when its backup ends (QEMU's sync-bitmap cleanup).
struct SettleNamed(Rc<Bitmap>);

impl BitmapHook for SettleNamed {
    fn on_success(&self, mode: BitmapMode) {
        let _ = match mode {
            BitmapMode::Never => self.0.reclaim(),
            BitmapMode::OnSuccess | BitmapMode::Always => self.0.abdicate(),
        };
    }

    fn on_failure(&self, mode: BitmapMode, uncopied: &HBits, cluster: u64) {
        if mode != BitmapMode::Always {
            let _ = self.0.reclaim();
            return;
        }
        // Copied bits leave even on failure; what the target still lacks stays dirty.
        let _ = self.0.abdicate();
        let end = self.0.len();
        for (start, len) in uncopied.runs() {
            let from = (start * cluster).min(end);
            self.0.set_range(from, (len * cluster).min(end - from));
        }
    }
}
