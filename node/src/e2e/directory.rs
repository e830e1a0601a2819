//! The keys the ledger binds to an identity, read with a verified proof: the active key
//! (what outgoing mail is encrypted to) and the whole key history (what incoming mail is
//! verified against, so mail signed by an earlier key still verifies).
//!
//! [`bound_keys`] is the edge (a [`Ledger`] read); [`keys_from`] is the pure part, which
//! turns the verified record into certificates and validity intervals.
//!
//! Every delivery reads these (the sender's node for the recipient's key, the recipient's
//! node for the sender's history), and parsing a certificate checks its self-signatures:
//! [`Certs`] remembers what each key's bytes parsed to. It caches parsing only: which keys
//! are bound, replaced or revoked is read from the verified record every time, so a key
//! revoked on the ledger stops counting at the first height that says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use onionpost_e2e::PublicCert;
use onionpost_ledger_client::{At, Error as ClientError, Identity, IdentityKey, Ledger};
use onionpost_proto::onion::OnionAddress;
use onionpost_proto::v1::key_history_entry::Kind;

/// How one key of the history ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Replaced by a rotation, or revoked.
    pub revoked: bool,
    /// The height of the entry that ended it.
    pub height: u64,
    /// Its block time (Unix seconds).
    pub time: u64,
}

/// One key of an identity's history that parses as a certificate.
#[derive(Debug, Clone)]
pub struct HistoryKey {
    /// The certificate.
    pub cert: PublicCert,
    /// The height it was bound at.
    pub height: u64,
    /// The block time it was bound at (Unix seconds).
    pub time: u64,
    /// When it stopped being the active key (None: it is the active key).
    pub ended: Option<Ended>,
}

/// What one entry of an identity's key history did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEventKind {
    /// BindKey: the first key (or the first after a revocation).
    Bind,
    /// RotateKey: a new key replaced the active one.
    Rotate,
    /// RevokeKey: the active key was revoked.
    Revoke,
}

impl KeyEventKind {
    /// The transaction's name.
    pub fn name(self) -> &'static str {
        match self {
            KeyEventKind::Bind => "BindKey",
            KeyEventKind::Rotate => "RotateKey",
            KeyEventKind::Revoke => "RevokeKey",
        }
    }
}

/// One entry of an identity's key history, as the monitor and the key-change marks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// Its position in the history (0 = first).
    pub seq: u64,
    /// What it did.
    pub kind: KeyEventKind,
    /// The OpenPGP fingerprint of the key bound or revoked (None: the bytes do not parse).
    pub fingerprint: Option<String>,
    /// The ledger's key id (hex SHA-256 of the key bytes).
    pub key_id: String,
    /// The height it was applied at.
    pub height: u64,
    /// The reason a revocation gave.
    pub reason: String,
}

impl KeyEvent {
    /// The key named the way a person can compare it: the fingerprint, or the ledger's key id.
    pub fn key_name(&self) -> String {
        match &self.fingerprint {
            Some(f) => f.clone(),
            None => format!("(unparsable, ledger key id {})", self.key_id),
        }
    }
}

/// What the ledger binds to one identity, as verified at `height`.
#[derive(Debug, Clone)]
pub struct BoundKeys {
    /// The address asked about.
    pub address: String,
    /// Its ledger identity.
    pub identity: IdentityKey,
    /// The verified height of the answer.
    pub height: u64,
    /// The active key: none (never bound, revoked, or not registered), its certificate, or
    /// why the bound bytes are unusable.
    pub active: Option<Result<PublicCert, String>>,
    /// Every key ever bound that parses, oldest first.
    pub history: Vec<HistoryKey>,
    /// Whether the identity ever bound a key (even one that does not parse, or was revoked).
    pub ever_bound: bool,
    /// Every entry of the key history, oldest first.
    pub events: Vec<KeyEvent>,
}

/// The most certificates [`Certs`] keeps; past it, it starts again empty.
pub const CERTS_KEPT: usize = 4096;

/// What one key's bytes parse to: the certificate, or why they are not one.
pub type Parsed = Arc<Result<PublicCert, String>>;

/// What key bytes bound on the ledger parse to, by those bytes (a memo of
/// [`PublicCert::from_bytes`], which is a function of the bytes alone).
#[derive(Debug, Default)]
pub struct Certs {
    parsed: Mutex<HashMap<Vec<u8>, Parsed>>,
    /// (hits, misses), for tests and logs.
    stats: Mutex<(u64, u64)>,
}

impl Certs {
    /// The certificate in `bytes`, or why they are not one (the e2e crate's error, in words).
    pub fn parse(&self, bytes: &[u8]) -> Parsed {
        if let Some(hit) = self.parsed.lock().expect("certs").get(bytes).cloned() {
            self.stats.lock().expect("cert stats").0 += 1;
            return hit;
        }
        // Parsed outside the lock: other deliveries go on meanwhile.
        let parsed = Arc::new(PublicCert::from_bytes(bytes).map_err(|e| e.to_string()));
        self.stats.lock().expect("cert stats").1 += 1;
        let mut map = self.parsed.lock().expect("certs");
        if map.len() >= CERTS_KEPT {
            map.clear();
        }
        map.insert(bytes.to_vec(), parsed.clone());
        parsed
    }

