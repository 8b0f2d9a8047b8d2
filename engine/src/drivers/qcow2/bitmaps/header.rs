//! Switching the header to a new bitmap directory: the bitmaps extension and autoclear bit 0
//! change in one header write (through the backing module's header planner, which keeps the
//! backing file name, its format and every other extension), so a crash leaves either the old
//! directory or the new one in force.

use crate::error::Result;
use crate::io::{IoBuf, ReqFlags};

use super::super::Qcow2;
use super::super::backing::plan_header_rewrite;
use super::super::header::EXT_FEATURE_TABLE;
use super::{AUTOCLEAR_BITMAPS, BitmapExt, EXT_BITMAPS};

impl Qcow2 {
    /// Point the header at the directory `ext` describes (`None`: no bitmaps, the extension
    /// goes and the autoclear bit is cleared). Everything written before is flushed first;
    /// the header is durable when this returns.
    pub(super) async fn write_bitmaps_ext(&self, ext: Option<BitmapExt>) -> Result<()> {
        self.file.flush().await?;
        let (raw, h) = self.read_header_raw().await?;
        let autoclear = match ext {
            Some(_) => h.autoclear | AUTOCLEAR_BITMAPS,
            None => h.autoclear & !AUTOCLEAR_BITMAPS,
        };
        let payload = ext.map(BitmapExt::to_bytes);
        // The feature name table is optional: where cluster 0 has no room for it and the
        // bitmaps extension (512-byte clusters), it goes, as QEMU leaves it out there.
        let edit = |exts: &mut Vec<(u32, Vec<u8>)>, drop_names: bool| {
            exts.retain(|(magic, _)| {
                *magic != EXT_BITMAPS && !(drop_names && *magic == EXT_FEATURE_TABLE)
            });
            if let Some(p) = &payload {
                exts.push((EXT_BITMAPS, p.clone()));
            }
        };
        let (name, fmt) = (h.backing_file.as_deref(), h.backing_fmt.as_deref());
        let writes = plan_header_rewrite(&raw, &h, name, fmt, autoclear, &|e| edit(e, false))
            .or_else(|_| plan_header_rewrite(&raw, &h, name, fmt, autoclear, &|e| edit(e, true)))?;
        for w in writes {
            self.file
                .write(w.offset, IoBuf::from_slice(&w.data), ReqFlags::NONE)
                .await
                .1?;
            self.file.flush().await?;
        }
        self.layout.autoclear.set(autoclear);
        self.bitmap_dir_at
            .set(ext.map_or((0, 0), |e| (e.dir_offset, e.dir_size)));
        Ok(())
    }
}
