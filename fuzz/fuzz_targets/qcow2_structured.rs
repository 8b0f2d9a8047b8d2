//! Structure-aware qcow2: a valid image built from `arbitrary` input (which must open, read
//! back and check clean), then chosen fields corrupted and the result exercised like any image.
#![no_main]

use blk_fuzz::build::{ImageSpec, build};
use blk_fuzz::harness::DATA_FILE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: ImageSpec| {
    if let Some((img, data)) = build(&spec) {
        blk_fuzz::exercise::exercise_image_with(&img, &[(DATA_FILE, &data)]);
    }
});
