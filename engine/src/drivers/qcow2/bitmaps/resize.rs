//! Resizing an image that stores bitmaps: as QEMU does, each consistent bitmap is resized
//! with the disk (bits for a grown tail start clear) and stored again, so that its table keeps
//! covering exactly the new size. The bitmaps are marked in use while the size changes: a
//! crash in between leaves them inconsistent, never a clean bitmap of the wrong size (which
//! QEMU would refuse to open).

use crate::driver::{BitmapToStore, Prealloc};
use crate::error::Result;

use super::super::Qcow2;
use super::AUTOCLEAR_BITMAPS;
use super::table::bit_count;

impl Qcow2 {
    /// `BlockDriver::truncate` of an image that may store bitmaps.
    pub(crate) async fn truncate_with_bitmaps(&self, len: u64, prealloc: Prealloc) -> Result<()> {
        // Without the autoclear bit there are no valid bitmaps: no header read.
        if self.layout.autoclear.get() & AUTOCLEAR_BITMAPS == 0 {
            return self.do_truncate(len, prealloc).await;
        }
        let (_, entries) = self.bitmap_dir().await?;
        let mut kept = Vec::new();
        for e in entries.into_iter().filter(|e| !e.in_use()) {
            let bits = self.load_stored_bitmap(&e.name).await?;
            kept.push((e, bits));
        }
        if kept.is_empty() {
            return self.do_truncate(len, prealloc).await;
        }
        {
            let held = self.meta.lock().await;
            self.mark_in_use(&held).await?;
        }
        self.do_truncate(len, prealloc).await?;
        for (e, bits) in kept.iter_mut() {
            bits.resize(bit_count(len, e.granularity()));
        }
        let set: Vec<BitmapToStore<'_>> = kept
            .iter()
            .map(|(e, bits)| BitmapToStore {
                name: &e.name,
                granularity: e.granularity(),
                enabled: e.auto(),
                bits,
            })
            .collect();
        self.store_stored_bitmaps(&set).await
    }
}
