//! The VM state area (qemu-io `read -b`/`write -b`, QEMU's savevm/loadvm): guest-offset space
//! right after the virtual disk, from the first L1 entry past it (`vm_state_offset`, what
//! `info` shows), mapped by the same L1/L2 tables and clusters as the disk. Writes there grow
//! the L1 table as QEMU's do (by half again, not to the exact size), so the image comes out as
//! QEMU's; reads of what was never written return zeroes.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{BufResult, IoBuf};

use super::Qcow2;

impl Qcow2 {
    /// Guest offset where the VM state area begins.
    pub(super) fn vm_state_offset(&self) -> u64 {
        let per_l1_entry = self.layout.cs() * self.layout.l2_entries();
        self.layout.size.get().div_ceil(per_l1_entry) * per_l1_entry
    }

    /// Write `buf` at `pos` of the VM state area.
    pub(super) async fn save_vmstate(&self, pos: u64, buf: IoBuf) -> BufResult {
        if let Err(e) = self.check_writable().await {
            return (buf, Err(e));
        }
        self.file.debug_event(DebugEvent::VmstateSave).await;
        let offset = self.vm_state_offset().saturating_add(pos);
        let end = offset.saturating_add(buf.len() as u64);
        if let Err(e) = self.grow_l1_to_cover(end).await {
            return (buf, Err(e));
        }
        self.do_write(offset, buf).await
    }

    /// Read `[pos, pos + buf.len())` of the VM state area into `buf`.
    pub(super) async fn load_vmstate(&self, pos: u64, buf: IoBuf) -> BufResult {
        self.file.debug_event(DebugEvent::VmstateLoad).await;
        let offset = self.vm_state_offset().saturating_add(pos);
        self.do_read(offset, buf).await
    }

    /// Make the L1 table cover guest offsets below `end`, growing it QEMU's way: half again
    /// (rounded up) until it is large enough.
    async fn grow_l1_to_cover(&self, end: u64) -> Result<()> {
        let per_l1_entry = self.layout.cs() * self.layout.l2_entries();
        let need = end.div_ceil(per_l1_entry);
        let held = &self.meta.lock().await;
        let have = self.l2.l1_len() as u64;
        if need <= have {
            return Ok(());
        }
        let mut entries = have;
        while entries < need {
            entries = (entries * 3).div_ceil(2);
        }
        if entries > u32::MAX as u64 {
            return Err(Error::io(Errno::EFBIG));
        }
        self.grow_l1(held, entries).await
    }
}
