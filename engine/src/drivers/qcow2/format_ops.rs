//! qcow2's format-only verbs ([`FormatOps`]): emptying the image, rewriting the backing file
//! reference, check/repair, amend. The work is in `io`, `backing`, `check` and `amend`; this is the entry point
//! the engine reaches through `BlockDriver::format_ops`.

use crate::bitmap::HBits;
use crate::driver::{
    AmendOptions, AmendProgress, AmendResize, BitmapToStore, CheckReport, FormatOps, NewSnapshot,
    Repair, SnapshotInfo, StoredBitmap,
};
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::io::{BufResult, IoBuf};

use super::Qcow2;

impl FormatOps for Qcow2 {
    fn make_empty(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_guest_writable().await?;
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

    fn can_store_new_bitmap(
        &self,
        node: &str,
        name: &str,
        granularity: u64,
        taken: bool,
    ) -> Result<()> {
        if taken {
            return Err(crate::error::Error::generic(format!(
                "Bitmap already exists: {name}"
            )));
        }
        match self.bitmap_problem(name, granularity) {
            Some(why) => Err(crate::error::Error::generic(format!(
                "Can't make bitmap '{name}' persistent in '{node}': {why}"
            ))),
            None => Ok(()),
        }
    }

    fn snapshot_count(&self) -> u32 {
        self.nb_snapshots()
    }

    fn can_snapshot(&self) -> bool {
        true
    }

    fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshot_infos()
    }

    fn snapshot_create(&self, spec: NewSnapshot) -> LocalBoxFuture<'_, Result<SnapshotInfo>> {
        Box::pin(self.create_snapshot(spec))
    }

    fn snapshot_goto(&self, key: &str) -> LocalBoxFuture<'_, Result<()>> {
        let key = key.to_string();
        Box::pin(async move { self.apply_snapshot(&key).await })
    }

    fn snapshot_delete<'a>(
        &'a self,
        id: Option<&'a str>,
        name: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<SnapshotInfo>> {
        Box::pin(self.delete_snapshot(id, name))
    }

    fn has_persistent_bitmaps(&self) -> bool {
        self.layout.autoclear.get() & super::bitmaps::AUTOCLEAR_BITMAPS != 0
    }

    fn bitmaps_read_only(&self) -> bool {
        // Check/repair first: marking or storing allocates through refcounts that may be
        // wrong until the repair ran.
        self.check_mode
    }

    fn stored_bitmaps(&self) -> LocalBoxFuture<'_, Result<Vec<StoredBitmap>>> {
        Box::pin(self.list_bitmaps())
    }

    fn load_bitmap(&self, name: &str) -> LocalBoxFuture<'_, Result<HBits>> {
        let name = name.to_string();
        Box::pin(async move { self.load_stored_bitmap(&name).await })
    }

    fn store_bitmaps<'a>(
        &'a self,
        bitmaps: &'a [BitmapToStore<'a>],
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.store_stored_bitmaps(bitmaps))
    }

    fn check_bitmap_constraints(&self, bitmap: &BitmapToStore<'_>) -> Result<()> {
        self.check_constraints(bitmap)
    }

    fn remove_bitmap(&self, name: &str) -> LocalBoxFuture<'_, Result<bool>> {
        let name = name.to_string();
        Box::pin(async move { self.remove_stored_bitmap(&name).await })
    }

    fn mark_bitmaps_in_use(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.mark_all_bitmaps_in_use())
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

    fn amend<'a>(
        &'a self,
        opts: &'a AmendOptions,
        resize: AmendResize<'a>,
        progress: AmendProgress<'a>,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(Qcow2::amend(self, opts, resize, progress))
    }
}
