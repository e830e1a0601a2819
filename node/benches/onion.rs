//! Onion-transport figures for BENCHMARKS.md: `cargo bench -p onionpost-node --bench onion`.
//! The measuring code lives beside the onion end-to-end test, whose helpers it shares.

#[allow(dead_code, unused_imports)]
#[path = "../tests/onion_e2e.rs"]
mod onion_e2e;

fn main() {
    // ONIONPOST_BENCH=lists: only the list figures (a post to 8 members over onion services).
    match std::env::var("ONIONPOST_BENCH").as_deref() {
        Ok("lists") => onion_e2e::onion_list_figures(),
        _ => onion_e2e::onion_figures(),
    }
}
