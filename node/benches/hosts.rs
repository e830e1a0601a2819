//! Mailbox-host figures for BENCHMARKS.md: `cargo bench --workspace --features
//! onionpost-devnet/compose-tests --bench hosts` (`ONIONPOST_HELD=100` by default). The
//! measuring code lives beside the hosts' end-to-end tests, whose helpers it shares.

#[allow(dead_code, unused_imports)]
#[path = "../tests/hosts.rs"]
mod hosts;

fn main() {
    hosts::collection_figures();
}
