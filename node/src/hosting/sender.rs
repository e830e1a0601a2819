//! Who is sending held mail: the sending identity signs each copy it hands to a host, so the
//! host's per-sender quota counts identities, not whatever `MAIL FROM` says. Pure.
//!
//! The copy carries one header field, first, `Onionpost-Hold: <signature, 128 hex>`: the
//! ed25519 signature of the identity of the envelope sender (its onion address is its key, so
//! the host needs no ledger read to check it) over [`CONTEXT`], the host's key, the
//! recipient's key, the sender's key and the SHA-256 of the copy without that field. It names
//! this host and this recipient, so it cannot be replayed elsewhere. The host removes the field
//! before it stores the message: the recipient collects the copy exactly as it was encrypted.

use crate::message::as_delivered;
use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use onionpost_ledger_client::IdentityKey;
use sha2::{Digest, Sha256};

/// The header field's name.
pub const FIELD: &str = "Onionpost-Hold";

/// Domain separator of the signature.
pub const CONTEXT: &[u8] = b"onionpost held-mail sender v1\n";

fn signed_bytes(
    host: &IdentityKey,
    recipient: &IdentityKey,
    sender: &IdentityKey,
    copy: &[u8],
) -> Vec<u8> {
    let digest = Sha256::digest(copy);
    [CONTEXT, &host[..], &recipient[..], &sender[..], &digest[..]].concat()
}

/// The copy as handed to `host` for `recipient`: signed by the sending identity's `key`
/// (over the copy as SMTP delivers it: CRLF line ends).
pub fn attach(
    key: &SigningKey,
    host: &IdentityKey,
    recipient: &IdentityKey,
    copy: &[u8],
) -> Vec<u8> {
    let copy = as_delivered(copy);
    let me = key.verification_key().to_bytes();
    let sig = key.sign(&signed_bytes(host, recipient, &me, &copy));
    let mut out = format!("{FIELD}: {}\r\n", hex::encode(sig.to_bytes())).into_bytes();
    out.extend_from_slice(&copy);
    out
}

/// Why a held copy's sender is not proven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    /// The copy does not start with the field.
    #[error("the message does not start with an {FIELD} field signed by the sending identity")]
    Missing,
    /// The field is not a signature of the envelope sender's identity over this copy.
    #[error(
        "the {FIELD} signature is not the envelope sender's over this message for this host and recipient"
    )]
    Invalid,
}

/// Checks the field of a held copy from `sender` and returns the copy without it.
pub fn verify(
    host: &IdentityKey,
    recipient: &IdentityKey,
    sender: &IdentityKey,
    message: &[u8],
) -> Result<Vec<u8>, SenderError> {
    let prefix = format!("{FIELD}: ");
    let rest = message
        .strip_prefix(prefix.as_bytes())
        .ok_or(SenderError::Missing)?;
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(SenderError::Missing)?;
    let sig: [u8; 64] = hex::decode(&rest[..end])
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(SenderError::Invalid)?;
    let copy = &rest[end + 2..];
    let vk = VerificationKey::try_from(*sender).map_err(|_| SenderError::Invalid)?;
    vk.verify(
        &Signature::from(sig),
        &signed_bytes(host, recipient, sender, copy),
    )
    .map_err(|_| SenderError::Invalid)?;
    Ok(copy.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sender_for_this_host_and_recipient_verifies_and_the_field_is_removed() {
        let key = SigningKey::new(rand_core::OsRng);
        let me = key.verification_key().to_bytes();
        let (host, rcpt) = ([1u8; 32], [2u8; 32]);
        let copy = b"Content-Type: multipart/encrypted\r\n\r\nx\r\n";
        let signed = attach(&key, &host, &rcpt, copy);
        assert_eq!(verify(&host, &rcpt, &me, &signed).unwrap(), copy);
        assert_eq!(
            verify(&[3; 32], &rcpt, &me, &signed),
            Err(SenderError::Invalid)
        );
        assert_eq!(
            verify(&host, &[3; 32], &me, &signed),
            Err(SenderError::Invalid)
        );
        let other = SigningKey::new(rand_core::OsRng)
            .verification_key()
            .to_bytes();
        assert_eq!(
            verify(&host, &rcpt, &other, &signed),
            Err(SenderError::Invalid)
        );
        let mut tampered = signed.clone();
        *tampered.last_mut().unwrap() = b'y';
        assert_eq!(
            verify(&host, &rcpt, &me, &tampered),
            Err(SenderError::Invalid)
        );
        assert_eq!(verify(&host, &rcpt, &me, copy), Err(SenderError::Missing));
        // Bare line ends are signed as SMTP delivers them.
        let bare = attach(&key, &host, &rcpt, b"a\nb");
        assert_eq!(verify(&host, &rcpt, &me, &bare).unwrap(), b"a\r\nb\r\n");
    }
}
