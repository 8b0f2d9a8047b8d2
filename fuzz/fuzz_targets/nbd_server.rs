//! The NBD server's negotiation and request parsing against an arbitrary client stream (see
//! `blk_fuzz::nbd`): no panic, no hang, and a well-behaved client is served afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blk_fuzz::nbd::session(data);
});
