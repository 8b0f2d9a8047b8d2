//! Structure-aware qcow2: a valid image built from `arbitrary` input (which must open, read
//! back and check clean), then chosen fields corrupted and the result exercised like any image.
#![no_main]

use blk_fuzz::build::{ImageSpec, build};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: ImageSpec| {
    if let Some(img) = build(&spec) {
        blk_fuzz::exercise::exercise_image(&img);
    }
});
