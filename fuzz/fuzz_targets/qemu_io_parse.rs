//! The qemu-io command parser: every line yields a command or a parse error, never a panic.
#![no_main]

use engine::qemu_io::{parse_command, tokenize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines().take(64) {
        let _ = tokenize(line);
        let _ = parse_command(line);
    }
});
