//! Participants to the internet: the SMTP service of the participants' listener (the
//! gateway's onion service, or its loopback stand-in). [`decide`] is the pure core; the
//! [`ParticipantService`] adds the clock, the rate limiter, the dedupe and the queue.
//!
//! Every refusal is permanent (5xx) except the rate limit (451 4.7.1) and local trouble
//! (451 4.3.0), so a participant's node bounces what can never go and retries what can.

use std::sync::Arc;

use onionpost_proto::onion::OnionAddress;

use super::auth::{self, AuthError};
use super::config::GatewayConfig;
use super::scrub::{self, Names, ScrubError};
use super::{Gateway, Seen};
use crate::message::message_id;
use crate::smtp::reply::{Reply, reply};
use crate::smtp::server::Service;
use crate::smtp::session::{Envelope, Policy};

/// A message the gateway will relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The participant's name (its public address's local part).
    pub participant: String,
    /// The envelope sender it gets: its public address.
    pub from: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// The scrubbed message, not yet DKIM-signed.
    pub message: Vec<u8>,
    /// What the dedupe remembers: its Message-ID and envelope recipients (a node sends big
    /// recipient lists as several copies of one message); empty without a Message-ID.
    pub message_id: String,
}

/// Checks a message from a participant's node and makes the copy to relay. Pure: `now` is
/// the gateway's Unix time. See the module documentation of [`super::auth`] and
/// [`super::scrub`] for what is checked and rewritten.
pub fn decide(
    cfg: &GatewayConfig,
    gateway: &OnionAddress,
    env: &Envelope,
    now: u64,
) -> Result<Relay, Reply> {
    let sender_onion = env
        .from
        .rsplit_once('@')
        .filter(|(l, _)| !l.is_empty())
        .and_then(|(_, d)| d.parse::<OnionAddress>().ok())
        .ok_or_else(|| {
            reply(
                550,
                [5, 7, 1],
                "Error: relaying denied: the envelope sender must be a participant's name@<onion> identity",
            )
        })?;
    let verified = auth::verify(
        &gateway.public_key(),
        &sender_onion.public_key(),
        &env.recipients,
        &env.data,
        now,
        cfg.limits.signature_window_secs,
    )
    .map_err(|e| match e {
        AuthError::Missing => reply(
            530,
            [5, 7, 0],
            format!("Error: authentication required: {e}"),
        ),
        AuthError::Malformed | AuthError::Invalid | AuthError::Stale { .. } => {
            reply(535, [5, 7, 8], format!("Error: authentication failed: {e}"))
        }
    })?;
    let Some(p) = cfg.by_address(&env.from) else {
        return Err(reply(
            550,
            [5, 7, 1],
            format!(
                "Error: relaying denied: {} is not a participant this gateway serves",
                env.from
            ),
        ));
    };
    if let Some(r) = env.recipients.iter().find(|r| cfg.is_ours(r)) {
        // Participants reach each other over onions; through here it would cross the
        // internet for nothing and tell the gateway who writes to whom twice.
        return Err(reply(
            550,
            [5, 7, 1],
            format!("Error: {r} is a participant of this gateway: send to its onion address"),
        ));
    }
    let public = cfg.public_address(p);
    let names = Names {
        onion_address: &p.address,
        public_address: &public,
        domain: &cfg.domain,
    };
    let message = scrub::outbound(&verified.copy, &names).map_err(|e| match e {
        ScrubError::FromMismatch(_) => reply(550, [5, 7, 1], format!("Error: {e}")),
    })?;
    let message_id = match message_id(&message) {
        Some(id) => {
            let mut r: Vec<String> = env
                .recipients
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect();
            r.sort();
            format!("{id} {}", r.join(","))
        }
        None => String::new(),
    };
    Ok(Relay {
        participant: p.name.clone(),
        from: public,
        recipients: env.recipients.clone(),
        message,
        message_id,
    })
}

/// The session policy of the participants' listener: any ordinary address as a recipient
/// (whether the sender may send there is decided once the message and its signature are in).
#[derive(Debug, Clone, Copy)]
pub struct ParticipantPolicy;

impl Policy for ParticipantPolicy {
    fn accepts(&self, address: &str) -> bool {
        crate::delivery::route::is_external(address)
    }

