//! Fuzz target: see `onionpost_fuzz::tx_execute` (fuzz/src/tx_execute.rs) for the input format and the
//! properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onionpost_fuzz::tx_execute::run(data));