    /// `(hits, misses)` so far.
    pub fn stats(&self) -> (u64, u64) {
        *self.stats.lock().expect("cert stats")
    }
}

/// The ledger identity (its ed25519 key) of an address at an onion, if it is one.
pub fn identity_of(address: &str) -> Option<IdentityKey> {
    let (_, domain) = address.rsplit_once('@')?;
    domain.parse::<OnionAddress>().ok().map(|o| o.public_key())
}

/// The history entries as events. Pure (`certs` only remembers parsing).
fn events_of(id: &Identity, certs: &Certs) -> Vec<KeyEvent> {
    id.key_history
        .iter()
        .map(|e| KeyEvent {
            seq: e.seq,
            kind: match Kind::try_from(e.kind).unwrap_or(Kind::Bind) {
                Kind::Bind => KeyEventKind::Bind,
                Kind::Rotate => KeyEventKind::Rotate,
                Kind::Revoke => KeyEventKind::Revoke,
            },
            fingerprint: e.key.as_ref().and_then(|k| {
                certs
                    .parse(&k.public_key)
                    .as_ref()
                    .as_ref()
                    .ok()
                    .map(|c| c.fingerprint().to_hex())
            }),
            key_id: hex::encode(&e.key_id),
            height: e.height,
            reason: e.reason.clone(),
        })
        .collect()
}

/// Turns a verified identity record of `who` into certificates for `address`. Pure
/// (`certs` only remembers what key bytes parse to).
pub fn keys_from(
    identity: Option<&Identity>,
    who: IdentityKey,
    address: &str,
    height: u64,
    certs: &Certs,
) -> BoundKeys {
    let Some(id) = identity else {
        return BoundKeys {
            address: address.to_string(),
            identity: who,
            height,
            active: None,
            history: Vec::new(),
            ever_bound: false,
            events: Vec::new(),
        };
    };
    let active = id
        .active_key()
        .map(|k| match certs.parse(&k.public_key).as_ref() {
            Ok(c) if c.holds(address) => Ok(c.clone()),
            Ok(c) => Err(format!(
                "the key bound to {address} on the ledger ({}) has no User ID with that address",
                c.fingerprint()
            )),
            Err(e) => Err(format!(
                "the key bound to {address} on the ledger does not parse: {e}"
            )),
        });
    let mut history: Vec<HistoryKey> = Vec::new();
    // Index into `history` of the active key while walking (None: none, or unparsable).
    let mut current: Option<usize> = None;
    for entry in &id.key_history {
        let kind = Kind::try_from(entry.kind).unwrap_or(Kind::Bind);
        if let Some(i) = current.take() {
            history[i].ended = Some(Ended {
                revoked: kind == Kind::Revoke,
                height: entry.height,
                time: entry.time,
            });
        }
        if kind == Kind::Revoke {
            continue;
        }
        let Some(key) = &entry.key else { continue };
        match certs.parse(&key.public_key).as_ref() {
            Ok(cert) => {
                current = Some(history.len());
                history.push(HistoryKey {
                    cert: cert.clone(),
                    height: entry.height,
                    time: entry.time,
                    ended: None,
                });
            }
            Err(e) => {
                tracing::warn!(%address, seq = entry.seq, "a key in the ledger's history does not parse: {e}");
            }
        }
    }
    BoundKeys {
        address: address.to_string(),
        identity: who,
        height,
        active,
        history,
        ever_bound: !id.key_history.is_empty(),
        events: events_of(id, certs),
    }
}

