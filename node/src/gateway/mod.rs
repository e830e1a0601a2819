//! The gateway to ordinary e-mail: a process of its own (`onionpost-gateway`) with a public
//! mail domain, which relays
//!
//! * from the participants it serves to the internet ([`outbound`]): a participant's node
//!   sends to the gateway's onion service, the copy signed by the sending identity
//!   ([`auth`]); the gateway checks the signature, that it serves that identity, its rate
//!   ([`rate`]) and that no replay is afoot ([`Seen`]), rewrites and scrubs the message
//!   ([`scrub`]), signs it with DKIM ([`dkim`]) and queues it for the MX of each recipient
//!   ([`relay`], STARTTLS where offered: [`tls`]);
//! * from the internet to `name@domain` ([`inbound`]): the name is mapped to the served
//!   participant's onion address, SPF, DKIM and DMARC are checked and recorded in an
//!   `Authentication-Results` field, and the message is queued for the participant's onion
//!   over the node's [`Transport`](crate::transport::Transport).
//!
//! It never relays for anyone else: no connection is trusted (loopback and onion alike),
//! the public listener takes mail only for served names in its own domain, and the
//! participants' listener only signed mail from served identities. Both directions share one
//! durable [`Queue`] (the node's spool: fsynced before the 250), retried with the node's
//! schedule and bounced with a DSN when they fail for good. See docs/gateway.md.
//!
//! Nothing here runs inside a participant's node: the node only gains the route to a
//! configured gateway (`delivery::route`) and signs what it sends there.

pub mod auth;
pub mod config;
pub mod dkim;
pub mod inbound;
pub mod outbound;
pub mod rate;
pub mod relay;
pub mod scrub;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mail_auth::MessageAuthenticator;
use onionpost_proto::onion::OnionAddress;

use crate::clock::Clock;
use crate::queue::Queue;
use config::GatewayConfig;
use dkim::Dkim;
use rate::{Limiter, Rate};

/// The `identity` of queued inbound messages (internet to participant): no participant can
/// be called this (names are letters, digits and `._-+`).
pub const INBOUND: &str = "<inbound>";

/// Message-IDs relayed recently per participant: a copy seen again within the signature
/// window is answered 250 and not relayed twice (a replay, or a retry after a lost 250).
#[derive(Debug, Default)]
pub struct Seen {
    until: Mutex<HashMap<String, f64>>,
}

impl Seen {
    fn key(participant: &str, message_id: &str) -> String {
        format!("{participant}\0{}", message_id.to_ascii_lowercase())
    }

    /// Whether `message_id` from `participant` was recorded and has not expired at `now`.
    pub fn contains(&self, participant: &str, message_id: &str, now: f64) -> bool {
        let map = self.until.lock().expect("seen lock");
        map.get(&Self::key(participant, message_id))
            .is_some_and(|&t| t > now)
    }

    /// Records `message_id` from `participant` until `until`; forgets expired ones.
    pub fn insert(&self, participant: &str, message_id: &str, now: f64, until: f64) {
        let mut map = self.until.lock().expect("seen lock");
        map.retain(|_, t| *t > now);
        map.insert(Self::key(participant, message_id), until);
    }
}

/// Everything the gateway's listeners and relay share.
pub struct Gateway {
    /// The configuration.
    pub config: GatewayConfig,
    /// The gateway's own onion address (its ed25519 key): what participants sign for.
    pub onion: OnionAddress,
    /// The gateway's key: it signs what it forwards to participants.
    key: ed25519_consensus::SigningKey,
    /// The durable queue of both directions.
    pub queue: Arc<Queue>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// DNS lookups and SPF, DKIM and DMARC checks.
    pub dns: MessageAuthenticator,
    /// The DKIM signer, if configured.
    pub dkim: Option<Dkim>,
    limiter: Mutex<Limiter>,
    seen: Seen,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("domain", &self.config.domain)
            .field("onion", &self.onion)
            .finish_non_exhaustive()
    }
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The DKIM key.
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
    /// The DNS resolver.
    #[error("setting up the DNS resolver: {0}")]
    Dns(String),
}

impl Gateway {
    /// The gateway of `config`, whose key (and so onion address) is `key`, over `queue`.
    pub fn new(
        config: GatewayConfig,
        key: ed25519_consensus::SigningKey,
        queue: Arc<Queue>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, GatewayError> {
        let dkim = match &config.dkim {
            Some(d) => Some(Dkim::load(&d.key, &config.domain, &d.selector)?),
            None => None,
        };
        let dns = resolver(&config.dns.nameservers).map_err(GatewayError::Dns)?;
        let limiter = Limiter::new(Rate {
            per_hour: config.limits.messages_per_hour,
            burst: config.limits.burst,
        });
        let onion = OnionAddress::from_public_key(key.verification_key().to_bytes());
        Ok(Arc::new(Gateway {
            config,
            onion,
            key,
            queue,
            clock,
            dns,
            dkim,
            limiter: Mutex::new(limiter),
            seen: Seen::default(),
        }))
    }

    /// The participant's token for one message now, or the seconds until it has one.
    pub fn take_rate(&self, participant: &str) -> Result<(), f64> {
        let now = self.clock.now();
        self.limiter
            .lock()
            .expect("limiter lock")
            .take(participant, now)
    }

    /// Gives back a token taken for a message that was refused after all.
    pub fn give_back_rate(&self, participant: &str) {
        self.limiter
            .lock()
            .expect("limiter lock")
            .give_back(participant);
    }

    /// The gateway's key.
    pub fn key(&self) -> &ed25519_consensus::SigningKey {
        &self.key
    }

    /// The recently relayed Message-IDs.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }
}

/// A resolver on `nameservers` (UDP and TCP), or the system's when there are none.
fn resolver(nameservers: &[std::net::SocketAddr]) -> Result<MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::config::{
        NameServerConfig, NameServerConfigGroup, ProtocolConfig, ResolverConfig, ResolverOpts,
    };
    if nameservers.is_empty() {
        return MessageAuthenticator::new_system_conf().map_err(|e| e.to_string());
    }
    let mut group = NameServerConfigGroup::with_capacity(nameservers.len() * 2);
    for &ns in nameservers {
        group.push(NameServerConfig::new(ns, ProtocolConfig::Udp));
        group.push(NameServerConfig::new(ns, ProtocolConfig::Tcp));
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), group);
    let mut opts = ResolverOpts::default();
    opts.attempts = 2;
    opts.timeout = std::time::Duration::from_secs(5);
    MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_expires_and_is_per_participant() {
        let s = Seen::default();
        s.insert("alice", "<A@x>", 0.0, 10.0);
        assert!(s.contains("alice", "<a@x>", 5.0));
        assert!(!s.contains("bob", "<a@x>", 5.0));
        assert!(!s.contains("alice", "<a@x>", 10.0));
        s.insert("bob", "<b@x>", 11.0, 20.0);
        assert!(
            !s.contains("alice", "<a@x>", 0.0),
            "expired ones are forgotten"
        );
    }
}
