//! What qemu-io's `info` prints of a qcow2 image: cluster size, the VM state offset (the
//! guest range one L1 entry past the virtual size, where QEMU keeps VM state), and the
//! format-specific lines in QEMU's order.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::driver::ImageInfo;

use super::{Qcow2, header};

impl Qcow2 {
    pub(super) fn qemu_io_info(&self) -> ImageInfo {
        let on_off = |b: bool| b.to_string();
        let mut specific = vec![
            (
                "compat",
                if self.layout.version.get() >= 3 {
                    "1.1"
                } else {
                    "0.10"
                }
                .to_string(),
            ),
            (
                "compression type",
                if self.layout.compression_type == 1 {
                    "zstd"
                } else {
                    "zlib"
                }
                .to_string(),
            ),
        ];
        if self.layout.version.get() >= 3 {
            specific.push(("lazy refcounts", on_off(self.lazy.get())));
        }
        specific.push((
            "refcount bits",
            (1u32 << self.layout.refcount_order.get()).to_string(),
        ));
        if self.layout.version.get() >= 3 {
            if let Some(name) = &self.data_file_name {
                specific.push(("data file", name.clone()));
                specific.push(("data file raw", on_off(self.data_raw)));
            }
            let corrupt = self.layout.incompat.get() & header::INCOMPAT_CORRUPT != 0;
            specific.push(("corrupt", on_off(corrupt)));
            specific.push(("extended l2", on_off(self.layout.ext_l2)));
        }
        ImageInfo {
            cluster_size: self.layout.cs(),
            vm_state_offset: self.vm_state_offset(),
            specific,
        }
    }
}
