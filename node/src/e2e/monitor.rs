//! The ledger monitor (issue 14, point 6): every `[e2e] monitor_interval_secs` it reads each
//! hosted identity's key history (verified, latest height) and checks the entries it has not
//! checked yet. An entry that binds a key this node does not hold (not in the identity's
//! keyring: someone else used the identity's ed25519 key) raises an alert: a `warn` in the
//! log, a line in `onionpost-node status`, and a message in that identity's INBOX. What was
//! checked and the alerts are kept in the identity's watch state ([`super::watch`]), so an
//! alert is raised once, and after a restart `status` still shows it.
//!
//! Correspondents' keys are watched at delivery instead (see
//! [`crate::delivery::inbound`]): a change matters on the next message, whose check reads
//! the history anyway.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::E2e;
use super::changes::{alert_text, foreign_bindings};
use super::directory::{BoundKeys, KeyEvent, bound_keys};
use super::keyring::Keyring;
use super::watch::{self, Alert, UpdateError};
use crate::context::{Context, Hosted};
use crate::message::rfc5322_date;
use crate::store::{DedupeKey, DeliverOptions, Flags, Quota, StoreError};

/// The monitor of the node's own identities.
pub struct Monitor {
    ctx: Arc<Context>,
    e2e: Arc<E2e>,
    interval: Duration,
    /// Address -> its alerts, as last read from the watch state.
    alerts: Mutex<BTreeMap<String, Vec<Alert>>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The INBOX message of an alert. Pure.
pub fn alert_message(address: &str, host: &str, alert: &Alert, now: DateTime<Utc>) -> Vec<u8> {
    format!(
        "From: onionpost node <postmaster@{host}>\r\n\
         To: <{address}>\r\n\
         Subject: Security alert: a key this node did not make is bound to {address}\r\n\
         Date: {date}\r\n\
         Message-ID: <key-alert-{seq}-{height}@{host}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This node watches the ledger for the keys bound to its identities.\r\n\
         \r\n\
         At ledger height {height}, {text}.\r\n\
         \r\n\
         Only the holder of this identity's ed25519 key can bind a key to it. From now on,\r\n\
         mail to {address} is encrypted to that key and mail signed by it verifies as\r\n\
         yours. If you did not do this elsewhere, the identity key is compromised: bind\r\n\
         your own key again (onionpost-node identity rotate-key), and tell your\r\n\
         correspondents.\r\n",
        date = rfc5322_date(now),
        seq = alert.seq,
        height = alert.height,
        text = alert.text,
    )
    .into_bytes()
}

impl Monitor {
    /// The monitor of `ctx`'s identities through `e2e`'s ledger, with the alerts already on
    /// disk (so `status` shows them from the start). Reads the disk.
    pub fn new(ctx: Arc<Context>, e2e: Arc<E2e>, interval: Duration) -> Arc<Self> {
        let mut alerts = BTreeMap::new();
        for h in ctx.identities().iter() {
            match watch::load(&watch::path_of(&h.identity)) {
                Ok(s) if !s.alerts.is_empty() => {
                    alerts.insert(h.identity.address(), s.alerts);
                }
                Ok(_) => {}
                Err(e) => tracing::error!("reading the ledger watch state: {e}"),
            }
        }
        Arc::new(Monitor {
            ctx,
            e2e,
            interval,
            alerts: Mutex::new(alerts),
        })
    }

    /// The alerts, as `status` shows them.
    pub fn alerts(&self) -> Vec<String> {
        self.alerts
            .lock()
            .expect("alerts")
            .values()
            .flat_map(|v| v.iter().map(|x| x.text.clone()))
            .collect()
    }

    /// Checks every identity now, then every interval, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.e2e.ledger.client().is_err() {
            return;
        }
        loop {
            self.check_all().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn check_all(self: &Arc<Self>) {
        let Ok(client) = self.e2e.ledger.client() else {
            return;
        };
        for h in self.ctx.identities().iter() {
            let address = h.identity.address();
            let keys = match bound_keys(client, &self.e2e.certs, &address).await {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(%address, "monitor: no verified answer about our keys: {e}");
                    continue;
                }
            };
            tracing::debug!(%address, height = keys.height, entries = keys.events.len(), "monitor: read the key history of our identity");
            let (me, h) = (self.clone(), h.clone());
            let checked = tokio::task::spawn_blocking(move || me.check(&h, &keys)).await;
            if let Err(e) = checked {
                tracing::error!("monitor task: {e}");
            }
        }
    }

    /// Checks the entries of one identity's history not checked yet; raises the alerts.
    /// Blocks on the disk.
    fn check(&self, h: &Hosted, keys: &BoundKeys) {
        let address = h.identity.address();
        let ring = Keyring::of(&h.identity);
        let updated = self.e2e.watches.update(&h.identity, |st| {
            let from = st.own_events as usize;
            if from >= keys.events.len() {
                return Ok::<_, StoreError>(st.alerts.clone());
            }
            for event in foreign_bindings(&keys.events, from, |f| ring.has_hex(f)) {
                let alert = Alert {
                    height: event.height,
                    seq: event.seq,
                    text: alert_text(&address, event, &keys.events),
                };
                raise(h, &address, event, &alert)?;
                st.alerts.push(alert);
            }
            st.own_events = keys.events.len() as u64;
            Ok(st.alerts.clone())
        });
        match updated {
            Ok(alerts) if !alerts.is_empty() => {
                self.alerts.lock().expect("alerts").insert(address, alerts);
            }
            Ok(_) => {}
            Err(UpdateError::Watch(e)) => tracing::error!("monitor: {e}"),
            Err(UpdateError::Inner(e)) => {
                tracing::error!(%address, "monitor: storing the alert message: {e}; trying again at the next check")
            }
        }
    }
}

/// Logs the alert and puts its message in the identity's INBOX (once: its Message-ID is
/// fixed, so a retry after a crash is a duplicate).
fn raise(h: &Hosted, address: &str, event: &KeyEvent, alert: &Alert) -> Result<(), StoreError> {
    tracing::warn!(
        identity = %address,
        height = event.height,
        key = %event.key_name(),
        kind = event.kind.name(),
        "ALERT: {}", alert.text
    );
    let host = h.identity.onion.hostname();
    let msg = alert_message(address, &host, alert, Utc::now());
    h.mailbox
        .deliver(
            &msg,
            DeliverOptions {
                // The Date differs at each try; the alert does not.
                dedupe: Some(DedupeKey::new(
                    &format!("<key-alert-{}-{}@{host}>", alert.seq, alert.height),
                    alert.text.as_bytes(),
                )),
                flags: Flags::FLAGGED,
                quota: Quota::Exempt,
                ..Default::default()
            },
        )
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::inbound::dedupe_key;

    #[test]
    fn the_alert_message_says_what_and_where() {
        let alert = Alert {
            height: 57,
            seq: 1,
            text: "the ledger binds to a@x.onion an OpenPGP key this node did not make: key BBBB replaced key AAAA (RotateKey) at height 57".into(),
        };
        let m =
            String::from_utf8(alert_message("a@x.onion", "x.onion", &alert, Utc::now())).unwrap();
        assert!(m.contains("Message-ID: <key-alert-1-57@x.onion>"), "{m}");
        assert!(
            m.contains("At ledger height 57, the ledger binds to a@x.onion"),
            "{m}"
        );
        assert!(m.contains("Subject: Security alert"), "{m}");
        // A message the node's own store accepts (it has a header and a Message-ID).
        assert!(dedupe_key(m.as_bytes()).is_some());
    }
}
