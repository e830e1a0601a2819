//! End-to-end OpenPGP done by the node, with keys bound on the ledger (issue 14, phase 2).
//!
//! * [`keyring`]: each identity's OpenPGP keys on disk (current and older ones);
//! * [`directory`]: the keys the ledger binds to an identity, read with verified proofs;
//! * [`trust`]: trust paths from the receiving identity's own trust statements;
//! * [`changes`], [`watch`], [`monitor`]: key changes of correspondents (`$KeyChanged`) and
//!   alerts for bindings of the node's own identities that it did not make;
//! * [`E2e`] (this file): the async edge the delivery stages call: recipient key lookups
//!   for [`crate::delivery::outbound::protect`], the From identity's keys for
//!   [`crate::delivery::inbound::authenticate`], and the identities' secret keys, cached.
//!
//! The decisions are the stages' pure functions; this module only gathers their inputs.

pub mod changes;
pub mod directory;
pub mod keyring;
pub mod monitor;
pub mod trust;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use onionpost_e2e::SecretCert;
use onionpost_ledger_client::{At, Ledger};
use onionpost_proto::onion::OnionAddress;

use crate::config::{E2eConfig, UnverifiedPolicy};
use crate::delivery::inbound::SenderKeys;
use crate::delivery::outbound::{RecipientKey, deferred, protect, protection};
use crate::identity::Identity;
use crate::ledger::{LedgerError, NodeLedger};
use crate::lists::address::parse_member_address;
use crate::smtp::reply::{Reply, reply};
use directory::{Certs, bound_keys, identity_of};
use keyring::{Keyring, KeyringError};
use onionpost_ledger_client::IdentityKey;
use trust::{Trust, trust_in};
use watch::Watches;

/// An identity's secret keys as cached: the current fingerprint, and every key (the current
/// one first).
type CachedKeys = (String, Arc<Vec<SecretCert>>);

/// The end-to-end edge: the ledger, the keyrings, the policy.
pub struct E2e {
    ledger: NodeLedger,
    config: E2eConfig,
    /// Keyring directory -> (current fingerprint, every key with the current first).
    secrets: Mutex<HashMap<PathBuf, CachedKeys>>,
    /// The identities' ledger watch state (key changes seen, alerts).
    pub watches: Watches,
    /// What key bytes bound on the ledger parse to.
    pub certs: Certs,
}

