//! The gateway's configuration file (TOML), given to `onionpost-gateway run --config FILE`.
//!
//! ```toml
//! domain = "gw.example"              # the public mail domain: participants are name@domain
//! hostname = "mx.gw.example"         # EHLO name and Authentication-Results id (default: domain)
//!
//! [public]                           # SMTP from the internet (the domain's MX points here)
//! listen = "0.0.0.0:25"
//! tls_cert = "/etc/onionpost-gateway/cert.pem"   # optional: STARTTLS offered with this chain
//! tls_key = "/etc/onionpost-gateway/key.pem"
//!
//! [participants]                     # SMTP from participants' nodes
//! onion = true                       # on the gateway's own onion service (needs kind = "onion")
//! listen = "127.0.0.1:2626"          # and/or on loopback, for the direct transport (tests)
//!
//! [[participant]]                    # one per served identity; nobody else is relayed for
//! name = "alice"                     # its public address: alice@gw.example
//! address = "alice@<56 characters>.onion"   # the identity (its onion is its key)
//!
//! [dkim]
//! selector = "onionpost"
//! key = "/etc/onionpost-gateway/dkim.pem"   # PEM: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8)
//!
//! [dns]                              # default: the system's resolver (/etc/resolv.conf)
//! nameservers = ["127.0.0.1:5353"]
//!
//! [relay]
//! mx_port = 25                       # the port of MX hosts (tests: a Postfix on loopback)
//! starttls = "opportunistic"         # or "never"
//! smarthost = "127.0.0.1:2525"       # optional: every outbound message goes here, no MX lookup
//!
//! [limits]
//! max_message_size = 10485760        # 552 5.3.4 beyond
//! max_recipients = 50                # 452 4.5.3 beyond
//! messages_per_hour = 100            # per participant, sustained; 451 4.7.1 beyond
//! burst = 20                         # per participant, at once
//! signature_window_secs = 600        # how far an Onionpost-Gateway signature's time may be from now
//! idle_timeout_secs = 300
//! session_timeout_secs = 600
//! max_connections = 64               # per listener
//!
//! [queue]                            # as the node's [queue]: retries, then a DSN
//! retry_base_secs = 30
//! retry_window_secs = 432000
//!
//! [transport]                        # as the node's [transport]: how participants' onions are reached
//! kind = "onion"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use onionpost_proto::onion::OnionAddress;
use serde::Deserialize;

use crate::config::{QueueConfig, TransportConfig, TransportKind};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum GatewayConfigError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid TOML for this schema.
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
    /// Valid TOML that cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The public mail domain; every served participant is `name@domain`.
    pub domain: String,
    /// The EHLO name and the Authentication-Results id; default: the domain.
    #[serde(default)]
    pub hostname: Option<String>,
    /// SMTP from the internet.
    #[serde(default)]
    pub public: Listen,
    /// SMTP from participants' nodes.
    #[serde(default)]
    pub participants: ParticipantListen,
    /// The served participants.
    #[serde(default, rename = "participant")]
    pub participant: Vec<Participant>,
    /// DKIM signing of outbound mail (absent: unsigned, which most receivers score badly).
    #[serde(default)]
    pub dkim: Option<DkimConfig>,
    /// DNS for MX, SPF, DKIM and DMARC.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Outbound SMTP.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Limits.
    #[serde(default)]
    pub limits: GatewayLimits,
    /// The queue's retry timing.
    #[serde(default)]
    pub queue: QueueConfig,
    /// How participants' onions are reached (and whether the gateway has an onion service).
    #[serde(default)]
    pub transport: TransportConfig,
}

/// The public listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Socket address to bind; absent: no listener.
    pub listen: Option<SocketAddr>,
    /// The certificate chain (PEM) for STARTTLS; with `tls_key`, STARTTLS is offered.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// Where participants' nodes connect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantListen {
    /// Serve on the gateway's own onion service (port 25); needs `[transport] kind = "onion"`.
    #[serde(default)]
    pub onion: bool,
    /// A loopback listener (the direct transport of tests). Loopback is not trusted: a
    /// message needs its sender's signature here as anywhere.
    pub listen: Option<SocketAddr>,
}

/// One served participant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// The local part of its public address.
    pub name: String,
    /// The identity's address, `name@<onion>`.
    pub address: String,
}

/// DKIM signing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The selector (the key is published at `<selector>._domainkey.<domain>`).
    pub selector: String,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// DNS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (UDP and TCP); empty: the system's resolver configuration.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

/// Whether to use STARTTLS towards MX hosts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// When the server offers it; the certificate is not checked (RFC 7435: protection
    /// against passive eavesdropping, as most MTAs do without DANE or MTA-STS).
    #[default]
    Opportunistic,
    /// Never (tests, or a smarthost on loopback).
    Never,
}

/// Outbound SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// The TCP port of MX hosts.
    pub mx_port: u16,
    /// STARTTLS.
    pub starttls: StartTls,
    /// Send everything to this host instead of looking up MX records.
    pub smarthost: Option<SocketAddr>,
    /// Concurrent outbound deliveries.
    pub concurrency: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            mx_port: 25,
            starttls: StartTls::Opportunistic,
            smarthost: None,
            concurrency: 8,
        }
    }
}

/// Limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLimits {
    /// Largest message, bytes.
    pub max_message_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Messages per participant per hour, sustained.
    pub messages_per_hour: f64,
    /// Messages per participant at once.
    pub burst: f64,
    /// How far from now an `Onionpost-Gateway` signature's time may be, seconds.
    pub signature_window_secs: u64,
    /// Client silence before 421, seconds.
    pub idle_timeout_secs: u64,
    /// Longest SMTP session, seconds.
    pub session_timeout_secs: u64,
    /// Concurrent connections per listener.
    pub max_connections: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 50,
            messages_per_hour: 100.0,
            burst: 20.0,
            signature_window_secs: 600,
            idle_timeout_secs: 300,
            session_timeout_secs: 600,
            max_connections: 64,
        }
    }
}

