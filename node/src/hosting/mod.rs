//! Mailbox hosts: mail for an identity whose node is offline, held by another identity that
//! the recipient named on the ledger (SetMailboxHosts), until the recipient's node collects
//! it. docs/hosting.md describes the whole design; in short:
//!
//! * sending ([`fallback`]): when a recipient's onion has been unreachable for
//!   `[queue] hosts_after_secs`, the runner reads the recipient's hosts from the ledger (with
//!   a proof) and sends the same encrypted copy to one of them, signed for that host by the
//!   sending identity ([`sender`]), over SMTP to the host's onion service with the
//!   recipient's own address in `RCPT TO`. A copy that is not ciphertext is never handed to
//!   a host.
//! * holding ([`Hosting::hold`], [`check`], [`store`]): a node with `[hosting] enabled`
//!   takes such mail only for identities whose ledger record names the identity whose
//!   service the mail came in on, only signed by its sending identity, only as OpenPGP
//!   ciphertext for the recipient's bound key, within per-recipient and per-sender quotas, stored durably (fsync before the 250) under
//!   `<home>/held/`, apart from its own mailboxes, for `keep_secs`.
//! * collecting ([`collect`], [`serve`], [`protocol`]): the recipient's node connects to
//!   each of its hosts, switches the SMTP session to `HELD/1` with `XHELD`, proves its
//!   identity by signing the host's challenge with its identity key, and fetches each
//!   message; it stores it durably (through the inbound stages: decrypted, verified,
//!   deduplicated) before it acknowledges it, and the host deletes it only on that
//!   acknowledgement.

pub mod check;
pub mod collect;
pub mod fallback;
pub mod protocol;
pub mod sender;
pub mod serve;
pub mod store;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use onionpost_ledger_client::{At, IdentityKey, Ledger};
use onionpost_proto::onion::OnionAddress;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::HostingConfig;
use crate::context::Context;
use crate::ledger::{LedgerError, NodeLedger};
use crate::message::{FailedRecipient, build_dsn_from};
use crate::queue::Queue;
use crate::smtp::reply::EnhancedCode;
use crate::smtp::reply::{Reply, reply};
use store::{HeldStore, HoldError};

