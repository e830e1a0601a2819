//! Onion-transport figures for BENCHMARKS.md: `cargo bench -p onionpost-node --bench onion`.
//! The measuring code lives beside the onion end-to-end test, whose helpers it shares.

#[allow(dead_code, unused_imports)]
#[path = "../tests/onion_e2e.rs"]
mod onion_e2e;

fn main() {
    onion_e2e::onion_figures();
}
