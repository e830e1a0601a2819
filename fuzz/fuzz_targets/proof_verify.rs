//! Fuzz target: see `onionpost_fuzz::proof_verify` (fuzz/src/proof_verify.rs) for the input format and the
//! properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onionpost_fuzz::proof_verify::run(data));
