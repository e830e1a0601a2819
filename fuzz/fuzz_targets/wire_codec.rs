//! Fuzz target: see `onionpost_fuzz::wire_codec` (fuzz/src/wire_codec.rs) for the input format and the
//! properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onionpost_fuzz::wire_codec::run(data));