/// The single From address of a message, lower-cased (None: none, or several).
pub fn from_address(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?;
    let mut addrs = from.iter().filter_map(|a| a.address());
    let one = addrs.next()?;
    if addrs.next().is_some() {
        return None;
    }
    Some(one.to_ascii_lowercase())
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e")
            .field("ledger", &self.ledger)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn ledger_unavailable(what: &str, e: &LedgerError) -> Reply {
    if e.is_transient() {
        reply(
            451,
            [4, 4, 3],
            format!(
                "Error: the ledger gave no verified answer about {what}; try again later ({e})"
            ),
        )
    } else {
        reply(
            451,
            [4, 3, 5],
            format!("Error: the ledger client needs its operator ({what}); try again later ({e})"),
        )
    }
}

impl E2e {
    /// The edge over `ledger` (none: mail is signed only, and incoming signatures are
    /// reported as unchecked).
    pub fn new(ledger: NodeLedger, config: E2eConfig) -> Arc<Self> {
        Arc::new(E2e {
            ledger,
            config,
            secrets: Mutex::new(HashMap::new()),
            watches: Watches::default(),
            certs: Certs::default(),
        })
    }

    /// How often the monitor checks the node's own identities on the ledger.
    pub fn monitor_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.monitor_interval_secs.max(1))
    }

    /// What `recipient`'s trust statements say about `from`, read at `height` (the height
    /// the sender's keys were read at), expiry judged by this node's clock.
    pub async fn trust(&self, recipient: &IdentityKey, from: &IdentityKey, height: u64) -> Trust {
        let Ok(client) = self.ledger.client() else {
            return Trust::Unknown("this node has no ledger".into());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        trust_in(
            client,
            recipient,
            from,
            height,
            self.config.trust_depth,
            now,
        )
        .await
    }

    /// The policy for unverified mail claiming a bound identity.
    pub fn policy(&self) -> UnverifiedPolicy {
        self.config.unverified_from_bound
    }

    /// What the ledger binds to `address`, for outgoing mail to it.
    pub async fn recipient_key(&self, address: &str) -> RecipientKey {
        let Ok(client) = self.ledger.client() else {
            return RecipientKey::Unbound;
        };
        match bound_keys(client, &self.certs, address).await {
            Ok(None) => RecipientKey::Unbound,
            Ok(Some(k)) => match k.active {
                None => RecipientKey::Unbound,
                Some(Ok(cert)) => RecipientKey::Bound(Box::new(cert)),
                Some(Err(why)) => RecipientKey::Unusable(why),
            },
            Err(e) => RecipientKey::Unusable(format!(
                "no verified answer from the ledger about the key of {address}: {e}"
            )),
        }
    }

    /// The copy of `data` from `sender` to `recipients` (one destination) as it goes on
    /// the wire: signed, and encrypted when every recipient has a bound key. List copies
    /// (signed by the list protocol) and, with `[e2e] enabled = false`, everything go as
    /// they are. `Err` is the outcome for every recipient of the copy (a 4xx: retried).
    pub async fn protect(
        self: &Arc<Self>,
        sender: &Identity,
        recipients: &[String],
        data: &[u8],
    ) -> Result<Vec<u8>, Reply> {
        if !self.config.enabled || recipients.iter().any(|r| parse_member_address(r).is_some()) {
            return Ok(data.to_vec());
        }
        let mut keys = Vec::with_capacity(recipients.len());
        for r in recipients {
            keys.push(self.recipient_key(r).await);
        }
        tracing::debug!(rcpts = ?recipients, "protecting a copy");
        self.seal(sender, keys, data).await
    }

    /// What the ledger binds to the list member `who`, known by its identity key rather than
    /// an address: its active key, usable only if one of its User IDs is at the member's
    /// onion.
    pub async fn member_key(&self, who: &IdentityKey) -> RecipientKey {
        let Ok(client) = self.ledger.client() else {
            return RecipientKey::Unbound;
        };
        let onion = OnionAddress::from_public_key(*who).hostname();
        let v = match client.identity(who, At::Latest).await {
            Ok(v) => v,
            Err(e) => {
                return RecipientKey::Unusable(format!(
                    "no verified answer from the ledger about the key of list member {onion}: {e}"
                ));
            }
        };
        let Some(bound) = v.value.as_ref().and_then(|id| id.active_key()) else {
            return RecipientKey::Unbound;
        };
        match &*self.certs.parse(&bound.public_key) {
            Ok(c) if c.addresses().iter().any(|a| identity_of(a) == Some(*who)) => {
                RecipientKey::Bound(Box::new(c.clone()))
            }
            Ok(c) => RecipientKey::Unusable(format!(
                "the key bound to list member {onion} ({}) has no User ID at that onion",
                c.fingerprint()
            )),
            Err(e) => RecipientKey::Unusable(format!(
                "the key bound to list member {onion} does not parse: {e}"
            )),
        }
    }

    /// A list post from `sender` to `members` (the list's members at the post's height) as
    /// it goes to all of them: one signed message, encrypted to every member when each has a
    /// bound key (with `Autocrypt-Gossip` inside, so members learn each other's keys), signed
    /// only when some member has none; `Err` (a 4xx, no post) when some member's key is
    /// unusable: never sent in clear to a member that has a key. As submitted with
    /// `[e2e] enabled = false`.
    pub async fn protect_post(
        self: &Arc<Self>,
        sender: &Identity,
        members: &[IdentityKey],
        data: &[u8],
    ) -> Result<Vec<u8>, Reply> {
        if !self.config.enabled {
            return Ok(data.to_vec());
        }
        let me = sender.onion.public_key();
        let keys = futures::future::join_all(
            members
                .iter()
                .filter(|m| **m != me)
                .map(|m| self.member_key(m)),
        )
        .await;
        self.seal(sender, keys, data).await
    }

    /// Signs (and encrypts, as [`protection`] decides for `keys`) `data` with `sender`'s
    /// current key, off the async workers.
    async fn seal(
        self: &Arc<Self>,
        sender: &Identity,
        keys: Vec<RecipientKey>,
        data: &[u8],
    ) -> Result<Vec<u8>, Reply> {
        if let crate::delivery::outbound::Protection::Defer(why) = protection(&keys) {
            tracing::warn!("not sending: {why}");
            return Err(deferred(&why));
        }
        let (e2e, sender, data) = (self.clone(), sender.clone(), data.to_vec());
        tokio::task::spawn_blocking(move || {
            let secrets = e2e.secrets(&sender).map_err(|e| keyring_failure(&e))?;
            let how = protection(&keys);
            protect(rand::rngs::OsRng, &data, &secrets[0], &how)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("protect task: {e}");
            Err(reply(451, [4, 3, 0], "Error: local error; try again later"))
        })
    }

    /// The keys the ledger binds to the From identity of `message`, for the checks of
    /// incoming mail. `Err`: no verified answer (the sender retries).
    pub async fn sender_keys(&self, message: &[u8]) -> Result<SenderKeys, Reply> {
        let Ok(client) = self.ledger.client() else {
            return Ok(SenderKeys::Unchecked(
                "this node has no ledger to check it against",
            ));
        };
        let Some(from) = from_address(message) else {
            return Ok(SenderKeys::Unchecked(
                "the message has no single From address",
            ));
        };
        match bound_keys(client, &self.certs, &from).await {
            Ok(Some(k)) => Ok(SenderKeys::Ledger(Box::new(k))),
            Ok(None) => Ok(SenderKeys::Unchecked(
                "the From address is not at an onion identity",
            )),
            Err(e) => Err(ledger_unavailable(
                &format!("the keys of {from}"),
                &LedgerError::from(e),
            )),
        }
    }

    /// An identity's secret keys, the current one first (created if it has none). Cached
    /// until the keyring's current key changes. Blocks on the disk.
    pub fn secrets(&self, identity: &Identity) -> Result<Arc<Vec<SecretCert>>, KeyringError> {
        let ring = Keyring::of(identity);
        let now = ring.current_fingerprint()?;
        if let Some(fpr) = &now
            && let Some((cached, keys)) = self.secrets.lock().expect("secrets").get(ring.dir())
            && cached == fpr
        {
            return Ok(keys.clone());
        }
        let keys = Arc::new(ring.all()?);
        let fpr = keys[0].fingerprint().to_hex();
        self.secrets
            .lock()
            .expect("secrets")
            .insert(ring.dir().to_path_buf(), (fpr, keys.clone()));
        Ok(keys)
    }
}

/// The outcome of a copy whose sender's key cannot be read (the operator must look).
fn keyring_failure(e: &KeyringError) -> Reply {
    tracing::error!("reading the sender's OpenPGP key: {e}");
    reply(
        451,
        [4, 3, 0],
        "Error: the sender's OpenPGP key cannot be read; try again later",
    )
}
