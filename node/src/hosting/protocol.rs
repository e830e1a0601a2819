//! The collection protocol, `HELD/1`, without I/O: its commands and answers as values, the
//! challenge a collector signs, and the checks of that signature.
//!
//! A collector connects to its host's onion service on port 25 like any SMTP client, says
//! `EHLO`, then `XHELD`; the host answers `220 2.0.0 HELD/1` and the connection speaks this
//! line protocol from then on (docs/hosting.md has the whole exchange):
//!
//! ```text
//! S: * HELD/1 <challenge: 64 hex>
//! C: AUTH <recipient onion> <host onion> <signature: 128 hex>
//! S: + OK <n>                  | - ERR <why>       (and close)
//! C: LIST
//! S: * <id> <size>             (n times)
//! S: + OK <n>
//! C: FETCH <id>
//! S: + DATA <size>\r\n<size bytes>
//! C: ACK <id>                  (the collector has stored it durably)
//! S: + OK deleted
//! C: QUIT
//! S: + OK bye
//! ```
//!
//! The signature is the recipient identity's ed25519 signature over [`challenge_message`]:
//! a domain separator, the host's and the recipient's keys and the host's fresh challenge, so
//! it cannot be replayed to another host or in another session.

use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use onionpost_ledger_client::IdentityKey;
use onionpost_proto::onion::OnionAddress;

/// The verb that switches an SMTP session on a host to this protocol, and what the host
/// says when it switches.
pub use crate::smtp::session::{COLLECT_SWITCH as SWITCH_TEXT, COLLECT_VERB as VERB};

/// Domain separator of the signed challenge.
pub const CONTEXT: &[u8] = b"onionpost held-mail collection v1\n";

/// Longest command line (CRLF included).
pub const MAX_LINE: usize = 512;

/// The bytes a collector signs to prove it is `recipient` to `host` in the session that
/// `challenge` began.
pub fn challenge_message(
    host: &IdentityKey,
    recipient: &IdentityKey,
    challenge: &[u8; 32],
) -> Vec<u8> {
    [CONTEXT, &host[..], &recipient[..], &challenge[..]].concat()
}

/// Signs the challenge as the recipient identity of `key`.
pub fn sign_challenge(key: &SigningKey, host: &IdentityKey, challenge: &[u8; 32]) -> [u8; 64] {
    let me = key.verification_key().to_bytes();
    key.sign(&challenge_message(host, &me, challenge))
        .to_bytes()
}

/// Whether `signature` proves `recipient` to `host` for `challenge` (the recipient's key is
/// its onion address: no ledger read needed).
pub fn check_signature(
    host: &IdentityKey,
    recipient: &IdentityKey,
    challenge: &[u8; 32],
    signature: &[u8; 64],
) -> bool {
    let Ok(vk) = VerificationKey::try_from(*recipient) else {
        return false;
    };
    vk.verify(
        &Signature::from(*signature),
        &challenge_message(host, recipient, challenge),
    )
    .is_ok()
}

/// A collector's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Proves the collector is `recipient`, speaking to `host`.
    Auth {
        /// The collecting identity.
        recipient: OnionAddress,
        /// The host identity it thinks it speaks to.
        host: OnionAddress,
        /// Its signature over the challenge.
        signature: [u8; 64],
    },
    /// The ids and sizes of what is held.
    List,
    /// One message's bytes.
    Fetch(String),
    /// The collector stored this message durably: delete it.
    Ack(String),
    /// End.
    Quit,
}

/// Parses one command line (without its line end). `Err` is the text of the `- ERR` answer.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    match (verb.as_str(), args.as_slice()) {
        ("AUTH", [r, h, sig]) => {
            let recipient = r.parse().map_err(|_| format!("not an onion: {r}"))?;
            let host = h.parse().map_err(|_| format!("not an onion: {h}"))?;
            let signature = hex::decode(sig)
                .ok()
                .and_then(|s| <[u8; 64]>::try_from(s).ok())
                .ok_or("the signature must be 128 hex digits")?;
            Ok(Command::Auth {
                recipient,
                host,
                signature,
            })
        }
        ("LIST", []) => Ok(Command::List),
        ("FETCH", [id]) => Ok(Command::Fetch(id.to_string())),
        ("ACK", [id]) => Ok(Command::Ack(id.to_string())),
        ("QUIT", []) => Ok(Command::Quit),
        ("AUTH" | "LIST" | "FETCH" | "ACK" | "QUIT", _) => {
            Err(format!("wrong arguments for {verb}"))
        }
        _ => Err("unknown command (AUTH, LIST, FETCH, ACK, QUIT)".into()),
    }
}

