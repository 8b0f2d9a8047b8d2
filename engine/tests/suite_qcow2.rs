//! Test binary `qcow2`: qcow2 driver: interop with qemu-img, chains, check/repair, compression, crash points, data files, lazy refcounts, overlap checks, preallocation, property tests, robustness, subclusters, fuzz regressions.
//! Each file below was its own test crate; it is a module here (see engine/Cargo.toml).

// Shared helpers, loaded once for the whole binary; test files `use crate::` them.
mod qcow2_support;

#[path = "fuzz_regressions.rs"]
mod fuzz_regressions;
#[path = "qcow2_alloc.rs"]
mod qcow2_alloc;
#[path = "qcow2_amend.rs"]
mod qcow2_amend;
#[path = "qcow2_bitmaps.rs"]
mod qcow2_bitmaps;
#[path = "qcow2_bitmaps_live.rs"]
mod qcow2_bitmaps_live;
#[path = "qcow2_chain.rs"]
mod qcow2_chain;
#[path = "qcow2_check.rs"]
mod qcow2_check;
#[path = "qcow2_compressed.rs"]
mod qcow2_compressed;
#[path = "qcow2_crash.rs"]
mod qcow2_crash;
#[path = "qcow2_datafile.rs"]
mod qcow2_datafile;
#[path = "qcow2_discard.rs"]
mod qcow2_discard;
#[path = "qcow2_encrypt.rs"]
mod qcow2_encrypt;
#[path = "qcow2_interop.rs"]
mod qcow2_interop;
#[path = "qcow2_lazy.rs"]
mod qcow2_lazy;
#[path = "qcow2_open_opts.rs"]
mod qcow2_open_opts;
#[path = "qcow2_overlap.rs"]
mod qcow2_overlap;
#[path = "qcow2_prealloc.rs"]
mod qcow2_prealloc;
#[path = "qcow2_prop.rs"]
mod qcow2_prop;
#[path = "qcow2_robust.rs"]
mod qcow2_robust;
#[path = "qcow2_shrink.rs"]
mod qcow2_shrink;
#[path = "qcow2_snapshots.rs"]
mod qcow2_snapshots;
#[path = "qcow2_subcluster.rs"]
mod qcow2_subcluster;
