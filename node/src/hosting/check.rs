//! The host's decisions on mail offered for holding, as pure functions: is it for an identity
//! that named one of ours, from an onion identity, ciphertext for the recipient's bound key,
//! within the quotas. Each refusal is a reply that says what is wrong.

use onionpost_e2e::PublicCert;
use onionpost_ledger_client::IdentityKey;
use onionpost_proto::onion::OnionAddress;

use crate::config::HostingConfig;
use crate::context::Identities;
use crate::delivery::inbound::{Class, Scope, classify};
use crate::lists::address::parse_member_address;
use crate::smtp::reply::{Reply, reply};

/// How much is held (for a recipient, or from a sender).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: usize,
    /// Bytes.
    pub bytes: u64,
}

/// The quotas of held mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages for one recipient.
    pub max_messages_per_recipient: usize,
    /// Most bytes for one recipient.
    pub max_bytes_per_recipient: u64,
    /// Most messages from one sender.
    pub max_messages_per_sender: usize,
    /// Most bytes from one sender.
    pub max_bytes_per_sender: u64,
}

impl From<&HostingConfig> for Limits {
    fn from(c: &HostingConfig) -> Self {
        Limits {
            max_messages_per_recipient: c.max_messages_per_recipient,
            max_bytes_per_recipient: c.max_bytes_per_recipient,
            max_messages_per_sender: c.max_messages_per_sender,
            max_bytes_per_sender: c.max_bytes_per_sender,
        }
    }
}

/// Whether one more message of `size` bytes fits: 552 if it could never fit, 452 4.2.2 while
/// the recipient's share is full (it empties when the recipient collects), 452 4.7.1 while
/// the sender's is.
pub fn quota(
    l: &Limits,
    recipient: Usage,
    sender: Usage,
    size: u64,
    to: &str,
) -> Result<(), Reply> {
    if size > l.max_bytes_per_recipient || size > l.max_bytes_per_sender {
        return Err(reply(
            552,
            [5, 3, 4],
            format!(
                "Error: message of {size} bytes is larger than this mailbox host holds for anyone"
            ),
        ));
    }
    if recipient.messages >= l.max_messages_per_recipient
        || recipient.bytes + size > l.max_bytes_per_recipient
    {
        return Err(reply(
            452,
            [4, 2, 2],
            format!(
                "Error: the mail held here for {to} is at its quota ({} messages, {} bytes); try again later",
                recipient.messages, recipient.bytes
            ),
        ));
    }
    if sender.messages >= l.max_messages_per_sender || sender.bytes + size > l.max_bytes_per_sender
    {
        return Err(reply(
            452,
            [4, 7, 1],
            format!(
                "Error: this mailbox host holds as much mail from you as it takes ({} messages, {} bytes); try again later",
                sender.messages, sender.bytes
            ),
        ));
    }
    Ok(())
}

/// The recipient identity of an address this node might hold mail for: an address at an
/// onion that is not served here on this connection (not a hosted identity in the scope, not
/// a list post). `None` for everything else.
pub fn held_candidate(ids: &Identities, scope: Scope, recipient: &str) -> Option<OnionAddress> {
    if parse_member_address(recipient).is_some() {
        return None;
    }
    if !matches!(classify(ids, scope, recipient), Class::Unknown) {
        return None;
    }
    let (local, domain) = recipient.rsplit_once('@')?;
    if local.is_empty() {
        return None;
    }
    domain.parse().ok()
}

/// The identities of this node that a connection with `scope` speaks for as a host: its
/// onion service's identity, or every hosted identity (the loopback test listener).
pub fn scope_hosts(ids: &Identities, scope: Scope) -> Vec<IdentityKey> {
    match scope {
        Scope::Identity(o) => ids
            .by_onion(&o)
            .map(|h| vec![h.identity.onion.public_key()])
            .unwrap_or_default(),
        Scope::AllHosted => ids.iter().map(|h| h.identity.onion.public_key()).collect(),
    }
}

/// The reply for an identity that names none of the connection's identities as its host.
/// The same whatever the node hosts, so it tells a sender nothing about the node's other
/// identities.
pub fn not_named(recipient: &OnionAddress) -> Reply {
    reply(
        550,
        [5, 7, 1],
        format!(
            "Error: this node is not a mailbox host of {} (the ledger does not name it as one); no relaying",
            recipient.hostname()
        ),
    )
}

/// Which of `ours` the ledger's host list for the recipient names (the first it names).
pub fn named(
    hosts: &[IdentityKey],
    ours: &[IdentityKey],
    recipient: &OnionAddress,
) -> Result<IdentityKey, Reply> {
    hosts
        .iter()
        .find(|h| ours.contains(h))
        .copied()
        .ok_or_else(|| not_named(recipient))
}

/// The sending identity of a held message: its envelope sender must be an address at an
/// onion (held mail comes from identities, and the per-sender quota counts by identity).
pub fn sender_identity(mail_from: &str) -> Result<OnionAddress, Reply> {
    let refuse = || {
        reply(
            550,
            [5, 7, 1],
            "Error: a mailbox host holds mail from onion identities only (MAIL FROM:<name@<onion>.onion>)",
        )
    };
    let (_, domain) = mail_from.rsplit_once('@').ok_or_else(refuse)?;
    domain.parse().map_err(|_| refuse())
}

