//! The name blk was invoked as, and the message shapes that carry it. Invoked as `blk`, errors
//! say `blk: ...`; through a link named `qemu-img` or `qemu-io` (busybox-style) they say that
//! tool's name, exactly as the tool prints it, so a script's error matching keeps working.

use std::sync::OnceLock;

static NAME: OnceLock<&'static str> = OnceLock::new();

/// Record the tool blk runs as (`blk`, `qemu-img` or `qemu-io`); first call wins.
pub fn set(name: &'static str) {
    let _ = NAME.set(name);
}

/// The program name errors carry.
pub fn name() -> &'static str {
    NAME.get().copied().unwrap_or("blk")
}

/// The QEMU release whose tools blk stands in for (what `--version` claims compatibility with).
const QEMU_LEVEL: &str = "10.0.2";

/// `--version` / `-V`: as the tool blk runs as (the QEMU level first, so scripts that parse it
/// keep working), or blk's own.
pub fn version() -> String {
    let blk = env!("CARGO_PKG_VERSION");
    match name() {
        "blk" => format!("blk version {blk} (drop-in for qemu-img/qemu-io {QEMU_LEVEL})\n"),
        name => format!("{name} version {QEMU_LEVEL} (blk {blk})\n"),
    }
}

/// `PROG: MSG` on stderr.
pub fn error(msg: impl std::fmt::Display) {
    eprintln!("{}: {msg}", name());
}

/// An error of blk's own subcommand `cmd` (e.g. "sim swarm"): `PROG CMD: MSG` on stderr.
pub fn command_error(cmd: &str, msg: impl std::fmt::Display) {
    eprintln!("{} {cmd}: {msg}", name());
}

/// The hint qemu-img prints after a usage error of subcommand `cmd`.
pub fn help_hint(cmd: &str) -> String {
    format!("Try '{} {cmd} --help' for more info", name())
}

/// A usage error of subcommand `cmd`: `PROG: MSG` and the help hint; qemu-img's status 1.
pub fn usage_error(cmd: &str, msg: impl std::fmt::Display) -> i32 {
    eprintln!("{}: {msg}\n{}", name(), help_hint(cmd));
    1
}

/// A getopt error of subcommand `cmd`: glibc prints it as `PROG CMD: MSG`.
pub fn getopt_error(cmd: &str, msg: impl std::fmt::Display) -> i32 {
    eprintln!("{} {cmd}: {msg}\n{}", name(), help_hint(cmd));
    1
}
