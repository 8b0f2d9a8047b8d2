//! The scenario-file parser: any text yields a scenario or a `ParseError` naming a line of the
//! file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match sim::scenario::parse("fuzz.scn", &text) {
        Ok(sc) => assert!(!sc.purpose.is_empty()),
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(
                e.file == "fuzz.scn" && e.line >= 1 && e.line <= lines + 1 && !e.message.is_empty(),
                "error without a usable location: {e} ({lines} lines)"
            );
        }
    }
});
