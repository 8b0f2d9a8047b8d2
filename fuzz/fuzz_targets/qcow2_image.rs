//! A whole qcow2 image from arbitrary bytes, on the simulator's virtual disk: opened
//! read-only (block status walk, reads, check) and read-write (writes, repair, re-check), so
//! the L1/L2 tables, refcounts, snapshot table and bitmap directory are parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blk_fuzz::exercise::exercise_image(data);
});