/// The host's side: the held-mail store and the checks before anything goes into it.
pub struct Hosting {
    ledger: NodeLedger,
    store: Arc<HeldStore>,
    config: HostingConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Hosting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosting")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A 4xx for a ledger read that gave no verified answer.
pub fn ledger_unavailable(what: &str, e: &LedgerError) -> Reply {
    reply(
        451,
        [4, 4, 3],
        format!("Error: the ledger gave no verified answer about {what}; try again later ({e})"),
    )
}

impl Hosting {
    /// The host's side on `<home>/held`, checking against `ledger`. Blocks on the disk.
    pub fn open(
        home: &Path,
        config: HostingConfig,
        ledger: NodeLedger,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Arc<Self>> {
        let store = Arc::new(HeldStore::open(&home.join("held"))?);
        Ok(Arc::new(Hosting {
            ledger,
            store,
            config,
            clock,
        }))
    }

    /// The held-mail store.
    pub fn store(&self) -> &Arc<HeldStore> {
        &self.store
    }

    /// Holds `message` from envelope sender `from` for `recipient` (the address as given,
    /// at `onion`), if the ledger names one of `ours` as its host, it is ciphertext for its
    /// bound key, and it fits the quotas; `Ok` once it is on disk.
    pub async fn hold(
        &self,
        ours: &[IdentityKey],
        from: &str,
        recipient: &str,
        onion: &OnionAddress,
        message: &[u8],
    ) -> Result<(), Reply> {
        let sender_onion = check::sender_identity(from)?;
        let sender = from.to_ascii_lowercase();
        let client = self
            .ledger
            .client()
            .map_err(|e| ledger_unavailable("the recipient's mailbox hosts", &e))?;
        let v = client
            .identity(&onion.public_key(), At::Latest)
            .await
            .map_err(|e| {
                ledger_unavailable(
                    &format!("the mailbox hosts of {}", onion.hostname()),
                    &LedgerError::from(e),
                )
            })?;
        let Some(id) = v.value else {
            return Err(check::not_named(onion));
        };
        let host_key = check::named(&id.mailbox_hosts, ours, onion)?;
        let host = OnionAddress::from_public_key(host_key).hostname();
        let active = id.active_key().map(|k| k.public_key.clone());
        let (store, limits, now) = (
            self.store.clone(),
            check::Limits::from(&self.config),
            self.clock.now(),
        );
        let (who, to, data, onion) = (
            onion.public_key(),
            recipient.to_string(),
            message.to_vec(),
            *onion,
        );
        let height = v.height;
        tokio::task::spawn_blocking(move || {
            let data = sender::verify(&host_key, &who, &sender_onion.public_key(), &data)
                .map_err(|e| reply(550, [5, 7, 1], format!("Error: {e} (docs/hosting.md)")))?;
            check::encrypted_for(&data, active.as_deref(), &onion)?;
            match store.hold(&who, (&to, &sender, &host), &data, now, &limits) {
                Ok(id) => {
                    tracing::info!(%id, to = %to, height, bytes = data.len(), "held for a recipient that names us as its mailbox host");
                    Ok(())
                }
                Err(HoldError::Quota(r)) => {
                    tracing::info!(to = %to, "not held: {}", r.message);
                    Err(r)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    Err(reply(
                        451,
                        [4, 3, 0],
                        "Error: local storage error; try again later",
                    ))
                }
            }
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("hold task: {e}");
            Err(reply(451, [4, 3, 0], "Error: local error; try again later"))
        })
    }

    /// Deletes held mail older than `keep_secs`, now and then, until `shutdown`, and queues
    /// a DSN for each to its sender, from our host identity that held it.
    pub async fn sweep(
        self: Arc<Self>,
        queue: Arc<Queue>,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) {
        let every = Duration::from_secs_f64((self.config.keep_secs / 10.0).clamp(1.0, 600.0));
        loop {
            let this = self.clone();
            let (queue, ctx) = (queue.clone(), ctx.clone());
            match tokio::task::spawn_blocking(move || this.expire(&queue, &ctx)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("expiring held mail: {e}"),
                Err(e) => tracing::error!("expiry task: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One expiry round: each expired message's bounce is queued durably before the
    /// message is deleted. Blocks on the disk.
    fn expire(&self, queue: &Queue, ctx: &Context) -> io::Result<()> {
        let now = self.clock.now();
        let ids = ctx.identities();
        self.store.expire(now - self.config.keep_secs, |m, data| {
            tracing::warn!(id = %m.id, to = %m.recipient, from = %m.sender, "held mail expired uncollected; deleting");
            let host = m.host.parse::<OnionAddress>().ok();
            let Some(h) = host.and_then(|o| ids.by_onion(&o)) else {
                tracing::warn!(id = %m.id, "the host identity that held it is gone; no bounce");
                return Ok(());
            };
            if m.sender.is_empty() {
                return Ok(());
            }
            let failed = [FailedRecipient {
                address: m.recipient.clone(),
                status: EnhancedCode([4, 4, 7]),
                diagnostic: format!(
                    "held by its mailbox host {} for {} s and not collected by the recipient; deleted",
                    h.identity.onion.hostname(),
                    self.config.keep_secs
                ),
            }];
            let dsn = build_dsn_from(
                &format!("Mail Delivery System <{}>", h.identity.address()),
                &h.identity.onion,
                &m.sender,
                data,
                &failed,
                m.received as i64,
                chrono::Utc::now(),
            );
            queue.enqueue(&h.identity.name, "", std::slice::from_ref(&m.sender), &dsn, now)?;
            tracing::info!(id = %m.id, to = %m.sender, "bounce for expired held mail queued");
            Ok(())
        })?;
        Ok(())
    }
}
