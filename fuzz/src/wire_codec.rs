//! The validators' wire codec ([`onionpost_ledger::validator::wire`]): every type a peer can
//! send (consensus messages, liveness messages, proposal-part streams, validator proofs, sync
//! status, requests and responses) and every type the write-ahead log stores.
//!
//! Input: one selector byte (which type), then the bytes to decode. Properties checked: no
//! panic, no unbounded allocation (libFuzzer's `-rss_limit_mb` and `-malloc_limit_mb` catch
//! one), and the encoding is canonical: whatever decodes re-encodes to exactly the bytes it
//! came from, so one message has one encoding.

use malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use malachitebft_app_channel::app::streaming::StreamMessage;
use malachitebft_core_types::{CommitCertificate, PolkaCertificate, ValidatorProof};
use malachitebft_sync::{Request, Response, Status};
use onionpost_ledger::validator::types::{LedgerContext, ProposalPart};
use onionpost_ledger::validator::wire::{Wire, decode, encode};

/// How many types the selector byte chooses from.
pub const TYPES: u8 = 11;

fn check<T: Wire>(bytes: &[u8]) {
    if let Ok(v) = decode::<T>(bytes) {
        assert_eq!(
            encode(&v),
            bytes,
            "{} does not re-encode to its own bytes",
            std::any::type_name::<T>()
        );
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    type C = LedgerContext;
    match selector % TYPES {
        0 => check::<SignedConsensusMsg<C>>(bytes),
        1 => check::<LivenessMsg<C>>(bytes),
        2 => check::<StreamMessage<ProposalPart>>(bytes),
        3 => check::<ProposalPart>(bytes),
        4 => check::<ValidatorProof<C>>(bytes),
        5 => check::<Status<C>>(bytes),
        6 => check::<Request<C>>(bytes),
        7 => check::<Response<C>>(bytes),
        8 => check::<ProposedValue<C>>(bytes),
        9 => check::<PolkaCertificate<C>>(bytes),
        _ => check::<CommitCertificate<C>>(bytes),
    }
}
