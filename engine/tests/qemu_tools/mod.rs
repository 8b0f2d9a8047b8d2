//! Finding QEMU's tools for the interop tests: one rule for every test binary (engine's
//! `qcow2_support` and the CLI's `tests/common` include this file).

use std::process::Command;

/// True when every tool in `tools` runs (`--version`). Otherwise prints a note that `what` is
/// skipped, or panics when `BLK_REQUIRE_QEMU=1` (CI), so a missing tool never passes silently.
pub fn have_tools(tools: &[&str], what: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    if std::env::var("BLK_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{missing} not runnable and BLK_REQUIRE_QEMU=1");
    }
    eprintln!("note: {missing} not found on PATH; skipping {what}");
    false
}

/// [`have_tools`] for qemu-img and qemu-io.
pub fn have_qemu(what: &str) -> bool {
    have_tools(&["qemu-img", "qemu-io"], what)
}
