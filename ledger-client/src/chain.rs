//! The chain of certified blocks from genesis, and the validator sets derived along it.
//! This is the one place that knows how the validator set of a height is found.
//!
//! - Heights 1 and 2 are decided by the genesis validators.
//! - The set that decides height h+1 (h >= 2) is the ledger's `validators` record at height
//!   h-1, proven against the app hash of h-1, which block h certifies in its `last_app_hash`
//!   (the engine applies a validator update made at height h-1 from height h+1 on).
//!
//! [`Chain`] is a pure state machine: the caller fetches block h+1 and the `validators`
//! record at h-1 from wherever it likes; [`Chain::verify_block`] and [`Chain::advance`]
//! check them and extend the chain. Nothing a server says is believed: the block must be
//! the one asked for, on this chain, certified by more than two thirds of the derived set's
//! power; the record must be proven against the certified app hash. The sets derived so far
//! are kept as a history of changes, so the certificate of any earlier block (hence the app
//! hash of any earlier height) can be checked later without walking again.

use onionpost_proto::consensus::{block_hash, verify_commit};
use onionpost_proto::keys;
use onionpost_proto::proof::verify_record;
use onionpost_proto::v1::{self as pb, CommitAnswer, ValidatorSetAnswer};

use crate::error::Lie;
use crate::genesis::Genesis;
use crate::validators::{SetError, ValidatorSet};

/// An app hash certified by the commit certificate of the next block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertifiedRoot {
    /// The height whose app hash it is.
    pub height: u64,
    /// The app hash.
    pub root: [u8; 32],
}

/// A block whose certificate verified against the derived validator set.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedBlock {
    /// Its height.
    pub height: u64,
    /// Its time (Unix seconds).
    pub time: u64,
    /// SHA-256 of the encoded block.
    pub hash: [u8; 32],
    /// The app hash of the height before it, which it certifies.
    pub certifies: CertifiedRoot,
    /// Its transactions (encoded `SignedTx`s).
    pub txs: Vec<Vec<u8>>,
}

/// Why the chain cannot be extended by what was fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The server lied.
    #[error(transparent)]
    Lie(#[from] Lie),
    /// The certified `validators` record at `height` cannot be used as a validator set.
    #[error("the validator set certified at height {height} is unusable: {source}")]
    Unusable {
        /// The height of the record.
        height: u64,
        /// Why.
        source: SetError,
    },
}

/// The verified chain: the last verified block, the app hash it certifies, and the
/// validator sets derived up to the next height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    chain_id: String,
    genesis: [u8; 32],
    height: u64,
    time: u64,
    /// SHA-256 of the last verified block (zero before the first).
    hash: [u8; 32],
    root: Option<CertifiedRoot>,
    /// `(first height, set)`, ascending; each set decides from its first height until the
    /// next entry's. Covers every height up to `height + 1`.
    sets: Vec<(u64, ValidatorSet)>,
}

impl Chain {
    /// The chain before its first block.
    pub fn from_genesis(genesis: &Genesis) -> Self {
        Self {
            chain_id: genesis.chain_id.clone(),
            genesis: genesis.fingerprint(),
            height: 0,
            time: 0,
            hash: [0; 32],
            root: None,
            sets: vec![(1, genesis.validators.clone())],
        }
    }

