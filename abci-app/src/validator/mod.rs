//! Running the ledger as a validator of a permissioned network, driven by the Malachite
//! implementation of Tendermint.
//!
//! - [`config`]: the files in a validator's home;
//! - [`types`]: the consensus context (heights, votes, proposals, validator sets);
//! - [`signing`]: ed25519 signing and verification;
//! - [`wire`]: the network and WAL encoding;
//! - [`reassembly`]: bounded reassembly of streamed proposals;
//! - [`store`]: proposals and decided blocks with their commit certificates;
//! - [`host`]: the engine's requests mapped onto the ABCI application;
//! - [`node`]: starting it all in one process.

pub mod config;
pub mod host;
pub mod node;
pub mod reassembly;
pub mod signing;
pub mod store;
pub mod types;
pub mod wire;
