//! Verifying ledger answers against a trusted app hash.
//!
//! Every read of the gRPC `Ledger` service returns [`ProvenValue`]s: a state key, its value
//! or its absence, and a Jellyfish Merkle proof against the tree root at the answer's height.
//! A client that knows the root from a source it trusts (its own validator, or a commit
//! certificate signed by a quorum of validators) checks the answer here without trusting the
//! server that sent it: a tampered value, a wrong key or a forged absence all fail.

use jmt::{KeyHash, RootHash, proof::SparseMerkleProof};
use prost::Message;
use sha2::Sha256;

use crate::v1::ProvenValue;

/// Why an answer failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The answer is about another key than the one asked for.
    #[error("the proof is for key {got:?}, not for the key asked about ({want:?})")]
    WrongKey {
        /// The key asked about (lossy UTF-8).
        want: String,
        /// The key the answer carries (lossy UTF-8).
        got: String,
    },
    /// The proof bytes do not decode.
    #[error("the proof is not a valid borsh-encoded Jellyfish Merkle proof: {0}")]
    Malformed(String),
    /// The proof does not lead to the trusted root.
    #[error("the proof does not verify against the trusted root: {0}")]
    Invalid(String),
    /// The proven value does not decode as the expected record.
    #[error("the proven value is not a valid {record}: {error}")]
    Record {
        /// The record type expected.
        record: &'static str,
        /// The decoding error.
        error: String,
    },
    /// A root of the wrong length.
    #[error("a root hash has 32 bytes, this one {0}")]
    RootLength(usize),
}

/// The tree key hash of a state key.
pub fn key_hash(key: &[u8]) -> KeyHash {
    KeyHash::with::<Sha256>(key)
}

/// Converts a root from its wire form.
pub fn root_from_bytes(root: &[u8]) -> Result<[u8; 32], ProofError> {
    root.try_into()
        .map_err(|_| ProofError::RootLength(root.len()))
}

/// Verifies that `answer` proves the value (or absence) of `expected_key` under `root`.
/// Returns the proven value, `None` for a proven absence.
pub fn verify<'a>(
    root: &[u8; 32],
    expected_key: &[u8],
    answer: &'a ProvenValue,
) -> Result<Option<&'a [u8]>, ProofError> {
    if answer.key != expected_key {
        return Err(ProofError::WrongKey {
            want: String::from_utf8_lossy(expected_key).into_owned(),
            got: String::from_utf8_lossy(&answer.key).into_owned(),
        });
    }
    let proof: SparseMerkleProof<Sha256> =
        borsh::from_slice(&answer.proof).map_err(|e| ProofError::Malformed(e.to_string()))?;
    let value = answer.present.then_some(answer.value.as_slice());
    proof
        .verify(RootHash(*root), key_hash(expected_key), value)
        .map_err(|e| ProofError::Invalid(e.to_string()))?;
    Ok(value)
}

/// [`verify`], then decodes the proven value as protobuf record `M`.
pub fn verify_record<M: Message + Default>(
    root: &[u8; 32],
    expected_key: &[u8],
    answer: &ProvenValue,
) -> Result<Option<M>, ProofError> {
    verify(root, expected_key, answer)?
        .map(|bytes| {
            M::decode(bytes).map_err(|e| ProofError::Record {
                record: std::any::type_name::<M>(),
                error: e.to_string(),
            })
        })
        .transpose()
}

/// Encodes a proof for the wire (used by the ledger's query service).
pub fn encode_proof(proof: &SparseMerkleProof<Sha256>) -> Vec<u8> {
    borsh::to_vec(proof).expect("serialising a proof into a Vec cannot fail")
}