    /// Rebuilds a chain from its parts (a checkpoint). The parts are checked for internal
    /// consistency; their truth is the checkpoint writer's.
    pub(crate) fn from_parts(
        chain_id: String,
        genesis: [u8; 32],
        height: u64,
        time: u64,
        hash: [u8; 32],
        root: Option<CertifiedRoot>,
        sets: Vec<(u64, ValidatorSet)>,
    ) -> Result<Self, String> {
        if sets.first().is_none_or(|(h, _)| *h != 1) {
            return Err("the validator set history does not start at height 1".into());
        }
        if sets.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("the validator set history is not in height order".into());
        }
        if sets.last().is_some_and(|(h, _)| *h > height + 1) {
            return Err("the validator set history goes beyond the next height".into());
        }
        if (height == 0) != root.is_none() || root.is_some_and(|r| r.height + 1 != height) {
            return Err(format!(
                "the certified app hash does not belong to block {height}"
            ));
        }
        Ok(Self {
            chain_id,
            genesis,
            height,
            time,
            hash,
            root,
            sets,
        })
    }

    /// The chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The fingerprint of the genesis this chain starts from.
    pub fn genesis_fingerprint(&self) -> [u8; 32] {
        self.genesis
    }

    /// The last verified block (0 before the first).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The last verified block's time.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// SHA-256 of the last verified block (zero before the first).
    pub fn block_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The latest certified app hash (of height `height() - 1`).
    pub fn latest_root(&self) -> Option<CertifiedRoot> {
        self.root
    }

    /// The validator set that decides `height`, if derived already (heights up to
    /// `height() + 1`).
    pub fn set_for(&self, height: u64) -> Option<&ValidatorSet> {
        if height == 0 || height > self.height + 1 {
            return None;
        }
        self.sets
            .iter()
            .rev()
            .find(|(from, _)| *from <= height)
            .map(|(_, s)| s)
    }

    /// Every derived set with the first height it decides.
    pub fn set_history(&self) -> &[(u64, ValidatorSet)] {
        &self.sets
    }

    /// The height of the `validators` record needed to extend the chain by block `h`:
    /// `h - 1` from block 2 on (the set of h+1), none for block 1 (the set of 2 is genesis).
    pub fn record_needed(h: u64) -> Option<u64> {
        (h >= 2).then(|| h - 1)
    }

    /// Checks that `commit` is block `h` of this chain, certified by the validator set that
    /// decides `h`, and that the set the server claims beside it is that set. Works for any
    /// `h` up to `height() + 1`, so earlier heights can be certified again from the set
    /// history.
    pub fn verify_block(&self, h: u64, commit: &CommitAnswer) -> Result<VerifiedBlock, Lie> {
        let set = self.set_for(h).ok_or_else(|| {
            Lie::Malformed(format!(
                "block {h} is beyond the derived validator sets (up to {})",
                self.height + 1
            ))
        })?;
        if commit.chain_id != self.chain_id {
            return Err(Lie::WrongChain {
                expected: self.chain_id.clone(),
                got: commit.chain_id.clone(),
            });
        }
        let claimed_ok = commit.validators.is_empty() || set.matches(&commit.validators);
        let swapped = |certificate| Lie::SwappedValidatorSet {
            height: h,
            derived: set.len(),
            claimed: commit.validators.len(),
            certificate,
        };
        match verify_block_with(&self.chain_id, h, set, commit) {
            Ok(b) if claimed_ok => Ok(b),
            Ok(_) => Err(swapped(None)),
            Err(Lie::ForgedCertificate { source, .. }) if !claimed_ok => Err(swapped(Some(source))),
            Err(e) => Err(e),
        }
    }

    /// Extends the chain by `block` (verified by [`Chain::verify_block`] for height
    /// `height() + 1`) and, from block 2 on, the `validators` record at `block.height - 1`,
    /// which must be proven against the app hash the block certifies. Returns the new set
    /// and its first height if the set changed.
    pub fn advance(
        &mut self,
        block: VerifiedBlock,
        record: Option<&ValidatorSetAnswer>,
    ) -> Result<Option<(u64, &ValidatorSet)>, StepError> {
        let h = block.height;
        assert_eq!(h, self.height + 1, "blocks are added in order");
        let next = match Self::record_needed(h) {
            None => None,
            Some(rh) => {
                let record = record.ok_or_else(|| {
                    Lie::Malformed(format!("no validator set record for height {rh}"))
                })?;
                Some(self.derive_set(rh, &block.certifies, record)?)
            }
        };
        self.height = h;
        self.time = block.time;
        self.hash = block.hash;
        self.root = Some(block.certifies);
        match next {
            Some(set) if set != self.sets.last().expect("never empty").1 => {
                self.sets.push((h + 1, set));
                let (from, set) = self.sets.last().expect("just pushed");
                Ok(Some((*from, set)))
            }
            _ => Ok(None),
        }
    }

    fn derive_set(
        &self,
        rh: u64,
        certified: &CertifiedRoot,
        ans: &ValidatorSetAnswer,
    ) -> Result<ValidatorSet, StepError> {
        debug_assert_eq!(certified.height, rh);
        let anchor = ans
            .anchor
            .as_ref()
            .ok_or_else(|| Lie::Malformed("a validator set answer without an anchor".into()))?;
        if anchor.height != rh {
            return Err(Lie::StaleHeight {
                asked: rh,
                answered: anchor.height,
            }
            .into());
        }
        let what = || "the validator set".to_owned();
        let pv = ans.validators.as_ref().ok_or_else(|| Lie::DroppedProof {
            what: what(),
            height: rh,
        })?;
        let record: Option<pb::ValidatorSet> =
            verify_record(&certified.root, &keys::validators(), pv).map_err(|source| {
                Lie::ForgedProof {
                    what: what(),
                    height: rh,
                    source,
                }
            })?;
        let record = record.ok_or(StepError::Unusable {
            height: rh,
            source: SetError::Empty,
        })?;
        ValidatorSet::from_record(&record)
            .map_err(|source| StepError::Unusable { height: rh, source })
    }
}

