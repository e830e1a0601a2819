//! Mailing-list figures for BENCHMARKS.md: `cargo bench -p onionpost-node --bench lists`
//! (`ONIONPOST_LIST_MEMBERS=50` by default). The measuring code lives beside the lists'
//! end-to-end tests, whose helpers it shares.

#[allow(dead_code, unused_imports)]
#[path = "../tests/lists.rs"]
mod lists;

fn main() {
    lists::list_figures();
}
