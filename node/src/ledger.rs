//! The ledger seam: verified reads of the ledger, as the delivery stages need them, and the
//! registration of the node's identities.
//!
//! The stages never talk gRPC or check proofs themselves: they ask a
//! [`onionpost_ledger_client::Ledger`], whose contract is that every `Ok` value was checked
//! against a proof and a root certified by validators derived from genesis. The node wires in
//! [`GrpcLedger`] with the certified policy, built from `[ledger]` ([`NodeLedger::open`]);
//! code that decides on answers is generic over the trait so its unit tests fake it.
//!
//! A node without `[ledger]` has [`NodeLedger::none`]: one-to-one mail needs no ledger, and
//! whatever needs one (list posts) is refused with [`LedgerError::NotConfigured`], which
//! says so.
//!
//! One identity, one key: an identity's ed25519 key is its onion address *and* its ledger
//! account. [`register`] signs `register_identity` with the identity's own key, so the
//! ledger's member and the mail system's recipient are the same key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use onionpost_ledger_client::{At, Config, Genesis, GrpcLedger, Ledger, RootPolicy};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};

pub use onionpost_ledger_client::{Error as ClientError, IdentityKey, List, Membership, Verified};

use crate::config::LedgerConfig;

/// Why a ledger read gave no verified answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The node has no `[ledger]` section.
    #[error(
        "this node has no [ledger] configuration; list mail and key bindings need one (endpoints, chain_id, genesis)"
    )]
    NotConfigured,
    /// The ledger client gave no verified answer.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl LedgerError {
    /// Whether asking again later may succeed (a 4xx rather than a 5xx for mail waiting on
    /// it): servers unreachable or lying, a height not yet certified.
    pub fn is_transient(&self) -> bool {
        match self {
            LedgerError::NotConfigured => false,
            LedgerError::Client(e) => e.is_transient(),
        }
    }
}

/// Why `[ledger]` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The genesis file is unusable.
    #[error("[ledger] genesis {}: {source}", .path.display())]
    Genesis {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ClientError,
    },
    /// The configured chain id is not the genesis file's.
    #[error("[ledger] chain_id is {configured:?} but the genesis file is of chain {genesis:?}")]
    ChainId {
        /// The configured one.
        configured: String,
        /// The genesis file's.
        genesis: String,
    },
    /// The client could not be created (bad endpoint, unusable checkpoint).
    #[error("[ledger]: {0}")]
    Client(#[source] ClientError),
}

/// The node's ledger: a verifying gRPC client, or none.
#[derive(Clone, Default)]
pub struct NodeLedger {
    inner: Option<(GrpcLedger, LedgerConfig)>,
}

impl std::fmt::Debug for NodeLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("NodeLedger(none)"),
            Some((_, c)) => write!(f, "NodeLedger({:?} on {:?})", c.chain_id, c.endpoints),
        }
    }
}

/// Where the checkpoint lives unless `[ledger] checkpoint` says otherwise.
pub fn default_checkpoint(home: &Path) -> PathBuf {
    home.join("ledger").join("checkpoint.json")
}

impl NodeLedger {
    /// No ledger: list mail is refused with [`LedgerError::NotConfigured`].
    pub fn none() -> Self {
        Self::default()
    }

    /// The ledger of `[ledger]` (none without it): loads the genesis file, checks the chain
    /// id, and resumes the verified walk from the checkpoint. Contacts no server yet.
    pub fn open(home: &Path, config: Option<&LedgerConfig>) -> Result<Self, SetupError> {
        let Some(c) = config else {
            return Ok(Self::none());
        };
        let genesis = Genesis::load(&c.genesis).map_err(|source| SetupError::Genesis {
            path: c.genesis.clone(),
            source,
        })?;
        if genesis.chain_id != c.chain_id {
            return Err(SetupError::ChainId {
                configured: c.chain_id.clone(),
                genesis: genesis.chain_id,
            });
        }
        let checkpoint = c
            .checkpoint
            .clone()
            .unwrap_or_else(|| default_checkpoint(home));
        if let Some(dir) = checkpoint.parent() {
            crate::fsutil::create_dir_mode(dir, 0o700)
                .map_err(|e| SetupError::Client(ClientError::Config(format!("{e}"))))?;
        }
        let mut cfg = Config::new(c.endpoints.clone(), RootPolicy::Certified(genesis));
        cfg.checkpoint = Some(checkpoint);
        cfg.rpc_timeout = Duration::from_secs(5);
        cfg.connect_timeout = Duration::from_secs(3);
        cfg.save_every = 100;
        let client = GrpcLedger::new(cfg).map_err(SetupError::Client)?;
        Ok(Self {
            inner: Some((client, c.clone())),
        })
    }