    fn authenticate(&self, _user: &str, _password: &str) -> Option<String> {
        None
    }

    fn refusal(&self, _address: &str) -> Option<Reply> {
        Some(reply(
            550,
            [5, 1, 2],
            "Error: this gateway relays to ordinary addresses (name@domain) only",
        ))
    }
}

/// The participants' listener.
#[derive(Debug, Clone)]
pub struct ParticipantService(pub Arc<Gateway>);

fn remember(seen: &Seen, r: &Relay, now: f64, window: f64) {
    if !r.message_id.is_empty() {
        seen.insert(&r.participant, &r.message_id, now, now + 2.0 * window);
    }
}

impl Service for ParticipantService {
    type Policy = ParticipantPolicy;

    fn policy(&self) -> ParticipantPolicy {
        ParticipantPolicy
    }

    async fn accept(&self, env: Envelope) -> Result<(), Reply> {
        let g = &self.0;
        let now = g.clock.now();
        let r = decide(&g.config, &g.onion, &env, now.max(0.0) as u64).inspect_err(|e| {
            tracing::warn!(from = %env.from, reply = %crate::smtp::reply::ReplyExt::one_line(e), "participant message refused");
        })?;
        let window = g.config.limits.signature_window_secs as f64;
        if !r.message_id.is_empty() && g.seen().contains(&r.participant, &r.message_id, now) {
            tracing::info!(participant = %r.participant, "already relayed this Message-ID; not again");
            return Ok(());
        }
        if let Err(wait) = g.take_rate(&r.participant) {
            tracing::warn!(participant = %r.participant, wait, "rate limit");
            return Err(reply(
                451,
                [4, 7, 1],
                format!(
                    "Error: rate limit of this gateway reached ({} messages an hour); try again in {} s",
                    g.config.limits.messages_per_hour,
                    wait.ceil().min(1e9) as u64
                ),
            ));
        }
        let signed = match &g.dkim {
            Some(d) => match d.sign(&r.message) {
                Ok(m) => m,
                Err(e) => {
                    g.give_back_rate(&r.participant);
                    tracing::error!("{e}");
                    return Err(reply(451, [4, 3, 0], "Error: local error; try again later"));
                }
            },
            None => r.message.clone(),
        };
        let q = g.queue.clone();
        let (who, from, rcpts) = (r.participant.clone(), r.from.clone(), r.recipients.clone());
        let queued =
            tokio::task::spawn_blocking(move || q.enqueue(&who, &from, &rcpts, &signed, now)).await;
        match queued {
            Ok(Ok(m)) => {
                remember(g.seen(), &r, now, window);
                tracing::info!(id = %m.id, participant = %r.participant, rcpts = r.recipients.len(), "queued for the internet");
                Ok(())
            }
            Ok(Err(e)) => {
                g.give_back_rate(&r.participant);
                tracing::error!("spooling: {e}");
                Err(reply(
                    451,
                    [4, 3, 0],
                    "Error: local storage error; try again later",
                ))
            }
            Err(e) => {
                g.give_back_rate(&r.participant);
                tracing::error!("spool task: {e}");
                Err(reply(451, [4, 3, 0], "Error: local error; try again later"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_consensus::SigningKey;

    fn setup() -> (GatewayConfig, OnionAddress, SigningKey, String) {
        let key = SigningKey::new(rand_core::OsRng);
        let onion = OnionAddress::from_public_key(key.verification_key().to_bytes());
        let address = format!("alice@{}", onion.hostname());
        let cfg = GatewayConfig::parse(&format!(
            "domain = \"gw.example\"\n[[participant]]\nname = \"alice\"\naddress = \"{address}\"\n"
        ))
        .unwrap();
        let gw = OnionAddress::from_public_key([9; 32]);
        (cfg, gw, key, address)
    }

    fn env(from: &str, rcpts: &[&str], data: Vec<u8>) -> Envelope {
        Envelope {
            from: from.into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            data,
            authenticated: None,
        }
    }

    #[test]
    fn a_served_identity_with_its_signature_is_relayed_under_its_public_name() {
        let (cfg, gw, key, me) = setup();
        let rcpts = vec!["bob@example.com".to_string()];
        let msg =
            format!("From: {me}\r\nTo: bob@example.com\r\nMessage-ID: <1@x.onion>\r\n\r\nhi\r\n");
        let data = auth::attach(&key, &gw.public_key(), &rcpts, 1000, msg.as_bytes());
        let r = decide(&cfg, &gw, &env(&me, &["bob@example.com"], data), 1000).unwrap();
        assert_eq!(r.from, "alice@gw.example");
        assert_eq!(r.participant, "alice");
        assert_eq!(r.message_id, "<1@gw.example> bob@example.com");
        let text = String::from_utf8(r.message).unwrap();
        assert!(text.starts_with("From: <alice@gw.example>\r\n"), "{text}");
        assert!(
            !text.contains(".onion") && !text.contains("Onionpost"),
            "{text}"
        );
    }

    #[test]
    fn every_way_around_the_signature_is_refused() {
        let (cfg, gw, key, me) = setup();
        let rcpts = vec!["bob@example.com".to_string()];
        let msg = format!("From: {me}\r\n\r\nhi\r\n");
        let code = |e: Envelope, now| {
            decide(&cfg, &gw, &e, now)
                .map(|_| ())
                .map_err(|r| (r.code, r.esc))
        };
        // No signature at all (as from 127.0.0.1 or over the onion: connections prove nothing).
        assert_eq!(
            code(
                env(&me, &["bob@example.com"], msg.clone().into_bytes()),
                1000
            ),
            Err((530, [5, 7, 0]))
        );
        // Not an identity as the envelope sender: an outsider relaying outside to outside.
        assert_eq!(
            code(
                env(
                    "spammer@example.net",
                    &["bob@example.com"],
                    msg.clone().into_bytes()
                ),
                1000
            ),
            Err((550, [5, 7, 1]))
        );
        // Signed by another key than the envelope sender's (forged).
        let other = SigningKey::new(rand_core::OsRng);
        let forged = auth::attach(&other, &gw.public_key(), &rcpts, 1000, msg.as_bytes());
        assert_eq!(
            code(env(&me, &["bob@example.com"], forged), 1000),
            Err((535, [5, 7, 8]))
        );
        // Signed for other recipients than the envelope's.
        let good = auth::attach(&key, &gw.public_key(), &rcpts, 1000, msg.as_bytes());
        assert_eq!(
            code(env(&me, &["eve@example.org"], good.clone()), 1000),
            Err((535, [5, 7, 8]))
        );
        // Replayed after the window.
        assert_eq!(
            code(env(&me, &["bob@example.com"], good.clone()), 1000 + 601),
            Err((535, [5, 7, 8]))
        );
        // A valid signature of an identity the gateway does not serve.
        let stranger = SigningKey::new(rand_core::OsRng);
        let s_onion = OnionAddress::from_public_key(stranger.verification_key().to_bytes());
        let s_addr = format!("eve@{}", s_onion.hostname());
        let s_msg = format!("From: {s_addr}\r\n\r\nhi\r\n");
        let s_data = auth::attach(&stranger, &gw.public_key(), &rcpts, 1000, s_msg.as_bytes());
        assert_eq!(
            code(env(&s_addr, &["bob@example.com"], s_data), 1000),
            Err((550, [5, 7, 1]))
        );
        // Header From not the envelope sender.
        let spoof = "From: ceo@example.com\r\n\r\nhi\r\n";
        let sp = auth::attach(&key, &gw.public_key(), &rcpts, 1000, spoof.as_bytes());
        assert_eq!(
            code(env(&me, &["bob@example.com"], sp), 1000),
            Err((550, [5, 7, 1]))
        );
        // A participant's public address through the gateway.
        let ours = vec!["carol@gw.example".to_string()];
        let o = auth::attach(&key, &gw.public_key(), &ours, 1000, msg.as_bytes());
        assert_eq!(
            code(env(&me, &["carol@gw.example"], o), 1000),
            Err((550, [5, 7, 1]))
        );
        // And the good one passes.
        assert_eq!(code(env(&me, &["bob@example.com"], good), 1000), Ok(()));
        assert!(ParticipantPolicy.accepts("bob@example.com"));
        assert!(!ParticipantPolicy.accepts(&me));
    }
}
