//! Running the ledger as a validator of a permissioned network.

pub mod config;