    /// The verifying client, or [`LedgerError::NotConfigured`].
    pub fn client(&self) -> Result<&GrpcLedger, LedgerError> {
        self.inner
            .as_ref()
            .map(|(c, _)| c)
            .ok_or(LedgerError::NotConfigured)
    }

    /// The `[ledger]` table, if there is one.
    pub fn config(&self) -> Option<&LedgerConfig> {
        self.inner.as_ref().map(|(_, c)| c)
    }

    /// Submits a signed transaction to the first endpoint that takes it; the server's answer
    /// (code 0: queued; otherwise the ledger's rejection code and log).
    pub async fn submit(&self, tx: pb::SignedTx) -> Result<pb::SubmitAnswer, LedgerError> {
        self.submit_from(tx, 0).await
    }

    /// Like [`NodeLedger::submit`], trying the endpoints from the `first`-th on (modulo
    /// their number), so a transaction that a server took but never had included can be
    /// handed to another one (the same signed transaction: its nonce makes it apply once).
    pub async fn submit_from(
        &self,
        tx: pb::SignedTx,
        first: usize,
    ) -> Result<pb::SubmitAnswer, LedgerError> {
        let (_, c) = self.inner.as_ref().ok_or(LedgerError::NotConfigured)?;
        let mut failures = Vec::new();
        let n = c.endpoints.len();
        for url in (0..n).map(|i| &c.endpoints[(first + i) % n]) {
            let attempt = async {
                let mut client = LedgerClient::connect(url.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                client
                    .submit_tx(tx.clone())
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(ans)) => return Ok(ans),
                Ok(Err(e)) => failures.push(format!("{url}: {e}")),
                Err(_) => failures.push(format!("{url}: timed out")),
            }
        }
        Err(LedgerError::Client(ClientError::Config(format!(
            "no ledger endpoint took the transaction: {}",
            failures.join("; ")
        ))))
    }
}

/// What [`register`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Registered now; the verified state shows it at this height.
    Registered(u64),
    /// Registered already (earlier, or at genesis), as verified at this height.
    Already(u64),
}

/// Why [`register`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No verified answer, or no server took the transaction.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The ledger refused the transaction.
    #[error("the ledger refused register_identity (code {code}): {log}")]
    Refused {
        /// The rejection code (docs/ledger.md).
        code: u32,
        /// The server's log.
        log: String,
    },
    /// Not visible in verified state within the time limit.
    #[error(
        "register_identity was accepted but is not in verified state after {0:?}; is a block producer running?"
    )]
    NotCommitted(Duration),
}

/// The ledger's rejection code for "identity already registered".
const ALREADY_REGISTERED: u32 = 8;

/// What one look at verified state says about a transaction being waited for.
enum Look<T> {
    /// It is applied: the caller's result.
    Done(T),
    /// The identity's nonce moved past the transaction's, but its effect is not there: it was
    /// included and refused by the state machine (the ledger's log says why).
    NotApplied(String),
    /// Not yet.
    Pending,
}

/// How waiting for a transaction ended, when it did not succeed.
enum Unseen {
    /// Included but not applied: what the last look saw.
    NotApplied(String),
    /// Not in verified state within the time limit.
    TimedOut,
    /// No verified answer that waiting can fix.
    Ledger(LedgerError),
}

