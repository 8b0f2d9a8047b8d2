//! The QEMU-compatibility check: every case in `tests/compat/*.txt` runs twice, once with QEMU's
//! real `qemu-img`/`qemu-io` and once with blk reached through symlinks of those names (blk is a
//! multi-call binary, like busybox), each in a fresh directory. Every compared command's stdout,
//! stderr and exit code must match, and afterwards the two directories must hold the same files
//! with the same guest data and allocation (see `files`).
//!
//! Case format (see tests/compat/README.md):
//! ```text
//! ## name                      starts a case
//! > qemu-img create ...        setup, run with the real QEMU tools in both directories
//! $ qemu-io -c 'read 0 4k' x   compared: the real tool, then blk as that tool
//! ! bytes                      files must be byte-identical (default: same data and map)
//! ! known-diff WHY             blk is known to differ here; the case must still differ
//! ```
//! `BLK_COMPAT=substring` runs only the cases whose name contains it.
//! Skipped with a note when QEMU's tools are missing, unless `BLK_REQUIRE_QEMU=1`.

use crate::common;
#[path = "compat/harness.rs"]
mod harness;

use common::have_qemu;

#[test]
fn blk_matches_qemu_on_every_compat_case() {
    if !have_qemu("the QEMU-compatibility check") {
        return;
    }
    let cases = harness::load_cases();
    let filter = std::env::var("BLK_COMPAT").ok();
    if filter.is_none() {
        for tool in ["qemu-img", "qemu-io"] {
            let n = cases.iter().filter(|c| c.tool() == Some(tool)).count();
            assert!(
                n >= 40,
                "{tool}: only {n} compat cases; the check needs at least 40"
            );
        }
    }
    let mut report = harness::Report::default();
    for case in &cases {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        report.add(case, harness::run_case(case));
    }
    eprintln!("{}", report.summary());
    assert!(report.ok(), "{}", report.failures());
}
