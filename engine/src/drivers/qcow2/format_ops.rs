//! qcow2's format-only verbs ([`FormatOps`]): emptying the image, rewriting the backing file
//! reference, check/repair. The work is in `io`, `backing` and `check`; this is the entry point
//! the engine reaches through `BlockDriver::format_ops`.

use crate::driver::{CheckReport, FormatOps, Repair};
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::io::{BufResult, IoBuf};

use super::Qcow2;

impl FormatOps for Qcow2 {
    fn make_empty(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_writable().await?;
            self.do_make_empty().await
        })
    }

    fn change_backing_file(
        &self,
        name: Option<&str>,
        format: Option<&str>,
    ) -> LocalBoxFuture<'_, Result<()>> {
        let name = name.map(str::to_string);
        let format = format.map(str::to_string);
        Box::pin(async move {
            self.do_change_backing_file(name.as_deref(), format.as_deref())
                .await
        })
    }

    fn check(&self, repair: Option<Repair>) -> LocalBoxFuture<'_, Result<CheckReport>> {
        Box::pin(Qcow2::check(self, repair))
    }

    fn data_may_be_file_holes(&self) -> LocalBoxFuture<'_, Result<bool>> {
        Box::pin(async {
            // Decided once per open: later asks (one per data run of a map) take no lock.
            if let Some(known) = self.metadata_prealloc.get() {
                return Ok(known);
            }
            let held = &self.meta.lock().await;
            self.metadata_preallocated(held).await
        })
    }

    fn can_store_new_bitmap(&self, node: &str, name: &str, _granularity: u64) -> Result<()> {
        // The name-length rule of the bitmap directory; the rest of qcow2's limits come with
        // the bitmaps extension itself.
        if name.len() > crate::bitmap::MAX_NAME_LEN {
            return Err(crate::error::Error::generic(format!(
                "Can't make bitmap '{name}' persistent in '{node}': Name length exceeds maximum \
                 (1023 characters)"
            )));
        }
        Ok(())
    }

    fn snapshot_count(&self) -> u32 {
        self.layout.nb_snapshots
    }

    fn has_persistent_bitmaps(&self) -> bool {
        // Autoclear bit 0: the bitmaps extension is valid.
        self.layout.autoclear.get() & 1 != 0
    }

    fn save_vmstate(&self, pos: u64, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(Qcow2::save_vmstate(self, pos, buf))
    }

    fn load_vmstate(&self, pos: u64, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(Qcow2::load_vmstate(self, pos, buf))
    }

    fn cached_tables(&self) -> (usize, usize) {
        (self.l2.cache.len(), self.alloc.cache.len())
    }

    fn clean_unused_tables(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(Qcow2::clean_unused_tables(self))
    }
}