/// Checks that `commit` is block `h` of chain `chain_id`, certified by more than two thirds
/// of the voting power of `set`: the certificate is for height `h` (an older certified block
/// replayed is caught here), the block is the certified one and is of height `h`.
pub fn verify_block_with(
    chain_id: &str,
    h: u64,
    set: &ValidatorSet,
    commit: &CommitAnswer,
) -> Result<VerifiedBlock, Lie> {
    if h == 0 {
        return Err(Lie::Malformed("there is no block 0".into()));
    }
    if commit.chain_id != chain_id {
        return Err(Lie::WrongChain {
            expected: chain_id.to_owned(),
            got: commit.chain_id.clone(),
        });
    }
    let cert = commit
        .certificate
        .as_ref()
        .ok_or_else(|| Lie::Malformed(format!("the commit of block {h} has no certificate")))?;
    if cert.height != h {
        return Err(Lie::ReplayedBlock {
            asked: h,
            got: cert.height,
        });
    }
    let block = verify_commit(chain_id, set.as_updates(), &commit.block, cert)
        .map_err(|source| Lie::ForgedCertificate { height: h, source })?;
    if block.height != h {
        return Err(Lie::ReplayedBlock {
            asked: h,
            got: block.height,
        });
    }
    let root: [u8; 32] = block.last_app_hash.as_slice().try_into().map_err(|_| {
        Lie::Malformed(format!(
            "block {h} names an app hash of {} bytes",
            block.last_app_hash.len()
        ))
    })?;
    Ok(VerifiedBlock {
        height: h,
        time: block.time,
        hash: block_hash(&commit.block),
        certifies: CertifiedRoot {
            height: h - 1,
            root,
        },
        txs: block.txs,
    })
}

#[cfg(test)]
mod tests {
    use ed25519_consensus::SigningKey;
    use onionpost_proto::consensus::{VoteKind, validator_address, vote_sign_bytes};
    use prost::Message;

    use super::*;

    fn keys() -> Vec<SigningKey> {
        (1..=4u8).map(|i| SigningKey::from([i; 32])).collect()
    }

    fn genesis(keys: &[SigningKey]) -> Genesis {
        Genesis {
            chain_id: "c".into(),
            genesis_time: 0,
            validators: ValidatorSet::new(
                keys.iter().map(|k| (k.verification_key().to_bytes(), 10)),
            )
            .unwrap(),
            identities: vec![],
        }
    }

    /// Block `h` signed by `signers`, with the set `claimed` reported beside it.
    fn commit(h: u64, signers: &[SigningKey], claimed: &[SigningKey]) -> CommitAnswer {
        let block = pb::Block {
            height: h,
            time: 100 + h,
            proposer: vec![],
            last_app_hash: vec![h as u8; 32],
            txs: vec![],
        }
        .encode_to_vec();
        let hash = block_hash(&block);
        let signatures = signers
            .iter()
            .map(|k| {
                let address = validator_address(&k.verification_key().to_bytes());
                let msg = vote_sign_bytes("c", VoteKind::Precommit, h, 0, Some(&hash), &address);
                pb::CommitSignature {
                    address: address.to_vec(),
                    signature: k.sign(&msg).to_bytes().to_vec(),
                }
            })
            .collect();
        CommitAnswer {
            chain_id: "c".into(),
            block,
            certificate: Some(pb::CommitCertificate {
                height: h,
                round: 0,
                block_hash: hash.to_vec(),
                signatures,
            }),
            validators: claimed
                .iter()
                .map(|k| pb::ValidatorUpdate {
                    pub_key: k.verification_key().to_bytes().to_vec(),
                    power: 10,
                })
                .collect(),
        }
    }

