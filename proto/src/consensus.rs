//! What validators sign, and checking a commit certificate without trusting anybody.
//!
//! A block is decided when validators holding more than two thirds of the voting power
//! precommit its hash. [`verify_commit`] checks such a certificate against a validator set:
//! every signature over [`vote_sign_bytes`], no validator counted twice, quorum reached, and
//! the block's hash equal to the certified one. Since each block names the app hash of its
//! parent height, a verified certificate for height h+1 certifies the app hash of height h,
//! and with it every proof anchored there.

use ed25519_consensus::{Signature, VerificationKey};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1::{Block, CommitCertificate, ValidatorUpdate};

/// Domain separator of consensus signatures.
pub const VOTE_DOMAIN: &[u8] = b"onionpost/vote/v1";
/// Domain separator of proposal signatures.
pub const PROPOSAL_DOMAIN: &[u8] = b"onionpost/proposal/v1";

/// Prevote or precommit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteKind {
    /// First voting step.
    Prevote = 1,
    /// Second voting step; a quorum of these decides.
    Precommit = 2,
}

/// A validator's address: the first 20 bytes of SHA-256 of its ed25519 public key.
pub fn validator_address(public_key: &[u8; 32]) -> [u8; 20] {
    Sha256::digest(public_key)[..20]
        .try_into()
        .expect("20 bytes")
}

/// SHA-256 of an encoded block: the value validators vote for.
pub fn block_hash(encoded_block: &[u8]) -> [u8; 32] {
    Sha256::digest(encoded_block).into()
}

/// The bytes a validator signs for a vote. `value` is `None` for a vote for nil; `round`
/// is -1 for "no round".
pub fn vote_sign_bytes(
    chain_id: &str,
    kind: VoteKind,
    height: u64,
    round: i64,
    value: Option<&[u8; 32]>,
    address: &[u8; 20],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(VOTE_DOMAIN);
    b.extend_from_slice(&(chain_id.len() as u64).to_be_bytes());
    b.extend_from_slice(chain_id.as_bytes());
    b.push(kind as u8);
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&round.to_be_bytes());
    match value {
        None => b.push(0),
        Some(v) => {
            b.push(1);
            b.extend_from_slice(v);
        }
    }
    b.extend_from_slice(address);
    b
}

/// The bytes a proposer signs for a proposal of `value` (and for the parts that carry it).
pub fn proposal_sign_bytes(
    chain_id: &str,
    height: u64,
    round: i64,
    pol_round: i64,
    value: &[u8; 32],
    address: &[u8; 20],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(PROPOSAL_DOMAIN);
    b.extend_from_slice(&(chain_id.len() as u64).to_be_bytes());
    b.extend_from_slice(chain_id.as_bytes());
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&round.to_be_bytes());
    b.extend_from_slice(&pol_round.to_be_bytes());
    b.extend_from_slice(value);
    b.extend_from_slice(address);
    b
}

/// Why a commit does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The block bytes do not decode.
    #[error("the block does not decode: {0}")]
    Block(String),
    /// The block is not the one certified.
    #[error("the block's hash {got} is not the certified {want}")]
    WrongBlock {
        /// Certified hash (hex).
        want: String,
        /// The block's (hex).
        got: String,
    },
    /// Height mismatch.
    #[error("the certificate is for height {cert}, the block for {block}")]
    Height {
        /// Certificate height.
        cert: u64,
        /// Block height.
        block: u64,
    },
    /// A signer that is not in the validator set, or appears twice.
    #[error("signature {index} is by {address}, which is not a validator or signed twice")]
    Signer {
        /// Index in the certificate.
        index: usize,
        /// Address (hex).
        address: String,
    },
    /// A bad signature.
    #[error("signature {index} (validator {address}) does not verify")]
    Signature {
        /// Index in the certificate.
        index: usize,
        /// Address (hex).
        address: String,
    },
    /// Not enough power.
    #[error(
        "the signatures carry {signed} of {total} voting power; more than two thirds is needed"
    )]
    NoQuorum {
        /// Power that signed.
        signed: u128,
        /// Total power.
        total: u128,
    },
}

