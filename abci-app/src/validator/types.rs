//! The ledger's Malachite [`Context`](mt::Context): heights, addresses, values, validators,
//! proposals, proposal parts and votes.
//!
//! The consensus value is the 32-byte hash of an encoded [`Block`](onionpost_proto::v1::Block);
//! the block itself travels in proposal parts. What is signed is defined in
//! [`onionpost_proto::consensus`], so clients check certificates without this crate.

use std::fmt;

use bytes::Bytes;
use malachitebft_core_types::{
    self as mt, NilOrVal, Round, SignedExtension, VoteType, VotingPower,
};
use malachitebft_signing_ed25519::{Ed25519, PublicKey, Signature};
use onionpost_proto::consensus::{
    VoteKind, proposal_sign_bytes, validator_address, vote_sign_bytes,
};

/// A block height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl mt::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);
    fn increment_by(&self, n: u64) -> Self {
        Height(self.0 + n)
    }
    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }
    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: the first 20 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub [u8; 20]);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl mt::Address for Address {}

/// The hash of an encoded block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

/// The consensus value: a block, named by its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Value(pub BlockHash);

impl mt::Value for Value {
    type Id = BlockHash;
    fn id(&self) -> BlockHash {
        self.0
    }
}

/// A validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// Its address.
    pub address: Address,
    /// Its key.
    pub public_key: PublicKey,
    /// Its power.
    pub voting_power: VotingPower,
}

impl Validator {
    /// A validator from its key and power; `None` if the key is not an ed25519 point.
    pub fn new(key: [u8; 32], power: u64) -> Option<Self> {
        Some(Self {
            address: Address(validator_address(&key)),
            public_key: PublicKey::from_bytes(key).ok()?,
            voting_power: power,
        })
    }
}

impl mt::Validator<LedgerContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }
    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }
    fn voting_power(&self) -> VotingPower {
        self.voting_power
    }
}

/// A validator set, sorted by address (proposer selection walks it in this order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    /// The validators.
    pub validators: Vec<Validator>,
}

impl ValidatorSet {
    /// A set from its members, in canonical order.
    pub fn new(mut validators: Vec<Validator>) -> Self {
        validators.sort_by_key(|v| v.address);
        Self { validators }
    }
}

impl mt::ValidatorSet<LedgerContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }
    fn total_voting_power(&self) -> VotingPower {
        self.validators.iter().map(|v| v.voting_power).sum()
    }
    fn get_by_address(&self, a: &Address) -> Option<&Validator> {
        self.validators.iter().find(|v| &v.address == a)
    }
    fn get_by_index(&self, i: usize) -> Option<&Validator> {
        self.validators.get(i)
    }
}

/// A proposal of a value at (height, round).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Height.
    pub height: Height,
    /// Round.
    pub round: Round,
    /// The block hash.
    pub value: Value,
    /// Proof-of-lock round.
    pub pol_round: Round,
    /// Proposer.
    pub proposer: Address,
}

impl mt::Proposal<LedgerContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &Value {
        &self.value
    }
    fn take_value(self) -> Value {
        self.value
    }
    fn pol_round(&self) -> Round {
        self.pol_round
    }
    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// A piece of a streamed proposal: `Init`, one or more `Data` chunks of the encoded block,
/// then `Fin` with the proposer's signature over the block hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalPart {
    /// Starts the stream.
    Init {
        /// Height.
        height: Height,
        /// The round the block was first proposed in.
        round: Round,
        /// Proof-of-lock round.
        pol_round: Round,
        /// Who built the block.
        proposer: Address,
    },
    /// A chunk of the encoded block.
    Data(Bytes),
    /// Ends the stream: the proposer's signature over
    /// `proposal_sign_bytes(height, round, pol_round, block hash, proposer)`.
    Fin(Signature),
}

impl mt::ProposalPart<LedgerContext> for ProposalPart {
    fn is_first(&self) -> bool {
        matches!(self, Self::Init { .. })
    }
    fn is_last(&self) -> bool {
        matches!(self, Self::Fin(_))
    }
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    /// Prevote or precommit.
    pub vote_type: VoteType,
    /// Height.
    pub height: Height,
    /// Round.
    pub round: Round,
    /// The block hash, or nil.
    pub value: NilOrVal<BlockHash>,
    /// The voter.
    pub voter: Address,
    /// Vote extension (unused by the ledger).
    pub extension: Option<SignedExtension<LedgerContext>>,
}

impl mt::Vote<LedgerContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &NilOrVal<BlockHash> {
        &self.value
    }
    fn take_value(self) -> NilOrVal<BlockHash> {
        self.value
    }
    fn vote_type(&self) -> VoteType {
        self.vote_type
    }
    fn validator_address(&self) -> &Address {
        &self.voter
    }
    fn extension(&self) -> Option<&SignedExtension<LedgerContext>> {
        self.extension.as_ref()
    }
    fn take_extension(&mut self) -> Option<SignedExtension<LedgerContext>> {
        self.extension.take()
    }
    fn extend(self, extension: SignedExtension<LedgerContext>) -> Self {
        Self {
            extension: Some(extension),
            ..self
        }
    }
}

/// The ledger's consensus context; carries the chain id every signature binds.
#[derive(Clone, Debug)]
pub struct LedgerContext {
    /// The chain id.
    pub chain_id: String,
}

impl LedgerContext {
    /// What a validator signs for `vote`.
    pub fn vote_bytes(&self, vote: &Vote) -> Vec<u8> {
        let kind = match vote.vote_type {
            VoteType::Prevote => VoteKind::Prevote,
            VoteType::Precommit => VoteKind::Precommit,
        };
        let value = match &vote.value {
            NilOrVal::Nil => None,
            NilOrVal::Val(v) => Some(&v.0),
        };
        vote_sign_bytes(
            &self.chain_id,
            kind,
            vote.height.0,
            vote.round.as_i64(),
            value,
            &vote.voter.0,
        )
    }

    /// What a proposer signs for `proposal` (and for the `Fin` of its parts).
    pub fn proposal_bytes(
        &self,
        height: Height,
        round: Round,
        pol_round: Round,
        value: &BlockHash,
        proposer: &Address,
    ) -> Vec<u8> {
        proposal_sign_bytes(
            &self.chain_id,
            height.0,
            round.as_i64(),
            pol_round.as_i64(),
            &value.0,
            &proposer.0,
        )
    }
}

impl mt::Context for LedgerContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = ProposalPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = mt::LinearTimeouts;
    type Value = Value;
    type Vote = Vote;
    type Extension = Bytes;
    type SigningScheme = Ed25519;

    /// Round robin over the set, shifted by height: `(height - 1 + round) mod n`.
    fn select_proposer<'a>(
        &self,
        vs: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        assert!(
            !vs.validators.is_empty(),
            "an empty validator set has no proposer"
        );
        let r = round.as_i64().max(0) as u64;
        let i = (height.0.saturating_sub(1) + r) % vs.validators.len() as u64;
        &vs.validators[i as usize]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: Value,
        pol_round: Round,
        proposer: Address,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<BlockHash>,
        voter: Address,
    ) -> Vote {
        Vote {
            vote_type: VoteType::Prevote,
            height,
            round,
            value,
            voter,
            extension: None,
        }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<BlockHash>,
        voter: Address,
    ) -> Vote {
        Vote {
            vote_type: VoteType::Precommit,
            height,
            round,
            value,
            voter,
            extension: None,
        }
    }
}