impl GatewayConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, GatewayConfigError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| GatewayConfigError::Read(name.clone(), e))?;
        Self::parse(&text).map_err(|e| match e {
            GatewayConfigError::Parse(_, e) => GatewayConfigError::Parse(name, e),
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, GatewayConfigError> {
        let mut cfg: GatewayConfig =
            toml::from_str(text).map_err(|e| GatewayConfigError::Parse(String::new(), e))?;
        let bad = |s: String| Err(GatewayConfigError::Invalid(s));
        cfg.domain = cfg.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !crate::delivery::route::is_external(&format!("x@{}", cfg.domain)) {
            return bad(format!(
                "domain = {:?} is not an ordinary mail domain",
                cfg.domain
            ));
        }
        let mut names = BTreeMap::new();
        for p in &mut cfg.participant {
            p.name = p.name.to_ascii_lowercase();
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
            {
                return bad(format!(
                    "[[participant]] name = {:?}: want letters, digits, . _ - +",
                    p.name
                ));
            }
            let onion = p
                .address
                .rsplit_once('@')
                .filter(|(l, _)| !l.is_empty())
                .and_then(|(_, d)| d.parse::<OnionAddress>().ok());
            if onion.is_none() {
                return bad(format!(
                    "[[participant]] {}: address = {:?} is not name@<v3 onion address>",
                    p.name, p.address
                ));
            }
            if names.insert(p.name.clone(), ()).is_some() {
                return bad(format!("[[participant]] name {:?} appears twice", p.name));
            }
        }
        if cfg.public.tls_cert.is_some() != cfg.public.tls_key.is_some() {
            return bad("[public] tls_cert and tls_key go together".into());
        }
        if cfg.participants.onion && cfg.transport.kind != TransportKind::Onion {
            return bad("[participants] onion = true needs [transport] kind = \"onion\"".into());
        }
        if cfg.limits.max_recipients < super::auth::RECIPIENTS_PER_COPY {
            return bad(format!(
                "[limits] max_recipients must be at least {} (a participant's node signs up to that many recipients per copy)",
                super::auth::RECIPIENTS_PER_COPY
            ));
        }
        if !(cfg.limits.messages_per_hour >= 0.0 && cfg.limits.burst >= 1.0) {
            return bad("[limits] messages_per_hour must be >= 0 and burst >= 1".into());
        }
        Ok(cfg)
    }

    /// The EHLO name and Authentication-Results id.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.domain)
    }

    /// The participant whose identity address is `address` (case-insensitive).
    pub fn by_address(&self, address: &str) -> Option<&Participant> {
        self.participant
            .iter()
            .find(|p| p.address.eq_ignore_ascii_case(address))
    }

    /// The participant whose public address is `address`, if it is in this gateway's domain.
    pub fn by_public(&self, address: &str) -> Option<&Participant> {
        let (local, domain) = address.rsplit_once('@')?;
        if !domain
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&self.domain)
        {
            return None;
        }
        let local = local.to_ascii_lowercase();
        self.participant.iter().find(|p| p.name == local)
    }

    /// A participant's public address.
    pub fn public_address(&self, p: &Participant) -> String {
        format!("{}@{}", p.name, self.domain)
    }

    /// Whether `address` is in this gateway's domain.
    pub fn is_ours(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_finds_participants_and_refuses_what_cannot_work() {
        let onion = OnionAddress::from_public_key([3; 32]).hostname();
        let text = format!(
            "domain = \"GW.example\"\n[public]\nlisten = \"127.0.0.1:2525\"\n\
             [participants]\nlisten = \"127.0.0.1:2626\"\n\
             [[participant]]\nname = \"Alice\"\naddress = \"alice@{onion}\"\n\
             [transport]\nkind = \"direct\"\n"
        );
        let c = GatewayConfig::parse(&text).unwrap();
        assert_eq!(c.domain, "gw.example");
        assert_eq!(c.hostname(), "gw.example");
        let alice = c.by_address(&format!("ALICE@{onion}")).unwrap();
        assert_eq!(c.public_address(alice), "alice@gw.example");
        assert_eq!(c.by_public("Alice@gw.EXAMPLE"), Some(alice));
        assert!(c.by_public("alice@other.example").is_none());
        assert!(c.by_public("bob@gw.example").is_none());
        assert!(c.is_ours("x@gw.example") && !c.is_ours("x@example.com"));
        assert_eq!(c.limits.burst, 20.0);
        assert_eq!(c.relay.starttls, StartTls::Opportunistic);
        for bad in [
            "domain = \"x.onion\"\n".to_string(),
            "domain = \"localhost\"\n".to_string(),
            "domain = \"gw.example\"\n[[participant]]\nname = \"a\"\naddress = \"a@example.com\"\n"
                .to_string(),
            format!(
                "domain = \"gw.example\"\n[[participant]]\nname = \"a\"\naddress = \"a@{onion}\"\n\
                 [[participant]]\nname = \"A\"\naddress = \"b@{onion}\"\n"
            ),
            "domain = \"gw.example\"\n[participants]\nonion = true\n[transport]\nkind = \"direct\"\n"
                .to_string(),
            "domain = \"gw.example\"\n[bogus]\n".to_string(),
        ] {
            assert!(GatewayConfig::parse(&bad).is_err(), "{bad}");
        }
    }
}
