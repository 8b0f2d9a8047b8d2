//! Changing qcow2's runtime options at reopen (qemu-io `reopen -o`): as in QEMU, a reopen's
//! options are the whole set (an option it does not give goes back to its default, the image
//! header's for lazy refcounts), parsed and checked as at open, and applied only at commit. What must be on disk first (turning lazy refcounts off, caching fewer
//! tables) is written back in the prepare phase, where an error still leaves everything as it
//! was. Anything that is not a runtime option cannot change ("Cannot change the option").
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Error, Result};
use crate::util::Options;

use super::Qcow2;
use super::clean;
use super::options::{OpenOpts, RUNTIME_KEYS};

/// Options checked by a reopen's prepare phase, applied by its commit.
pub(crate) struct Staged {
    runtime: OpenOpts,
    lazy: bool,
    /// (L2 tables, refcount blocks) to cache.
    tables: (usize, usize),
}

impl Qcow2 {
    /// Check a reopen's options and stage them.
    pub(super) async fn prepare_option_changes(&self, changes: Options) -> Result<()> {
        if let Some(key) = changes.keys().find(|k| !RUNTIME_KEYS.contains(k)) {
            return Err(Error::generic(format!("Cannot change the option '{key}'")));
        }
        let unmap = self
            .node
            .upgrade()
            .is_some_and(|n| n.options().discard_unmap);
        let mut changes = changes;
        let runtime = OpenOpts::take(&mut changes, unmap)?;
        runtime.check_version(self.layout.version.get())?;
        let lazy = runtime.lazy.unwrap_or(self.header_lazy);
        let tables = runtime.cache_tables(self.layout.cs(), self.layout.size.get());
        let fewer_tables =
            tables.0 < self.l2.cache.capacity() || tables.1 < self.alloc.cache.capacity();
        if !self.read_only.get() && ((self.lazy.get() && !lazy) || fewer_tables) {
            // The refcounts must be accurate on disk before lazy refcounts are off, and the
            // tables a smaller cache drops must not be dirty.
            self.write_back_and_mark_clean().await?;
        }
        *self.reopen_options.borrow_mut() = Some(Staged {
            runtime,
            lazy,
            tables,
        });
        Ok(())
    }

    /// `pass-discard-request` now (a copy: a reopen may change it while a request waits).
    pub(super) fn pass_discard_request(&self) -> bool {
        self.runtime.borrow().pass_discard_request
    }

    /// `pass-discard-other` now.
    pub(super) fn pass_discard_other(&self) -> bool {
        self.runtime.borrow().pass_discard_other
    }

    /// Apply what `prepare_option_changes` staged (nothing when it staged nothing).
    pub(super) fn apply_option_changes(&self) {
        let Some(staged) = self.reopen_options.take() else {
            return;
        };
        self.l2.cache.set_capacity(staged.tables.0);
        self.alloc.cache.set_capacity(staged.tables.1);
        self.lazy.set(staged.lazy);
        let interval = staged.runtime.clean_interval;
        if interval != self.runtime.borrow().clean_interval {
            // The old task ends when its handle drops; a new one starts with the new period.
            let env = self.node.upgrade().map(|n| n.ctx().env().clone());
            *self.cleaner.borrow_mut() = match (env, interval.filter(|&s| s > 0)) {
                (Some(env), Some(secs)) => Some(clean::start(env, self.node.clone(), secs)),
                _ => None,
            };
        }
        *self.runtime.borrow_mut() = staged.runtime;
    }
}