/// Formats a command line (with CRLF).
pub fn format(c: &Command) -> String {
    match c {
        Command::Auth {
            recipient,
            host,
            signature,
        } => format!(
            "AUTH {} {} {}\r\n",
            recipient.hostname(),
            host.hostname(),
            hex::encode(signature)
        ),
        Command::List => "LIST\r\n".into(),
        Command::Fetch(id) => format!("FETCH {id}\r\n"),
        Command::Ack(id) => format!("ACK {id}\r\n"),
        Command::Quit => "QUIT\r\n".into(),
    }
}

/// A host's answer line, parsed by the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `* HELD/1 <challenge>`.
    Challenge([u8; 32]),
    /// `* <id> <size>`: one LIST entry.
    Entry(String, u64),
    /// `+ DATA <size>`: that many bytes follow.
    Data(u64),
    /// `+ OK ...`.
    Ok(String),
    /// `- ERR ...`.
    Err(String),
}

/// Parses one answer line (without its line end).
pub fn parse_answer(line: &str) -> Option<Answer> {
    if let Some(rest) = line.strip_prefix("* HELD/1 ") {
        let c = hex::decode(rest.trim()).ok()?;
        return Some(Answer::Challenge(c.try_into().ok()?));
    }
    if let Some(rest) = line.strip_prefix("+ DATA ") {
        return rest.trim().parse().ok().map(Answer::Data);
    }
    if let Some(rest) = line.strip_prefix("+ OK") {
        return Some(Answer::Ok(rest.trim().to_string()));
    }
    if let Some(rest) = line.strip_prefix("- ERR") {
        return Some(Answer::Err(rest.trim().to_string()));
    }
    let rest = line.strip_prefix("* ")?;
    let (id, size) = rest.split_once(' ')?;
    Some(Answer::Entry(id.to_string(), size.trim().parse().ok()?))
}

/// Formats an answer line (with CRLF).
pub fn format_answer(a: &Answer) -> String {
    match a {
        Answer::Challenge(c) => format!("* {SWITCH_TEXT} {}\r\n", hex::encode(c)),
        Answer::Entry(id, size) => format!("* {id} {size}\r\n"),
        Answer::Data(n) => format!("+ DATA {n}\r\n"),
        Answer::Ok(t) if t.is_empty() => "+ OK\r\n".into(),
        Answer::Ok(t) => format!("+ OK {t}\r\n"),
        Answer::Err(t) => format!("- ERR {}\r\n", t.replace(['\r', '\n'], " ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_proves_one_recipient_to_one_host_for_one_challenge() {
        let key = SigningKey::new(rand_core::OsRng);
        let me = key.verification_key().to_bytes();
        let (host, other) = ([1u8; 32], [2u8; 32]);
        let ch = [9u8; 32];
        let sig = sign_challenge(&key, &host, &ch);
        assert!(check_signature(&host, &me, &ch, &sig));
        assert!(!check_signature(&other, &me, &ch, &sig), "another host");
        assert!(
            !check_signature(&host, &me, &[8; 32], &sig),
            "another session"
        );
        assert!(
            !check_signature(&host, &other, &ch, &sig),
            "another recipient"
        );
    }

    #[test]
    fn commands_and_answers_round_trip() {
        let r = OnionAddress::from_public_key([5; 32]);
        let h = OnionAddress::from_public_key([6; 32]);
        for c in [
            Command::Auth {
                recipient: r,
                host: h,
                signature: [7; 64],
            },
            Command::List,
            Command::Fetch("1-abc".into()),
            Command::Ack("1-abc".into()),
            Command::Quit,
        ] {
            let line = format(&c);
            assert_eq!(parse(line.trim_end()).unwrap(), c, "{line}");
        }
        assert!(parse("FETCH").is_err());
        assert!(parse("DELE 1").is_err());
        assert!(parse("AUTH x y z").is_err());
        for a in [
            Answer::Challenge([3; 32]),
            Answer::Entry("1-abc".into(), 42),
            Answer::Data(42),
            Answer::Ok("3".into()),
            Answer::Err("no".into()),
        ] {
            let line = format_answer(&a);
            assert_eq!(parse_answer(line.trim_end()).unwrap(), a, "{line}");
        }
    }
}