/// Waits until `look` at the identity `who`'s verified record (at the latest certified
/// height) says `tx` is done, up to `wait` from `start`. A transaction that is not included
/// after 5 s is handed to the next server too (the same signed transaction: its nonce makes it
/// apply once), so one server that took it and died does not stall it.
async fn await_applied<T>(
    ledger: &NodeLedger,
    who: &IdentityKey,
    tx: &pb::SignedTx,
    start: Instant,
    wait: Duration,
    mut look: impl FnMut(&Verified<Option<onionpost_ledger_client::Identity>>) -> Look<T>,
) -> Result<T, Unseen> {
    let client = ledger.client().map_err(Unseen::Ledger)?;
    let mut resubmitted = Instant::now();
    let mut next_endpoint = 1;
    loop {
        if resubmitted.elapsed() > Duration::from_secs(5) {
            resubmitted = Instant::now();
            match ledger.submit_from(tx.clone(), next_endpoint).await {
                Ok(a) => tracing::info!(code = a.code, "transaction resubmitted"),
                Err(e) => tracing::warn!("resubmitting the transaction: {e}"),
            }
            next_endpoint += 1;
        }
        match client.identity(who, At::Latest).await {
            Ok(v) => match look(&v) {
                Look::Done(t) => return Ok(t),
                Look::NotApplied(why) => return Err(Unseen::NotApplied(why)),
                Look::Pending => {}
            },
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(Unseen::Ledger(e.into())),
        }
        if start.elapsed() > wait {
            return Err(Unseen::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `id`'s nonce shows that the transaction with `nonce` was included (and so, if its
/// effect is absent, refused).
fn nonce_spent(id: &onionpost_ledger_client::Identity, nonce: u64) -> bool {
    id.record.next_nonce > nonce
}

/// Registers the identity of `key` on the ledger under `display_name` (its first
/// transaction, nonce 0) and waits, up to `wait`, until verified state shows it. An identity
/// registered already (at genesis, or before) is left alone.
pub async fn register(
    ledger: &NodeLedger,
    key: &SigningKey,
    display_name: &str,
    wait: Duration,
) -> Result<Registration, RegisterError> {
    let client = ledger.client()?;
    let who: IdentityKey = key.verification_key().to_bytes();
    let start = Instant::now();
    // A chain that has just started has no certified block yet: wait for one.
    let known = loop {
        match client.identity(&who, At::Latest).await {
            Ok(v) => break v,
            Err(e) if e.is_transient() && start.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(LedgerError::from(e).into()),
        }
    };
    if known.value.is_some() {
        return Ok(Registration::Already(known.height));
    }
    let chain_id = &ledger.config().expect("configured").chain_id;
    let tx = onionpost_proto::tx::sign(
        key,
        chain_id,
        0,
        Action::RegisterIdentity(pb::RegisterIdentity {
            display_name: display_name.to_string(),
        }),
    );
    let ans = ledger.submit(tx.clone()).await?;
    match ans.code {
        0 => {}
        ALREADY_REGISTERED => {}
        code => {
            return Err(RegisterError::Refused { code, log: ans.log });
        }
    }
    let fresh = ans.code == 0;
    await_applied(ledger, &who, &tx, start, wait, |v| match &v.value {
        Some(_) if fresh => Look::Done(Registration::Registered(v.height)),
        Some(_) => Look::Done(Registration::Already(v.height)),
        None => Look::Pending,
    })
    .await
    .map_err(|e| match e {
        Unseen::Ledger(e) => RegisterError::Ledger(e),
        Unseen::TimedOut | Unseen::NotApplied(_) => RegisterError::NotCommitted(wait),
    })
}

/// What [`bind_key`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Bound now (BindKey: the identity's first key), as verified at this height.
    Bound(u64),
    /// Bound now in place of another key (RotateKey), as verified at this height.
    Rotated(u64),
    /// This key was the active one already, as verified at this height.
    Already(u64),
}

/// Why [`bind_key`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No verified answer, or no server took the transaction.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The identity is not registered on the ledger.
    #[error("the identity is not registered on the ledger; run `identity register` first")]
    NotRegistered,
    /// The ledger refused the transaction.
    #[error("the ledger refused the key binding (code {code}): {log}")]
    Refused {
        /// The rejection code (docs/ledger.md).
        code: u32,
        /// The server's log.
        log: String,
    },
    /// Not visible in verified state within the time limit.
    #[error(
        "the key binding was accepted but is not in verified state after {0:?}; is a block producer running?"
    )]
    NotCommitted(Duration),
}

