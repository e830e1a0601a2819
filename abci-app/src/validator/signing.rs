//! ed25519 signing and verification of votes, proposals and validator proofs.

use async_trait::async_trait;
use bytes::Bytes;
use malachitebft_app_channel::{Signer, Verifier};
use malachitebft_core_types::{SignedMessage, ValidatorProof, VoteExtensionScope};
use malachitebft_signing::{Error, VerificationResult};
use malachitebft_signing_ed25519::{PrivateKey, PublicKey, Signature};

use super::types::{LedgerContext, Proposal, Vote};

fn extension_bytes(
    ctx: &LedgerContext,
    scope: &VoteExtensionScope<LedgerContext>,
    ext: &Bytes,
) -> Vec<u8> {
    let mut b = b"onionpost/vote-extension/v1".to_vec();
    b.extend_from_slice(ctx.chain_id.as_bytes());
    b.extend_from_slice(&scope.height.0.to_be_bytes());
    b.extend_from_slice(&scope.round.as_i64().to_be_bytes());
    b.extend_from_slice(&scope.value_id.0);
    b.extend_from_slice(&scope.validator_address.0);
    b.extend_from_slice(ext);
    b
}

/// Signs with a validator's key.
pub struct LedgerSigner {
    ctx: LedgerContext,
    key: PrivateKey,
}

impl LedgerSigner {
    /// A signer for `key` on `ctx`'s chain.
    pub fn new(ctx: LedgerContext, key: PrivateKey) -> Self {
        Self { ctx, key }
    }
}

#[async_trait]
impl Signer<LedgerContext> for LedgerSigner {
    async fn sign_vote(&self, vote: Vote) -> Result<SignedMessage<LedgerContext, Vote>, Error> {
        let s = self.key.sign(&self.ctx.vote_bytes(&vote));
        Ok(SignedMessage::new(vote, s))
    }

    async fn sign_proposal(
        &self,
        p: Proposal,
    ) -> Result<SignedMessage<LedgerContext, Proposal>, Error> {
        let s = self.key.sign(&self.ctx.proposal_bytes(
            p.height,
            p.round,
            p.pol_round,
            &p.value.0,
            &p.proposer,
        ));
        Ok(SignedMessage::new(p, s))
    }

    async fn sign_vote_extension(
        &self,
        scope: VoteExtensionScope<LedgerContext>,
        ext: Bytes,
    ) -> Result<SignedMessage<LedgerContext, Bytes>, Error> {
        let s = self.key.sign(&extension_bytes(&self.ctx, &scope, &ext));
        Ok(SignedMessage::new(ext, s))
    }

    async fn sign_validator_proof(
        &self,
        public_key: Vec<u8>,
        peer_id: Vec<u8>,
    ) -> Result<ValidatorProof<LedgerContext>, Error> {
        let s = self
            .key
            .sign(&ValidatorProof::<LedgerContext>::signing_bytes(
                &public_key,
                &peer_id,
            ));
        Ok(ValidatorProof::new(public_key, peer_id, s))
    }
}

/// Verifies other validators' signatures.
pub struct LedgerVerifier {
    ctx: LedgerContext,
}

impl LedgerVerifier {
    /// A verifier for `ctx`'s chain.
    pub fn new(ctx: LedgerContext) -> Self {
        Self { ctx }
    }
}

#[async_trait]
impl Verifier<LedgerContext> for LedgerVerifier {
    async fn verify_signed_vote(
        &self,
        v: &Vote,
        s: &Signature,
        pk: &PublicKey,
    ) -> Result<VerificationResult, Error> {
        Ok(VerificationResult::from_bool(
            pk.verify(&self.ctx.vote_bytes(v), s).is_ok(),
        ))
    }

    async fn verify_signed_proposal(
        &self,
        p: &Proposal,
        s: &Signature,
        pk: &PublicKey,
    ) -> Result<VerificationResult, Error> {
        let bytes =
            self.ctx
                .proposal_bytes(p.height, p.round, p.pol_round, &p.value.0, &p.proposer);
        Ok(VerificationResult::from_bool(pk.verify(&bytes, s).is_ok()))
    }

    async fn verify_signed_vote_extension(
        &self,
        scope: &VoteExtensionScope<LedgerContext>,
        ext: &Bytes,
        s: &Signature,
        pk: &PublicKey,
    ) -> Result<VerificationResult, Error> {
        Ok(VerificationResult::from_bool(
            pk.verify(&extension_bytes(&self.ctx, scope, ext), s)
                .is_ok(),
        ))
    }

    async fn verify_validator_proof(
        &self,
        proof: &ValidatorProof<LedgerContext>,
    ) -> Result<VerificationResult, Error> {
        let pk = proof
            .decoded_public_key()
            .map_err(|e| Error::from_source(format!("{e}")))?;
        Ok(VerificationResult::from_bool(
            pk.verify(&proof.preimage(), &proof.signature).is_ok(),
        ))
    }
}
