//! Verified reads of the onionpost ledger, for the mail node, the command line and
//! auditors.
//!
//! # Trust model
//!
//! A ledger server is never believed; the only thing taken on faith is the chain's
//! `genesis.json`, got out of band (the file every validator started from).
//!
//! - **Roots.** Every answer of the gRPC `Ledger` service carries Merkle proofs against the
//!   app hash of a height. That app hash is accepted only when the block of the next height
//!   names it and that block's commit certificate carries signatures of more than two thirds
//!   of the voting power of the validator set *derived from genesis*: the genesis validators
//!   decide heights 1 and 2, and the set of h+1 is the ledger's `validators` record at h-1,
//!   proven against the app hash of h-1 that block h certifies ([`chain`] is the one place
//!   that does this). The set a server reports beside a certificate is only compared with
//!   the derived one, and a server whose claim differs is caught lying.
//! - **Blocks.** The block sent for height h must be of height h (a replayed older block is
//!   caught), on the genesis chain id, with the certified hash. Voting power is summed with
//!   overflow checks.
//! - **Answers.** An answer must be anchored at the height asked about with the certified
//!   app hash (an answer from a stale height is caught), carry every proof it must (a dropped
//!   proof is caught), and each proof must verify for the very key asked about (a forged or
//!   substituted value, and a forged absence, are caught). Key histories must be complete
//!   and, compared with everything proven before, only ever grow ([`KeyDirectory`]).
//! - **What is not proven.** "No trust path" is a server's word: a server can hide a path,
//!   never invent one. Freshness: [`At::Latest`] is the newest block the servers showed; a
//!   server can withhold newer blocks, never forge them, and with several endpoints the
//!   newest any honest one has is found.
//!
//! # The checkpoint
//!
//! Walking from genesis costs two calls per block, so the walk is kept in a local file
//! ([`Checkpoint`]): the last verified block, the app hash it certifies, the history of
//! derived validator sets (enough to check any earlier block's certificate again), and the
//! key-directory logs. The next process resumes from it and verifies only new blocks. It is
//! the verifier's own record: keep it where only you write. A checkpoint from another
//! genesis is refused.
//!
//! # Several endpoints
//!
//! Calls go to the endpoint that last answered; when one cannot be reached, times out,
//! refuses, or lies, the next is tried, and the error, if all fail, lists what each one did
//! ([`Error::NoVerifiedAnswer`], [`Error::lies`]; [`GrpcLedger::recent_failures`] keeps the
//! lies a fail-over hid). Servers that disagree cannot both pass: every answer is checked
//! against the same certified app hash, so the lying one fails its check and the honest one
//! is used; a server that reports an older latest block than one already verified is stale
//! and skipped. Before a server's blocks extend the chain, its block at the last verified
//! height must be the very block verified. The one disagreement no check resolves, two
//! validly certified blocks (or app hashes) for one height, means more than a third of the
//! validators equivocated: it is reported as [`Error::Fork`], and the call fails.
//!
//! # Use
//!
//! The mail node depends on the [`Ledger`] trait (fake it in unit tests) and wires in
//! [`GrpcLedger`] with [`RootPolicy::Certified`]. Answers are cached by height (the state
//! at a height never changes). `onionpost audit` is [`audit::audit`].

#![deny(missing_docs)]

pub mod audit;
pub mod cache;
pub mod chain;
pub mod checkpoint;
pub mod error;
pub mod genesis;
pub mod grpc;
pub mod keydir;
pub mod ledger;
pub mod validators;
pub mod verify;

/// An identity: its ed25519 public key, which is also its onion address.
pub type IdentityKey = [u8; 32];

pub use chain::{CertifiedRoot, Chain, VerifiedBlock};
pub use checkpoint::Checkpoint;
pub use error::{EndpointFailure, Error, Failure, Lie};
pub use genesis::Genesis;
pub use grpc::{CheckedCommit, Config, GrpcLedger, RootPolicy, TrustedRoot};
pub use keydir::{KeyDirectory, Rewrite};
pub use ledger::{
    At, Basis, Direction, Identity, Ledger, List, Membership, PathLimits, TrustPath, Verified,
};
pub use validators::ValidatorSet;
