//! Fuzz target: see `onionpost_node_fuzz::smtp_session` (fuzz/node/src/smtp_session.rs) for the input format and
//! the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onionpost_node_fuzz::smtp_session::run(data));