/// The identity's record at the latest verified height, waiting out transient errors (a
/// chain that has just started) until `deadline`.
async fn latest_identity(
    client: &GrpcLedger,
    who: &IdentityKey,
    start: Instant,
    wait: Duration,
) -> Result<Verified<Option<onionpost_ledger_client::Identity>>, LedgerError> {
    loop {
        match client.identity(who, At::Latest).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && start.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Binds the OpenPGP certificate `cert` (binary transferable public key) to the identity
/// of `key`, signed by that key: BindKey if it has no active key, RotateKey if another key is
/// active, nothing if this one is. Waits, up to `wait`, until verified state shows it.
pub async fn bind_key(
    ledger: &NodeLedger,
    key: &SigningKey,
    cert: &[u8],
    wait: Duration,
) -> Result<Binding, BindError> {
    let client = ledger.client()?;
    let who: IdentityKey = key.verification_key().to_bytes();
    let start = Instant::now();
    let known = latest_identity(client, &who, start, wait).await?;
    let Some(id) = known.value else {
        return Err(BindError::NotRegistered);
    };
    let e2e_key = pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key: cert.to_vec(),
    };
    let rotate = match id.active_key() {
        Some(k) if k.public_key == cert => return Ok(Binding::Already(known.height)),
        Some(_) => true,
        None => false,
    };
    let action = if rotate {
        Action::RotateKey(pb::RotateKey {
            new_key: Some(e2e_key),
        })
    } else {
        Action::BindKey(pb::BindKey { key: Some(e2e_key) })
    };
    let chain_id = &ledger.config().expect("configured").chain_id;
    let tx = onionpost_proto::tx::sign(key, chain_id, id.record.next_nonce, action);
    let ans = ledger.submit(tx.clone()).await?;
    if ans.code != 0 {
        return Err(BindError::Refused {
            code: ans.code,
            log: ans.log,
        });
    }
    let nonce = id.record.next_nonce;
    await_applied(ledger, &who, &tx, start, wait, |v| match &v.value {
        Some(id) if id.active_key().is_some_and(|k| k.public_key == cert) => {
            Look::Done(if rotate {
                Binding::Rotated(v.height)
            } else {
                Binding::Bound(v.height)
            })
        }
        Some(id) if nonce_spent(id, nonce) => Look::NotApplied(format!(
            "included by height {} but not applied (the ledger's log says why; history has {} entries, active key {})",
            v.height,
            id.key_history.len(),
            if id.active_key().is_some() {
                "another one"
            } else {
                "none"
            }
        )),
        _ => Look::Pending,
    })
    .await
    .map_err(|e| bind_unseen(e, wait))
}

/// A [`BindError`] for a binding or revocation that did not show.
fn bind_unseen(e: Unseen, wait: Duration) -> BindError {
    match e {
        Unseen::Ledger(e) => BindError::Ledger(e),
        Unseen::NotApplied(log) => BindError::Refused { code: 0, log },
        Unseen::TimedOut => BindError::NotCommitted(wait),
    }
}

/// Revokes the active OpenPGP key of the identity of `key` (RevokeKey, naming the key by
/// its id so a stale revocation fails); waits until verified state shows no active key.
/// Returns the height, or `None` if no key was active.
pub async fn revoke_key(
    ledger: &NodeLedger,
    key: &SigningKey,
    reason: &str,
    wait: Duration,
) -> Result<Option<u64>, BindError> {
    use sha2::Digest;
    let client = ledger.client()?;
    let who: IdentityKey = key.verification_key().to_bytes();
    let start = Instant::now();
    let known = latest_identity(client, &who, start, wait).await?;
    let Some(id) = known.value else {
        return Err(BindError::NotRegistered);
    };
    let Some(active) = id.active_key() else {
        return Ok(None);
    };
    let chain_id = &ledger.config().expect("configured").chain_id;
    let tx = onionpost_proto::tx::sign(
        key,
        chain_id,
        id.record.next_nonce,
        Action::RevokeKey(pb::RevokeKey {
            key_id: sha2::Sha256::digest(&active.public_key).to_vec(),
            reason: reason.to_string(),
        }),
    );
    let ans = ledger.submit(tx.clone()).await?;
    if ans.code != 0 {
        return Err(BindError::Refused {
            code: ans.code,
            log: ans.log,
        });
    }
    let nonce = id.record.next_nonce;
    await_applied(ledger, &who, &tx, start, wait, |v| match &v.value {
        Some(id) if id.active_key().is_none() => Look::Done(Some(v.height)),
        Some(id) if nonce_spent(id, nonce) => Look::NotApplied(format!(
            "included by height {} but not applied: a key is still active (the ledger's log says why)",
            v.height
        )),
        _ => Look::Pending,
    })
    .await
    .map_err(|e| bind_unseen(e, wait))
}

/// Why [`set_mailbox_hosts`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// No verified answer, or no server took the transaction.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The identity is not registered on the ledger.
    #[error("the identity is not registered on the ledger; run `identity register` first")]
    NotRegistered,
    /// The ledger refused the transaction (a host not registered, named twice, or the
    /// identity itself; more than the ledger's limit).
    #[error("the ledger refused set_mailbox_hosts (code {code}): {log}")]
    Refused {
        /// The rejection code (docs/ledger.md).
        code: u32,
        /// The server's log.
        log: String,
    },
    /// Not visible in verified state within the time limit.
    #[error(
        "set_mailbox_hosts was accepted but is not in verified state after {0:?}; is a block producer running?"
    )]
    NotCommitted(Duration),
}

