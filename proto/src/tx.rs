//! Ledger transactions: the signed envelope, its signing digest, and its stateless checks.
//!
//! A transaction is a [`SignedTx`]: the encoded [`TxBody`] bytes, the signer's ed25519 public
//! key and a signature over [`signing_digest`]`(chain_id, body)`. The digest is
//! domain-separated so a signature made for a transaction can never be replayed as anything
//! else, and it names the chain so it cannot be replayed on another ledger.

use ed25519_consensus::{Signature, SigningKey, VerificationKey, VerificationKeyBytes};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1::{SignedTx, TxBody, tx_body::Action};

/// Domain separator of transaction signatures.
pub const TX_SIGNING_DOMAIN: &[u8] = b"onionpost/tx/v1";

/// The 32 bytes an identity signs for a transaction body.
pub fn signing_digest(chain_id: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TX_SIGNING_DOMAIN);
    h.update((chain_id.len() as u64).to_be_bytes());
    h.update(chain_id.as_bytes());
    h.update(body);
    h.finalize().into()
}

/// SHA-256 of the encoded transaction: its name in the mempool, in events and in logs.
pub fn tx_hash(encoded_tx: &[u8]) -> [u8; 32] {
    Sha256::digest(encoded_tx).into()
}

/// Signs `action` as the signer's transaction number `nonce` on ledger `chain_id`.
pub fn sign(key: &SigningKey, chain_id: &str, nonce: u64, action: Action) -> SignedTx {
    let body = TxBody {
        chain_id: chain_id.to_owned(),
        nonce,
        action: Some(action),
    }
    .encode_to_vec();
    let signature = key.sign(&signing_digest(chain_id, &body));
    SignedTx {
        body,
        signer: key.verification_key().to_bytes().to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Why a transaction failed its stateless checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not a `SignedTx` or its body is not a `TxBody`.
    #[error("transaction is not a valid protobuf SignedTx/TxBody: {0}")]
    Decode(String),
    /// The signer field is not a 32-byte ed25519 key.
    #[error("signer must be a 32-byte ed25519 public key, got {0} bytes")]
    SignerLength(usize),
    /// The signer bytes are not a point on the curve.
    #[error("signer is not a valid ed25519 public key")]
    SignerKey,
    /// The signature field is not 64 bytes.
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    /// The body carries no action.
    #[error("transaction body carries no action")]
    NoAction,
}

/// A decoded transaction whose envelope is well-formed (the signature is *not* checked yet:
/// verification is batched per block).
#[derive(Debug, Clone)]
pub struct DecodedTx {
    /// The decoded body.
    pub body: TxBody,
    /// The action, taken out of `body`.
    pub action: Action,
    /// Signer public key.
    pub signer: [u8; 32],
    /// The signature.
    pub signature: Signature,
    /// The signer's key, parsed (decompressed) by [`DecodedTx::decode`]; `None` after
    /// [`DecodedTx::decode_deferring_key_check`], which leaves that to the verification.
    verification_key: Option<VerificationKey>,
    /// The digest the signature must cover (computed with the body's own chain id; the
    /// ledger separately checks that chain id is its own).
    pub digest: [u8; 32],
    /// SHA-256 of the whole encoded `SignedTx`.
    pub hash: [u8; 32],
}

impl DecodedTx {
    /// Decodes an encoded `SignedTx` and checks the envelope's shape, including that the
    /// signer is a valid ed25519 public key.
    pub fn decode(encoded: &[u8]) -> Result<Self, EnvelopeError> {
        Self::decode_inner(encoded, true)
    }

    /// [`DecodedTx::decode`] without checking that the signer is a valid public key, which
    /// costs a point decompression: for a block's transactions, whose signatures go into one
    /// batch verification that decompresses every key again anyway. An invalid key then fails
    /// the batch, and [`DecodedTx::key_is_valid`] says which transaction had it. Where
    /// [`DecodedTx::decode`] would fail, this fails too (perhaps on another check: ask
    /// [`DecodedTx::decode`] for its error).
    pub fn decode_deferring_key_check(encoded: &[u8]) -> Result<Self, EnvelopeError> {
        Self::decode_inner(encoded, false)
    }

    fn decode_inner(encoded: &[u8], check_key: bool) -> Result<Self, EnvelopeError> {
        let tx = SignedTx::decode(encoded).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        let mut body =
            TxBody::decode(tx.body.as_slice()).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        let signer: [u8; 32] = tx
            .signer
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::SignerLength(tx.signer.len()))?;
        let verification_key = if check_key {
            Some(VerificationKey::try_from(signer).map_err(|_| EnvelopeError::SignerKey)?)
        } else {
            None
        };
        let sig: [u8; 64] = tx
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::SignatureLength(tx.signature.len()))?;
        let action = body.action.take().ok_or(EnvelopeError::NoAction)?;
        let digest = signing_digest(&body.chain_id, &tx.body);
        Ok(Self {
            body,
            action,
            signer,
            signature: Signature::from(sig),
            verification_key,
            digest,
            hash: tx_hash(encoded),
        })
    }

    /// The signer's key as the batch verifier takes it (compressed, not checked).
    pub fn verification_key_bytes(&self) -> VerificationKeyBytes {
        VerificationKeyBytes::from(self.signer)
    }

    /// Whether the signer is a valid ed25519 public key (always true after
    /// [`DecodedTx::decode`]).
    pub fn key_is_valid(&self) -> bool {
        self.verification_key.is_some() || VerificationKey::try_from(self.signer).is_ok()
    }

    /// Checks the signature on its own (the ledger batches this per block instead).
    pub fn verify_signature(&self) -> bool {
        let key = match self.verification_key {
            Some(key) => key,
            None => match VerificationKey::try_from(self.signer) {
                Ok(key) => key,
                Err(_) => return false,
            },
        };
        key.verify(&self.signature, &self.digest).is_ok()
    }
}

