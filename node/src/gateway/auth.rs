//! Who is sending through the gateway: the sending identity signs each copy it hands to its
//! gateway, and the gateway relays nothing it cannot verify. Pure.
//!
//! Connections prove nothing: the gateway's participant listener is an onion service, where
//! every inbound connection is anonymous, or (for tests) a loopback port that any local
//! process can reach. So neither "it came from 127.0.0.1" nor "it came over Tor" is trusted;
//! the copy must carry, as its first header field,
//!
//! ```text
//! Onionpost-Gateway: t=<Unix seconds>; s=<ed25519 signature, 128 hex>
//! ```
//!
//! the signature of the identity of the envelope sender (`name@<onion>`: the onion address
//! is the key, so the gateway needs no ledger to check it) over [`CONTEXT`], the gateway's
//! key, the sender's key, `t` (8 bytes, big-endian), the SHA-256 of the envelope recipients
//! (lower-cased, sorted, one per line) and the SHA-256 of the copy without the field. It names
//! this gateway, this sender, these recipients and this moment, so it can be replayed neither
//! at another gateway, nor for other recipients, nor after the gateway's freshness window
//! (within the window, the gateway's Message-ID dedupe makes a replay a no-op). The gateway
//! removes the field before it relays.
//!
//! The same shape as the mailbox hosts' `Onionpost-Hold` field (`hosting::sender`).

use crate::message::as_delivered;
use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use onionpost_ledger_client::IdentityKey;
use sha2::{Digest, Sha256};

/// Most envelope recipients of one signed copy: a participant's node splits bigger
/// recipient lists into several copies, and a gateway takes at least this many per
/// transaction (`[limits] max_recipients`), so no signed envelope is ever cut short.
pub const RECIPIENTS_PER_COPY: usize = 25;

/// The header field's name.
pub const FIELD: &str = "Onionpost-Gateway";

/// Domain separator of the signature of a participant's copy for its gateway.
pub const CONTEXT: &[u8] = b"onionpost gateway sender v1\n";

/// Domain separator of the gateway's signature of a copy it forwards from the internet to
/// a participant ([`attach_forward`]): the participant's node keeps the gateway's
/// `Authentication-Results` only under this signature.
pub const FORWARD_CONTEXT: &[u8] = b"onionpost gateway forward v1\n";

/// The SHA-256 of the envelope recipients: lower-cased, sorted, one per line.
fn recipients_digest(recipients: &[String]) -> [u8; 32] {
    let mut r: Vec<String> = recipients.iter().map(|a| a.to_ascii_lowercase()).collect();
    r.sort();
    r.dedup();
    let mut h = Sha256::new();
    for a in &r {
        h.update(a.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

fn signed_bytes(
    context: &[u8],
    gateway: &IdentityKey,
    sender: &IdentityKey,
    t: u64,
    recipients: &[String],
    copy: &[u8],
) -> Vec<u8> {
    let digest = Sha256::digest(copy);
    [
        context,
        &gateway[..],
        &sender[..],
        &t.to_be_bytes(),
        &recipients_digest(recipients),
        &digest[..],
    ]
    .concat()
}

/// The copy as handed to `gateway` for `recipients` at Unix time `t`: signed by the sending
/// identity's `key` (over the copy as SMTP delivers it: CRLF line ends).
pub fn attach(
    key: &SigningKey,
    gateway: &IdentityKey,
    recipients: &[String],
    t: u64,
    copy: &[u8],
) -> Vec<u8> {
    attach_with(CONTEXT, key, gateway, recipients, t, copy)
}

/// The copy the gateway (whose key is `key`) forwards to the participant whose key is
/// `participant`, for `recipients` (its address) at Unix time `t`: the same field, signed
/// under [`FORWARD_CONTEXT`].
pub fn attach_forward(
    key: &SigningKey,
    participant: &IdentityKey,
    recipients: &[String],
    t: u64,
    copy: &[u8],
) -> Vec<u8> {
    attach_with(FORWARD_CONTEXT, key, participant, recipients, t, copy)
}

fn attach_with(
    context: &[u8],
    key: &SigningKey,
    target: &IdentityKey,
    recipients: &[String],
    t: u64,
    copy: &[u8],
) -> Vec<u8> {
    let copy = as_delivered(copy);
    let me = key.verification_key().to_bytes();
    let sig = key.sign(&signed_bytes(context, target, &me, t, recipients, &copy));
    let mut out = format!("{FIELD}: t={t}; s={}\r\n", hex::encode(sig.to_bytes())).into_bytes();
    out.extend_from_slice(&copy);
    out
}

/// Why a copy's sender is not proven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The copy does not start with the field.
    #[error(
        "the message does not start with an {FIELD} field signed by the sending identity; \
         this gateway relays only for the identities it serves, whatever the connection"
    )]
    Missing,
    /// The field does not parse.
    #[error("the {FIELD} field is malformed (want t=<unix seconds>; s=<128 hex>)")]
    Malformed,
    /// The field is not a signature of the envelope sender's identity over this copy.
    #[error(
        "the {FIELD} signature is not the envelope sender's over this message, for this gateway and these recipients"
    )]
    Invalid,
    /// Signed too long ago, or in the future (clock skew beyond the window).
    #[error(
        "the {FIELD} signature was made at {t}, outside this gateway's window of {window} s around now ({now})"
    )]
    Stale {
        /// The signature's time.
        t: u64,
        /// The gateway's time.
        now: u64,
        /// The window, seconds either side.
        window: u64,
    },
}