/// Whether `message` is OpenPGP ciphertext for the recipient's bound key (`active`: the
/// certificate bytes bound on the ledger, `None` if none is). Cleartext and mail encrypted
/// to other keys are refused for good: the sender's node must never hand a host a readable
/// copy. Pure (parses the message; run it off the async workers).
pub fn encrypted_for(
    message: &[u8],
    active: Option<&[u8]>,
    to: &OnionAddress,
) -> Result<(), Reply> {
    let cleartext = || {
        reply(
            550,
            [5, 7, 1],
            "Error: cleartext refused: a mailbox host holds only OpenPGP-encrypted mail (PGP/MIME multipart/encrypted) for its recipient",
        )
    };
    let Some(active) = active else {
        return Err(reply(
            550,
            [5, 7, 1],
            format!(
                "Error: {} has no OpenPGP key bound on the ledger; a mailbox host holds only mail encrypted to it",
                to.hostname()
            ),
        ));
    };
    let ids = onionpost_e2e::encrypted_to(message).map_err(|_| cleartext())?;
    let theirs = PublicCert::from_bytes(active)
        .map(|c| c.encryption_key_ids())
        .unwrap_or_default();
    if ids.iter().any(|id| theirs.contains(id)) {
        Ok(())
    } else {
        Err(reply(
            550,
            [5, 7, 1],
            format!(
                "Error: this message is not encrypted to the OpenPGP key {} has bound on the ledger",
                to.hostname()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_messages_per_recipient: 2,
            max_bytes_per_recipient: 100,
            max_messages_per_sender: 1,
            max_bytes_per_sender: 50,
        }
    }

    #[test]
    fn quotas_say_which_and_whether_to_retry() {
        let none = Usage::default();
        assert!(quota(&limits(), none, none, 10, "x").is_ok());
        let e = quota(&limits(), none, none, 101, "x").unwrap_err();
        assert_eq!((e.code, e.esc), (552, [5, 3, 4]));
        let full = Usage {
            messages: 2,
            bytes: 20,
        };
        let e = quota(&limits(), full, none, 10, "x").unwrap_err();
        assert_eq!((e.code, e.esc), (452, [4, 2, 2]));
        assert!(e.message.contains("held here for x"), "{}", e.message);
        let one = Usage {
            messages: 1,
            bytes: 5,
        };
        let e = quota(&limits(), none, one, 10, "x").unwrap_err();
        assert_eq!((e.code, e.esc), (452, [4, 7, 1]));
    }

    #[test]
    fn senders_must_be_onion_identities_and_hosts_must_be_named() {
        let o = OnionAddress::from_public_key([3; 32]);
        assert_eq!(sender_identity(&format!("a@{}", o.hostname())).unwrap(), o);
        assert_eq!(sender_identity("a@example.com").unwrap_err().code, 550);
        assert_eq!(sender_identity("").unwrap_err().code, 550);
        assert_eq!(named(&[[1; 32], [2; 32]], &[[2; 32]], &o).unwrap(), [2; 32]);
        let e = named(&[[1; 32]], &[[2; 32]], &o).unwrap_err();
        assert_eq!((e.code, e.esc), (550, [5, 7, 1]));
        assert!(e.message.contains("not a mailbox host"), "{}", e.message);
    }

    #[test]
    fn only_ciphertext_for_the_bound_key_is_held() {
        let to = OnionAddress::from_public_key([4; 32]);
        let addr = format!("bob@{}", to.hostname());
        let bob = onionpost_e2e::SecretCert::generate(rand::rngs::OsRng, &addr).unwrap();
        let eve = onionpost_e2e::SecretCert::generate(rand::rngs::OsRng, "eve@e.onion").unwrap();
        let alice =
            onionpost_e2e::SecretCert::generate(rand::rngs::OsRng, "alice@a.onion").unwrap();
        let msg = format!("From: <alice@a.onion>\r\nTo: <{addr}>\r\nSubject: s\r\n\r\nhi\r\n");
        let bound = bob.public().to_bytes().unwrap();
        let clear = msg.as_bytes();
        let e = encrypted_for(clear, Some(&bound), &to).unwrap_err();
        assert!(e.message.contains("cleartext refused"), "{}", e.message);
        let signed =
            onionpost_e2e::sign(rand::rngs::OsRng, clear, &alice, Default::default()).unwrap();
        assert!(encrypted_for(&signed, Some(&bound), &to).is_err());
        let for_bob = onionpost_e2e::sign_and_encrypt(
            rand::rngs::OsRng,
            clear,
            &alice,
            &[bob.public()],
            Default::default(),
        )
        .unwrap();
        assert!(encrypted_for(&for_bob, Some(&bound), &to).is_ok());
        assert!(encrypted_for(&for_bob, None, &to).is_err(), "no key bound");
        let for_eve = onionpost_e2e::sign_and_encrypt(
            rand::rngs::OsRng,
            clear,
            &alice,
            &[eve.public()],
            Default::default(),
        )
        .unwrap();
        let e = encrypted_for(&for_eve, Some(&bound), &to).unwrap_err();
        assert!(e.message.contains("not encrypted to"), "{}", e.message);
    }
}