    #[test]
    fn a_block_certified_by_the_genesis_set_extends_the_chain() {
        let k = keys();
        let mut chain = Chain::from_genesis(&genesis(&k));
        let b = chain.verify_block(1, &commit(1, &k[..3], &k)).unwrap();
        assert_eq!(
            b.certifies,
            CertifiedRoot {
                height: 0,
                root: [1; 32]
            }
        );
        assert_eq!(chain.advance(b.clone(), None), Ok(None));
        assert_eq!(chain.height(), 1);
        assert_eq!(chain.block_hash(), b.hash);
        assert_eq!(chain.latest_root(), Some(b.certifies));
        assert_eq!(chain.set_for(2).unwrap().len(), 4);
        assert!(chain.set_for(3).is_none(), "not derived yet");
        // From block 2 on, the validators record is required.
        let b2 = chain.verify_block(2, &commit(2, &k, &k)).unwrap();
        let err = chain.clone().advance(b2, None).unwrap_err();
        assert!(err.to_string().contains("no validator set record"), "{err}");
    }

    #[test]
    fn every_lie_about_a_block_is_named() {
        let k = keys();
        let chain = Chain::from_genesis(&genesis(&k));
        let lie = |c: &CommitAnswer| chain.verify_block(1, c).unwrap_err();

        // An older (or any other) certified block sent for height 1.
        let mut replayed = commit(1, &k, &k);
        replayed.certificate.as_mut().unwrap().height = 7;
        assert_eq!(lie(&replayed), Lie::ReplayedBlock { asked: 1, got: 7 });
        let other = Chain::from_genesis(&genesis(&k));
        let mut far = other.clone();
        far.height = 4;
        let old = commit(2, &k, &k);
        assert_eq!(
            far.verify_block(3, &old).unwrap_err(),
            Lie::ReplayedBlock { asked: 3, got: 2 }
        );

        // Two of four signatures carry 20 of 40: no quorum.
        assert!(matches!(
            lie(&commit(1, &k[..2], &k)),
            Lie::ForgedCertificate {
                height: 1,
                source: onionpost_proto::consensus::CommitError::NoQuorum {
                    signed: 20,
                    total: 40
                }
            }
        ));

        // A set of the server's own, which signed: the derived set is not it.
        let fake: Vec<SigningKey> = (9..=12u8).map(|i| SigningKey::from([i; 32])).collect();
        let swapped = lie(&commit(1, &fake, &fake));
        assert!(matches!(
            swapped,
            Lie::SwappedValidatorSet {
                height: 1,
                derived: 4,
                claimed: 4,
                certificate: Some(_)
            }
        ));
        assert!(
            swapped.to_string().starts_with("swapped validator set"),
            "{swapped}"
        );
        // A true certificate beside a false claim is a lie too.
        assert!(matches!(
            lie(&commit(1, &k, &fake)),
            Lie::SwappedValidatorSet {
                certificate: None,
                ..
            }
        ));

        let mut wrong_chain = commit(1, &k, &k);
        wrong_chain.chain_id = "d".into();
        assert!(matches!(lie(&wrong_chain), Lie::WrongChain { .. }));
        let mut tampered = commit(1, &k, &k);
        tampered.block[0] ^= 1;
        assert!(matches!(lie(&tampered), Lie::ForgedCertificate { .. }));
    }

    #[test]
    fn parts_must_be_consistent() {
        let k = keys();
        let g = genesis(&k);
        let set = || vec![(1, g.validators.clone())];
        assert!(Chain::from_parts("c".into(), [0; 32], 0, 0, [0; 32], None, set()).is_ok());
        let root = Some(CertifiedRoot {
            height: 4,
            root: [0; 32],
        });
        assert!(Chain::from_parts("c".into(), [0; 32], 5, 0, [0; 32], root, set()).is_ok());
        assert!(Chain::from_parts("c".into(), [0; 32], 6, 0, [0; 32], root, set()).is_err());
        assert!(Chain::from_parts("c".into(), [0; 32], 5, 0, [0; 32], root, vec![]).is_err());
        let beyond = vec![(1, g.validators.clone()), (9, g.validators.clone())];
        assert!(Chain::from_parts("c".into(), [0; 32], 5, 0, [0; 32], root, beyond).is_err());
    }
}