/// Verifies that `cert` decides `encoded_block` under `validators` on chain `chain_id`, and
/// returns the decoded block.
pub fn verify_commit(
    chain_id: &str,
    validators: &[ValidatorUpdate],
    encoded_block: &[u8],
    cert: &CommitCertificate,
) -> Result<Block, CommitError> {
    let block = Block::decode(encoded_block).map_err(|e| CommitError::Block(e.to_string()))?;
    let hash = block_hash(encoded_block);
    if cert.block_hash != hash {
        return Err(CommitError::WrongBlock {
            want: hex::encode(&cert.block_hash),
            got: hex::encode(hash),
        });
    }
    if cert.height != block.height {
        return Err(CommitError::Height {
            cert: cert.height,
            block: block.height,
        });
    }
    // Summed in u128: the set may come from a lying server, with powers chosen to overflow.
    let total: u128 = validators.iter().map(|v| u128::from(v.power)).sum();
    let mut signed = 0u128;
    let mut seen: Vec<[u8; 20]> = Vec::new();
    for (index, sig) in cert.signatures.iter().enumerate() {
        let bad_signer = || CommitError::Signer {
            index,
            address: hex::encode(&sig.address),
        };
        let address: [u8; 20] = sig
            .address
            .as_slice()
            .try_into()
            .map_err(|_| bad_signer())?;
        let validator = validators
            .iter()
            .find(|v| {
                <[u8; 32]>::try_from(v.pub_key.as_slice())
                    .is_ok_and(|k| validator_address(&k) == address)
            })
            .ok_or_else(bad_signer)?;
        if seen.contains(&address) {
            return Err(bad_signer());
        }
        seen.push(address);
        let bad_sig = || CommitError::Signature {
            index,
            address: hex::encode(address),
        };
        let key: [u8; 32] = validator
            .pub_key
            .as_slice()
            .try_into()
            .map_err(|_| bad_sig())?;
        let key = VerificationKey::try_from(key).map_err(|_| bad_sig())?;
        let signature: [u8; 64] = sig.signature.as_slice().try_into().map_err(|_| bad_sig())?;
        let msg = vote_sign_bytes(
            chain_id,
            VoteKind::Precommit,
            cert.height,
            cert.round as i64,
            Some(&hash),
            &address,
        );
        key.verify(&Signature::from(signature), &msg)
            .map_err(|_| bad_sig())?;
        signed += u128::from(validator.power);
    }
    if signed * 3 <= total * 2 {
        return Err(CommitError::NoQuorum { signed, total });
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_consensus::SigningKey;

    /// Regression (fuzz target `proof_verify`, input
    /// `fuzz/regressions/proof_verify/crash-7ff051705761614c2440b9a17816a26d6fb16e05`): a set
    /// with a power near `u64::MAX` made the quorum check overflow (a panic with overflow
    /// checks; without them a wrapped comparison).
    #[test]
    fn huge_voting_powers_do_not_overflow_the_quorum_check() {
        let key = SigningKey::from([0x70; 32]);
        let validators = vec![ValidatorUpdate {
            pub_key: key.verification_key().to_bytes().to_vec(),
            power: u64::from_le_bytes([0x0e, 0xff, 0xff, 0xff, 0xff, 0xfc, 0xfc, 0xff]),
        }];
        let cert = CommitCertificate {
            height: 0,
            round: 0,
            block_hash: block_hash(&[]).to_vec(),
            signatures: vec![],
        };
        assert!(matches!(
            verify_commit("fuzz-chain", &validators, &[], &cert),
            Err(CommitError::NoQuorum { signed: 0, .. })
        ));
        // Powers that wrap a u64 sum: one signer with a tiny share is still no quorum, and
        // with all of them signing it is one.
        let keys: Vec<SigningKey> = (0..3).map(|i| SigningKey::from([0x71 + i; 32])).collect();
        let validators: Vec<ValidatorUpdate> = keys
            .iter()
            .zip([u64::MAX, u64::MAX, 2])
            .map(|(k, power)| ValidatorUpdate {
                pub_key: k.verification_key().to_bytes().to_vec(),
                power,
            })
            .collect();
        let block = Block {
            height: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let hash = block_hash(&block);
        let sign = |k: &SigningKey| {
            let address = validator_address(&k.verification_key().to_bytes());
            let msg = vote_sign_bytes("c", VoteKind::Precommit, 3, 0, Some(&hash), &address);
            crate::v1::CommitSignature {
                address: address.to_vec(),
                signature: k.sign(&msg).to_bytes().to_vec(),
            }
        };
        let mut cert = CommitCertificate {
            height: 3,
            round: 0,
            block_hash: hash.to_vec(),
            signatures: vec![sign(&keys[2])],
        };
        assert!(matches!(
            verify_commit("c", &validators, &block, &cert),
            Err(CommitError::NoQuorum { signed: 2, .. })
        ));
        cert.signatures = keys.iter().map(sign).collect();
        assert_eq!(
            verify_commit("c", &validators, &block, &cert)
                .unwrap()
                .height,
            3
        );
    }
}
