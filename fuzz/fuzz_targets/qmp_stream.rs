//! The QMP monitor's byte-stream cutter and JSON dialect: any bytes, split anywhere, give
//! messages or parse errors, never a panic; a message split at a different point is the same
//! message, and what the monitor writes parses back to the same value.
#![no_main]

use engine::qmp::monitor::json::{parse, to_wire};
use engine::qmp::monitor::stream::JsonStream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = JsonStream::new().feed(data);
    let cut = (split as usize).min(data.len());
    let mut s = JsonStream::new();
    let mut parts = s.feed(&data[..cut]);
    parts.extend(s.feed(&data[cut..]));
    assert_eq!(whole, parts, "the split point changed the messages");
    for v in whole.into_iter().flatten() {
        assert_eq!(parse(to_wire(&v).as_bytes()).as_ref(), Ok(&v));
    }
});
