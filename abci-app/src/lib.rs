//! The onionpost ledger: a permissioned BFT ledger of identities, end-to-end key bindings,
//! trust statements and mailing-list membership.
//!
//! Layers, from pure to I/O:
//! - [`execute`]: the deterministic state machine (no I/O): transactions in, writes and events out;
//! - [`genesis`]: the initial state from a genesis file;
//! - [`storage`]: RocksDB with a Jellyfish Merkle tree whose root is the app hash;
//! - [`app`]: the ABCI 2.0 [`tendermint_abci::Application`] tying them together;
//! - [`mempool`]: transactions waiting for a block;
//! - [`grpc`]: the `Ledger` gRPC service with proofs.

pub mod app;
pub mod error;
pub mod execute;
pub mod genesis;
pub mod grpc;
pub mod mempool;
pub mod storage;
pub mod testkit;
pub mod validator;

pub use app::LedgerApp;
pub use error::TxError;