/// The snake_case name of an action, as used in events and logs.
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::RegisterIdentity(_) => "register_identity",
        Action::BindKey(_) => "bind_key",
        Action::RotateKey(_) => "rotate_key",
        Action::RevokeKey(_) => "revoke_key",
        Action::SetMailboxHosts(_) => "set_mailbox_hosts",
        Action::SignTrust(_) => "sign_trust",
        Action::RevokeTrust(_) => "revoke_trust",
        Action::CreateList(_) => "create_list",
        Action::AddMember(_) => "add_member",
        Action::RemoveMember(_) => "remove_member",
        Action::AddAdmin(_) => "add_admin",
        Action::RemoveAdmin(_) => "remove_admin",
        Action::SetListPolicy(_) => "set_list_policy",
        Action::ProposeValidatorUpdate(_) => "propose_validator_update",
        Action::Approve(_) => "approve",
        Action::Propose(_) => "propose",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::RegisterIdentity;

    #[test]
    fn signed_tx_decodes_and_verifies_and_tampering_breaks_it() {
        let key = SigningKey::new(rand_core::OsRng);
        let tx = sign(
            &key,
            "test-chain",
            0,
            Action::RegisterIdentity(RegisterIdentity {
                display_name: "alice".into(),
            }),
        );
        let decoded = DecodedTx::decode(&tx.encode_to_vec()).unwrap();
        assert!(decoded.verify_signature());
        assert_eq!(decoded.body.chain_id, "test-chain");
        assert_eq!(decoded.signer, key.verification_key().to_bytes());

        let mut forged = tx.clone();
        forged.body = TxBody {
            chain_id: "test-chain".into(),
            nonce: 1,
            action: Some(Action::RegisterIdentity(RegisterIdentity::default())),
        }
        .encode_to_vec();
        let decoded = DecodedTx::decode(&forged.encode_to_vec()).unwrap();
        assert!(!decoded.verify_signature());
    }

    #[test]
    fn digest_binds_the_chain_id() {
        assert_ne!(signing_digest("a", b"xy"), signing_digest("ax", b"y"));
        assert_ne!(signing_digest("a", b"x"), signing_digest("b", b"x"));
    }

    #[test]
    fn malformed_envelopes_are_named() {
        assert!(matches!(
            DecodedTx::decode(b"\xff\xff"),
            Err(EnvelopeError::Decode(_))
        ));
        let short = SignedTx {
            body: vec![],
            signer: vec![1; 31],
            signature: vec![0; 64],
        };
        assert_eq!(
            DecodedTx::decode(&short.encode_to_vec()).unwrap_err(),
            EnvelopeError::SignerLength(31)
        );
    }

    #[test]
    fn a_deferred_key_check_finds_the_same_invalid_keys() {
        let key = SigningKey::new(rand_core::OsRng);
        let good = sign(&key, "c", 0, Action::RegisterIdentity(Default::default()));
        let d = DecodedTx::decode_deferring_key_check(&good.encode_to_vec()).unwrap();
        assert!(d.key_is_valid() && d.verify_signature());
        assert_eq!(
            d.verification_key_bytes(),
            VerificationKeyBytes::from(key.verification_key())
        );
        // A y coordinate with no point on the curve: not a public key.
        let bad_key = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| VerificationKey::try_from(*k).is_err())
            .expect("some byte pattern is not a point");
        let mut bad = good.clone();
        bad.signer = bad_key.to_vec();
        assert_eq!(
            DecodedTx::decode(&bad.encode_to_vec()).unwrap_err(),
            EnvelopeError::SignerKey
        );
        let d = DecodedTx::decode_deferring_key_check(&bad.encode_to_vec()).unwrap();
        assert!(!d.key_is_valid());
        assert!(!d.verify_signature());
    }
}
