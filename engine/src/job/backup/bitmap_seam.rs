//! Where named dirty bitmaps plug into backup and copy-before-write once they exist.
//!
//! sync=bitmap (and incremental) copies what a named bitmap of the source marks, and on the
//! job's end applies `bitmap-mode`'s rules to that bitmap (QEMU's successor bitmap: on success
//! the copied bits are dropped; on failure, or with `never`, they come back; `always` drops what
//! was copied even on failure). The job side of that is here, ready:
//!
//! * [`BackupBitmap`] carries the named bitmap's bits (seeded into the job's copy bitmap with
//!   [`CopyState::seed_from`](super::CopyState::seed_from)) and a [`BitmapHook`];
//! * the job calls [`BitmapHook::on_success`] when it commits and [`BitmapHook::on_failure`]
//!   (with what was left uncopied) when it aborts.
//!
//! The Engine finds and freezes the named bitmap (`engine/backup_bitmap.rs`); the filter's
//! own `bitmap` option is looked up by [`lookup_cbw_bitmap`].

use std::rc::Rc;

use crate::bitmap::HBits;
use crate::error::{Error, Result};
use crate::graph::GraphCtx;
use crate::util::Options;

/// `bitmap-mode`: what happens to the named bitmap when the job ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapMode {
    /// Clear what was copied only if the job succeeded (the default).
    OnSuccess,
    /// Never change the bitmap.
    Never,
    /// Clear what was copied whether the job succeeded or not.
    Always,
}

impl BitmapMode {
    /// Parse QMP's `bitmap-mode`.
    pub fn parse(s: &str) -> Result<BitmapMode> {
        match s {
            "on-success" => Ok(BitmapMode::OnSuccess),
            "never" => Ok(BitmapMode::Never),
            "always" => Ok(BitmapMode::Always),
            _ => Err(Error::param_invalid(
                "bitmap-mode",
                format!("does not accept value '{s}'"),
            )),
        }
    }
}

/// What the bitmaps layer does with a named bitmap when a backup that used it ends.
pub trait BitmapHook {
    /// The job succeeded: every bit it was seeded with was copied.
    fn on_success(&self, mode: BitmapMode);
    /// The job failed or was cancelled: `uncopied` (at the job's cluster granularity,
    /// `cluster` bytes a bit) is what the target still lacks.
    fn on_failure(&self, mode: BitmapMode, uncopied: &HBits, cluster: u64);
}

/// A named bitmap a backup copies by.
pub struct BackupBitmap {
    /// The bitmap's bits when the job starts.
    pub bits: HBits,
    /// Bytes per bit of `bits`.
    pub granularity: u64,
    /// `bitmap-mode`.
    pub mode: BitmapMode,
    /// Called when the job ends.
    pub hook: Rc<dyn BitmapHook>,
}

/// copy-before-write's `bitmap` option (`{"node": ..., "name": ...}`): parsed as QEMU parses
/// it, then looked up; returns the named bitmap's bits and granularity (the filter copies only
/// what it marks).
pub fn lookup_cbw_bitmap(graph: &GraphCtx, mut opts: Options) -> Result<(HBits, u64)> {
    let node = opts.require_str("node")?;
    let name = opts.require_str("name")?;
    opts.finish()?;
    let Some(n) = graph.node(&node) else {
        return Err(Error::generic(format!(
            "Cannot find device='{node}' nor node-name='{node}'"
        )));
    };
    let b = n
        .bitmaps()
        .find(&name)
        .ok_or_else(|| Error::generic(format!("Dirty bitmap '{name}' not found")))?;
    let bits = b.bits();
    Ok((bits.bits().clone(), bits.granularity()))
}