/// What [`set_mailbox_hosts`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostsOutcome {
    /// Set now, as verified at this height.
    Set(u64),
    /// The ledger named exactly these hosts already, as verified at this height.
    Already(u64),
}

/// Names `hosts` (in this order; empty: none) as the mailbox hosts of the identity of `key`
/// (SetMailboxHosts, signed by that key) and waits, up to `wait`, until verified state shows
/// them.
pub async fn set_mailbox_hosts(
    ledger: &NodeLedger,
    key: &SigningKey,
    hosts: &[IdentityKey],
    wait: Duration,
) -> Result<HostsOutcome, HostsError> {
    let client = ledger.client()?;
    let who: IdentityKey = key.verification_key().to_bytes();
    let start = Instant::now();
    let known = latest_identity(client, &who, start, wait).await?;
    let Some(id) = known.value else {
        return Err(HostsError::NotRegistered);
    };
    if id.mailbox_hosts == hosts {
        return Ok(HostsOutcome::Already(known.height));
    }
    let chain_id = &ledger.config().expect("configured").chain_id;
    let nonce = id.record.next_nonce;
    let tx = onionpost_proto::tx::sign(
        key,
        chain_id,
        nonce,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: hosts.iter().map(|h| h.to_vec()).collect(),
        }),
    );
    let ans = ledger.submit(tx.clone()).await?;
    if ans.code != 0 {
        return Err(HostsError::Refused {
            code: ans.code,
            log: ans.log,
        });
    }
    await_applied(ledger, &who, &tx, start, wait, |v| match &v.value {
        Some(id) if id.mailbox_hosts == hosts => Look::Done(HostsOutcome::Set(v.height)),
        Some(id) if nonce_spent(id, nonce) => Look::NotApplied(format!(
            "included by height {} but not applied (the ledger's log says why)",
            v.height
        )),
        _ => Look::Pending,
    })
    .await
    .map_err(|e| match e {
        Unseen::Ledger(e) => HostsError::Ledger(e),
        Unseen::NotApplied(log) => HostsError::Refused { code: 0, log },
        Unseen::TimedOut => HostsError::NotCommitted(wait),
    })
}

/// The mailbox hosts the ledger names for the identity of `who`, as verified at the latest
/// height (waiting out a chain that has just started, up to `wait`).
pub async fn mailbox_hosts(
    ledger: &NodeLedger,
    who: &IdentityKey,
    wait: Duration,
) -> Result<Verified<Vec<IdentityKey>>, LedgerError> {
    let client = ledger.client()?;
    let start = Instant::now();
    loop {
        match client.mailbox_hosts(who, At::Latest).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && start.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ledger_says_what_is_missing_and_is_not_transient() {
        let l = NodeLedger::none();
        let e = l.client().err().expect("no client without [ledger]");
        assert!(matches!(e, LedgerError::NotConfigured));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("[ledger]"), "{e}");
        assert!(LedgerError::Client(ClientError::NothingCertified).is_transient());
    }

    #[test]
    fn a_genesis_of_another_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("genesis.json");
        std::fs::write(
            &g,
            format!(
                r#"{{"chain_id":"real","validators":[{{"pub_key":"{}","power":1}}]}}"#,
                hex::encode(
                    SigningKey::new(rand_core::OsRng)
                        .verification_key()
                        .to_bytes()
                )
            ),
        )
        .unwrap();
        let mut c = LedgerConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
            chain_id: "other".into(),
            genesis: g,
            checkpoint: None,
            height_window: 100,
            relay_timeout_secs: 30.0,
        };
        let e = NodeLedger::open(dir.path(), Some(&c)).unwrap_err();
        assert!(matches!(e, SetupError::ChainId { .. }), "{e}");
        c.chain_id = "real".into();
        let l = NodeLedger::open(dir.path(), Some(&c)).unwrap();
        assert!(l.client().is_ok());
        c.genesis = dir.path().join("missing.json");
        assert!(matches!(
            NodeLedger::open(dir.path(), Some(&c)),
            Err(SetupError::Genesis { .. })
        ));
    }
}