/// A verified copy: when it was signed and the copy without the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signature's time, Unix seconds.
    pub signed_at: u64,
    /// The copy as the sending node made it (CRLF line ends).
    pub copy: Vec<u8>,
}

/// Checks the field of a copy from `sender` to `recipients` at the gateway whose key is
/// `gateway`, at Unix time `now`, accepting signatures at most `window` seconds away from it;
/// returns the copy without the field.
pub fn verify(
    gateway: &IdentityKey,
    sender: &IdentityKey,
    recipients: &[String],
    message: &[u8],
    now: u64,
    window: u64,
) -> Result<Verified, AuthError> {
    verify_with(CONTEXT, gateway, sender, recipients, message, now, window)
}

/// Checks the field of a copy that the gateway whose key is `gateway` forwarded to the
/// participant whose key is `participant` ([`attach_forward`]).
pub fn verify_forward(
    participant: &IdentityKey,
    gateway: &IdentityKey,
    recipients: &[String],
    message: &[u8],
    now: u64,
    window: u64,
) -> Result<Verified, AuthError> {
    verify_with(
        FORWARD_CONTEXT,
        participant,
        gateway,
        recipients,
        message,
        now,
        window,
    )
}

fn verify_with(
    context: &[u8],
    gateway: &IdentityKey,
    sender: &IdentityKey,
    recipients: &[String],
    message: &[u8],
    now: u64,
    window: u64,
) -> Result<Verified, AuthError> {
    let prefix = format!("{FIELD}:");
    if message.len() < prefix.len()
        || !message[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        return Err(AuthError::Missing);
    }
    let rest = &message[prefix.len()..];
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(AuthError::Malformed)?;
    let value = std::str::from_utf8(&rest[..end]).map_err(|_| AuthError::Malformed)?;
    let (mut t, mut s) = (None, None);
    for part in value.split(';') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.trim().parse::<u64>().ok(),
            Some(("s", v)) => s = hex::decode(v.trim()).ok(),
            _ => return Err(AuthError::Malformed),
        }
    }
    let t = t.ok_or(AuthError::Malformed)?;
    let sig: [u8; 64] = s
        .and_then(|s| s.try_into().ok())
        .ok_or(AuthError::Malformed)?;
    let copy = &rest[end + 2..];
    let vk = VerificationKey::try_from(*sender).map_err(|_| AuthError::Invalid)?;
    vk.verify(
        &Signature::from(sig),
        &signed_bytes(context, gateway, sender, t, recipients, copy),
    )
    .map_err(|_| AuthError::Invalid)?;
    if t.abs_diff(now) > window {
        return Err(AuthError::Stale { t, now, window });
    }
    Ok(Verified {
        signed_at: t,
        copy: copy.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sender_for_this_gateway_recipients_and_time_verifies() {
        let key = SigningKey::new(rand_core::OsRng);
        let me = key.verification_key().to_bytes();
        let gw = [1u8; 32];
        let rcpts = vec!["Bob@Example.com".to_string(), "carol@example.org".into()];
        let copy = b"From: a@x.onion\r\n\r\nhello\r\n";
        let signed = attach(&key, &gw, &rcpts, 1000, copy);
        let v = verify(&gw, &me, &rcpts, &signed, 1010, 300).unwrap();
        assert_eq!((v.signed_at, &v.copy[..]), (1000, &copy[..]));
        // Recipients in another order and case are the same envelope.
        let same = vec!["carol@example.org".to_string(), "bob@example.com".into()];
        assert!(verify(&gw, &me, &same, &signed, 1000, 300).is_ok());
        // Another gateway, another sender, other recipients, a changed copy: invalid.
        assert_eq!(
            verify(&[2; 32], &me, &rcpts, &signed, 1000, 300),
            Err(AuthError::Invalid)
        );
        let other = SigningKey::new(rand_core::OsRng)
            .verification_key()
            .to_bytes();
        assert_eq!(
            verify(&gw, &other, &rcpts, &signed, 1000, 300),
            Err(AuthError::Invalid)
        );
        let more = vec!["bob@example.com".to_string(), "eve@evil.example".into()];
        assert_eq!(
            verify(&gw, &me, &more, &signed, 1000, 300),
            Err(AuthError::Invalid)
        );
        let mut tampered = signed.clone();
        *tampered.last_mut().unwrap() = b'y';
        assert_eq!(
            verify(&gw, &me, &rcpts, &tampered, 1000, 300),
            Err(AuthError::Invalid)
        );
        // A different time is a different signature.
        let text = String::from_utf8(signed.clone()).unwrap();
        let moved = text.replacen("t=1000", "t=1001", 1);
        assert_eq!(
            verify(&gw, &me, &rcpts, moved.as_bytes(), 1000, 300),
            Err(AuthError::Invalid)
        );
        // Outside the window, either way.
        assert_eq!(
            verify(&gw, &me, &rcpts, &signed, 1301, 300),
            Err(AuthError::Stale {
                t: 1000,
                now: 1301,
                window: 300
            })
        );
        assert!(matches!(
            verify(&gw, &me, &rcpts, &signed, 699, 300),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(
            verify(&gw, &me, &rcpts, copy, 1000, 300),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verify(
                &gw,
                &me,
                &rcpts,
                b"Onionpost-Gateway: s=zz\r\n\r\n",
                1000,
                300
            ),
            Err(AuthError::Malformed)
        );
        // The gateway's forward signature is another statement: neither passes for the other.
        let fwd = attach_forward(&key, &gw, &rcpts, 1000, copy);
        assert_eq!(
            verify(&gw, &me, &rcpts, &fwd, 1000, 300),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify_forward(&gw, &me, &rcpts, &fwd, 1000, 300)
                .unwrap()
                .copy,
            copy
        );
        assert_eq!(
            verify_forward(&gw, &me, &rcpts, &signed, 1000, 300),
            Err(AuthError::Invalid)
        );
        // Bare line ends are signed as SMTP delivers them.
        let bare = attach(&key, &gw, &rcpts, 5, b"a\nb");
        assert_eq!(
            verify(&gw, &me, &rcpts, &bare, 5, 0).unwrap().copy,
            b"a\r\nb\r\n"
        );
    }
}