/// Reads the keys bound to the identity of `address` at the latest verified height; `None`
/// if the address is not at an onion (no ledger identity). `certs` remembers parsed keys.
pub async fn bound_keys<L: Ledger>(
    ledger: &L,
    certs: &Certs,
    address: &str,
) -> Result<Option<BoundKeys>, ClientError> {
    let Some(who) = identity_of(address) else {
        return Ok(None);
    };
    let v = ledger.identity(&who, At::Latest).await?;
    Ok(Some(keys_from(
        v.value.as_ref(),
        who,
        address,
        v.height,
        certs,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionpost_e2e::SecretCert;
    use onionpost_proto::v1 as pb;

    fn entry(seq: u64, kind: Kind, key: &[u8], height: u64) -> pb::KeyHistoryEntry {
        pb::KeyHistoryEntry {
            seq,
            kind: kind as i32,
            key_id: vec![],
            key: Some(pb::E2eKey {
                algorithm: "openpgp".into(),
                public_key: key.to_vec(),
            }),
            height,
            time: height * 10,
            reason: String::new(),
        }
    }

    #[test]
    fn history_gives_intervals_and_the_active_key_is_checked() {
        let onion = OnionAddress::from_public_key([3; 32]);
        let addr = format!("alice@{}", onion.hostname());
        assert_eq!(identity_of(&addr), Some([3; 32]));
        assert_eq!(identity_of("bob@example.org"), None);
        let k1 = SecretCert::generate(rand::rngs::OsRng, &addr).unwrap();
        let k2 = SecretCert::generate(rand::rngs::OsRng, &addr).unwrap();
        let b1 = k1.public().to_bytes().unwrap();
        let b2 = k2.public().to_bytes().unwrap();
        let id = Identity {
            record: pb::IdentityRecord {
                active_key: Some(pb::E2eKey {
                    algorithm: "openpgp".into(),
                    public_key: b2.clone(),
                }),
                ..Default::default()
            },
            key_history: vec![entry(0, Kind::Bind, &b1, 5), entry(1, Kind::Rotate, &b2, 9)],
            mailbox_hosts: vec![],
        };
        // One cache for every read below, as a node has: it must change no answer.
        let certs = Certs::default();
        let keys = keys_from(Some(&id), [3; 32], &addr, 12, &certs);
        assert_eq!(certs.stats().1, 2, "each key's bytes parsed once");
        assert_eq!(keys.height, 12);
        assert!(keys.ever_bound);
        let active = keys.active.clone().unwrap().unwrap();
        assert_eq!(active.fingerprint(), k2.fingerprint());
        assert_eq!(keys.history.len(), 2);
        assert_eq!(
            keys.history[0].ended,
            Some(Ended {
                revoked: false,
                height: 9,
                time: 90
            })
        );
        assert_eq!(keys.history[1].ended, None);

        // Another address's key bound here is unusable (outgoing mail must not use it).
        let other = keys_from(
            Some(&id),
            [3; 32],
            &format!("carol@{}", onion.hostname()),
            12,
            &certs,
        );
        assert!(other.active.unwrap().is_err());

        // Revoked: no active key, and the history says when it ended.
        let mut revoked = id.clone();
        revoked.record.active_key = None;
        revoked.key_history.push(entry(2, Kind::Revoke, &b2, 11));
        let keys = keys_from(Some(&revoked), [3; 32], &addr, 13, &certs);
        assert_eq!(
            certs.stats().1,
            2,
            "the revoked key's certificate came from the cache"
        );
        assert!(
            keys.active.is_none(),
            "a cached certificate is not active once revoked"
        );
        assert!(keys.history[1].ended.unwrap().revoked);
        let kinds: Vec<_> = keys.events.iter().map(|e| (e.kind, e.height)).collect();
        assert_eq!(
            kinds,
            [
                (KeyEventKind::Bind, 5),
                (KeyEventKind::Rotate, 9),
                (KeyEventKind::Revoke, 11)
            ]
        );
        assert_eq!(
            keys.events[2].fingerprint,
            Some(k2.fingerprint().to_hex()),
            "a revocation names the key it revoked"
        );

        // Garbage bound: unusable, never "no key".
        let mut bad = id.clone();
        bad.record.active_key.as_mut().unwrap().public_key = b"junk".to_vec();
        assert!(
            keys_from(Some(&bad), [3; 32], &addr, 12, &certs)
                .active
                .unwrap()
                .is_err()
        );

        let none = keys_from(None, [3; 32], &addr, 12, &certs);
        assert!(none.active.is_none() && !none.ever_bound);
    }

    #[test]
    fn the_cert_cache_remembers_parsing_only_and_stays_bounded() {
        let onion = OnionAddress::from_public_key([4; 32]);
        let addr = format!("dave@{}", onion.hostname());
        let k = SecretCert::generate(rand::rngs::OsRng, &addr).unwrap();
        let bytes = k.public().to_bytes().unwrap();
        let certs = Certs::default();
        let first = certs.parse(&bytes);
        let again = certs.parse(&bytes);
        assert!(Arc::ptr_eq(&first, &again), "parsed once");
        assert_eq!(certs.stats(), (1, 1));
        assert_eq!(
            first.as_ref().as_ref().unwrap().fingerprint(),
            k.fingerprint()
        );
        // Bytes that are not a key are remembered as such, with the reason.
        assert!(certs.parse(b"junk").is_err());
        assert!(certs.parse(b"junk").is_err());
        assert_eq!(certs.stats(), (2, 2));
        // A damaged copy of the key is other bytes: parsed (and refused) on its own.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(certs.parse(&damaged).is_err());
        assert_eq!(certs.stats(), (2, 3));
        // Bounded: past CERTS_KEPT it starts again.
        for i in 0..CERTS_KEPT {
            certs.parse(format!("junk {i}").as_bytes());
        }
        assert!(certs.parsed.lock().unwrap().len() <= CERTS_KEPT);
        let (_, misses) = certs.stats();
        certs.parse(&bytes);
        assert_eq!(
            certs.stats().1,
            misses + 1,
            "forgotten when it started again"
        );
    }
}
