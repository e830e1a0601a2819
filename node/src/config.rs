//! The node's configuration file (TOML), given to `onionpost-node run --config FILE`.
//!
//! ```toml
//! [smtp]                      # a loopback inbound listener, for the direct transport (tests)
//! listen = "127.0.0.1:2525"
//! [submission]                # loopback only, AUTH PLAIN required
//! listen = "127.0.0.1:2587"
//! [imap]                      # loopback only
//! listen = "127.0.0.1:2143"
//! [limits]
//! max_message_size = 26214400
//! max_recipients = 100
//! idle_timeout_secs = 300
//! session_timeout_secs = 600
//! max_connections = 64
//! mailbox_quota_bytes = 2147483648   # 0: no limit
//! [queue]
//! retry_base_secs = 30
//! retry_max_secs = 3600
//! retry_window_secs = 432000
//! retry_jitter = 0.5
//! concurrency = 16
//! connections_per_destination = 4
//! hosts_after_secs = 1800     # then the recipient's mailbox hosts (negative: never)
//! [hosting]                   # holding mail for others (docs/hosting.md)
//! enabled = false             # true: hold mail for identities that name ours as hosts
//! max_messages_per_recipient = 1000
//! max_bytes_per_recipient = 268435456
//! max_messages_per_sender = 200
//! max_bytes_per_sender = 67108864
//! keep_secs = 1209600
//! collect_every_secs = 300    # our identities collect from their hosts (0: never)
//! [gateway]                   # mail to ordinary addresses (docs/gateway.md)
//! onion = "abc...xyz.onion"   # the gateway's onion host name (its ed25519 key)
//! [transport]
//! kind = "direct"             # tests only; the default is "onion"
//! [transport.direct]          # onion host -> loopback socket address
//! "abc...xyz.onion" = "127.0.0.1:2526"
//! ```
//!
//! List mail needs the ledger (`[ledger]`): the gRPC endpoints of its servers, its chain id,
//! and the chain's `genesis.json`, got out of band (the one thing the node takes on faith;
//! every answer is checked against app hashes certified by validators derived from it).
//! Without `[ledger]`, one-to-one mail works as always and list mail is refused, saying why.
//!
//! ```toml
//! [ledger]
//! endpoints = ["http://127.0.0.1:9090", "http://127.0.0.2:9090"]
//! chain_id = "onionpost-devnet"
//! genesis = "/etc/onionpost/genesis.json"
//! checkpoint = "/var/lib/onionpost/ledger-checkpoint.json"  # default: <home>/ledger/checkpoint.json
//! height_window = 100000     # a post may name a height at most this far below the latest
//! relay_timeout_secs = 30    # a relay not acknowledged by then goes to the next member too
//! ```
//!
//! End-to-end OpenPGP (`[e2e]`, optional): every outgoing message is signed with the
//! identity's OpenPGP key, and encrypted when every recipient has a key bound on the ledger
//! (verified with a proof); incoming mail is verified against the keys the ledger binds to its
//! From identity and marked `$Verified` / `$Unverified` / `$Encrypted`.
//!
//! ```toml
//! [e2e]
//! enabled = true                  # false: send mail as submitted (to measure the cost)
//! unverified_from_bound = "mark"  # or "refuse": 550 for mail whose From has a bound key
//!                                 # but that is not validly signed by it
//! trust_depth = 4                 # longest chain of trust statements reported (1 to 6)
//! monitor_interval_secs = 30      # how often the node's own key bindings are checked
//! ```
//!
//! The onion transport (arti, the default): every identity publishes its own onion service
//! from its own Tor client, and outbound mail goes to `<onion>.onion:25` over Tor. Without `[transport.onion.private]` it
//! uses the public Tor network; with it, a private network (as `onionpost-devnet tor up`
//! prints):
//!
//! ```toml
//! [transport]
//! kind = "onion"
//! [transport.onion]
//! state_dir = "/var/lib/onionpost/arti"     # default: <home>/arti
//! [transport.onion.private]
//! authorities = [ { v3ident = "<40 hex>", dir = "127.0.0.1:7001" } ]
//! fallbacks = [ { rsa_identity = "<40 hex>", ed_identity = "<base64>", orport = "127.0.0.1:7000" } ]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use serde::Deserialize;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid TOML for this schema.
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
    /// A client-facing listener on a non-loopback address.
    #[error("{0} must listen on a loopback address, not {1}")]
    NotLoopback(&'static str, SocketAddr),
    /// A `[ledger]` table that cannot work.
    #[error("[ledger]: {0}")]
    Ledger(String),
    /// An `[e2e]` table that cannot work.
    #[error("[e2e]: {0}")]
    E2e(String),
    /// A `[gateway]` table that cannot work.
    #[error("[gateway]: {0}")]
    Gateway(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inbound SMTP listener.
    #[serde(default)]
    pub smtp: Listener,
    /// Submission listener for local mail clients.
    #[serde(default)]
    pub submission: Listener,
    /// IMAP listener for local mail clients.
    #[serde(default)]
    pub imap: Listener,
    /// Protocol limits.
    #[serde(default)]
    pub limits: Limits,
    /// Outbound queue timing.
    #[serde(default)]
    pub queue: QueueConfig,
    /// How outbound connections reach onion addresses.
    #[serde(default)]
    pub transport: TransportConfig,
    /// The ledger, for list mail and end-to-end keys (absent: no list mail, mail signed
    /// only).
    #[serde(default)]
    pub ledger: Option<LedgerConfig>,
    /// End-to-end OpenPGP.
    #[serde(default)]
    pub e2e: E2eConfig,
    /// Mailbox hosting: holding mail for identities that name this node's identities as
    /// their hosts, and collecting this node's identities' mail from their hosts.
    #[serde(default)]
    pub hosting: HostingConfig,
    /// The gateway to ordinary e-mail that serves this node's identities (absent: mail to
    /// addresses outside `.onion` is refused at submission).
    #[serde(default)]
    pub gateway: Option<GatewayRoute>,
}

/// The gateway this node's identities send ordinary e-mail through (the `[gateway]` table;
/// see docs/gateway.md). Mail for an address outside `.onion` goes to the gateway's onion
/// service, signed by the sending identity (`gateway::auth`); the gateway relays it only for
/// the identities its operator configured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    /// The gateway's onion host name, `<56 characters>.onion`: its ed25519 key, which the
    /// sending identity's signature names so that it is valid for this gateway alone.
    pub onion: String,
}

impl GatewayRoute {
    /// The gateway's onion address (checked by [`Config::parse`]).
    pub fn address(&self) -> Option<OnionAddress> {
        self.onion.parse().ok()
    }
}

/// Mailbox hosting (the `[hosting]` table; see `hosting` and docs/hosting.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostingConfig {
    /// Hold mail for identities that name one of this node's identities as a mailbox host
    /// on the ledger (needs `[ledger]`). Default false: a node holds nobody's mail unless
    /// its operator says so.
    pub enabled: bool,
    /// Most messages held for one recipient identity (452 4.2.2 beyond).
    pub max_messages_per_recipient: usize,
    /// Most bytes held for one recipient identity (452 4.2.2 beyond; a message larger than
    /// this on its own: 552 5.3.4).
    pub max_bytes_per_recipient: u64,
    /// Most messages held from one sending identity, for all recipients together (452 4.7.1
    /// beyond).
    pub max_messages_per_sender: usize,
    /// Most bytes held from one sending identity, for all recipients together.
    pub max_bytes_per_sender: u64,
    /// How long held mail is kept for its recipient to collect, seconds; older mail is
    /// bounced to its sender (a DSN from the host identity) and deleted.
    pub keep_secs: f64,
    /// How often this node's identities collect their held mail from their hosts, seconds
    /// (also once at start). 0: never.
    pub collect_every_secs: f64,
}

impl Default for HostingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_messages_per_recipient: 1000,
            max_bytes_per_recipient: 256 * 1024 * 1024,
            max_messages_per_sender: 200,
            max_bytes_per_sender: 64 * 1024 * 1024,
            keep_secs: 14.0 * 86400.0,
            collect_every_secs: 300.0,
        }
    }
}

/// End-to-end OpenPGP settings (the `[e2e]` table).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct E2eConfig {
    /// Sign (and, where every recipient's key is bound, encrypt) outgoing mail. Default
    /// true; false sends mail as submitted (for measuring what end-to-end costs).
    pub enabled: bool,
    /// What to do with incoming mail whose From identity has a key bound on the ledger but
    /// that is unsigned or not validly signed by it.
    pub unverified_from_bound: UnverifiedPolicy,
    /// The most trust statements on a chain from the receiving identity to the sender that
    /// the `Authentication-Results` header reports (1 to 6; default 4).
    pub trust_depth: u32,
    /// Seconds between the monitor's checks of the node's own identities on the ledger
    /// (default 30).
    pub monitor_interval_secs: u64,
}

impl Default for E2eConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            unverified_from_bound: UnverifiedPolicy::Mark,
            trust_depth: 4,
            monitor_interval_secs: 30,
        }
    }
}

/// What to do with mail that claims a bound identity in From but is not validly signed by
/// its key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnverifiedPolicy {
    /// Store it marked `$Unverified` with `pgp=fail` (or `none`).
    #[default]
    Mark,
    /// Refuse it: 550 5.7.1.
    Refuse,
}

/// How to reach the ledger and what to trust (the `[ledger]` table).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// gRPC addresses of ledger servers (`http://host:port`), tried in order with fail-over.
    pub endpoints: Vec<String>,
    /// The chain id; must equal the genesis file's.
    pub chain_id: String,
    /// The chain's `genesis.json`.
    pub genesis: PathBuf,
    /// Where the verified walk of the chain is kept between runs; default
    /// `<home>/ledger/checkpoint.json`.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// How far below the receiving node's latest verified height a post's height may be
    /// (see `lists`); default [`DEFAULT_HEIGHT_WINDOW`].
    #[serde(default = "default_height_window")]
    pub height_window: u64,
    /// Seconds a relayed post may stay unacknowledged before the next member on the ring is
    /// sent a copy too (see `lists::broadcast`); default 30.
    #[serde(default = "default_relay_timeout")]
    pub relay_timeout_secs: f64,
}

/// The default `[ledger] height_window`: 100,000 blocks, about 28 hours at one block a
/// second. It bounds how old a list state (member set, posting policy, size limit) an author
/// may sign a post against; removals are caught anyway, by the checks at the receiver's
/// latest height. It must outlast a post's way to an offline member (relays, the queue's
/// retries, a mailbox host): a post that arrives older than the window is refused for good.
/// The first default, 100 blocks, was 15 s on a devnet that decides 7 blocks a second, and
/// posts that waited for an onion descriptor were refused.
pub const DEFAULT_HEIGHT_WINDOW: u64 = 100_000;

fn default_height_window() -> u64 {
    DEFAULT_HEIGHT_WINDOW
}

fn default_relay_timeout() -> f64 {
    30.0
}

/// One optional TCP listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Socket address to bind; absent disables the listener.
    pub listen: Option<SocketAddr>,
}

/// SMTP and IMAP limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted message in bytes (SMTP 552, IMAP APPEND NO).
    pub max_message_size: usize,
    /// Most recipients per message (SMTP 452).
    pub max_recipients: usize,
    /// Longest command line in bytes, CRLF included (SMTP 500).
    pub max_line_length: usize,
    /// Seconds of client silence before the server closes (SMTP 421).
    pub idle_timeout_secs: u64,
    /// Longest SMTP session in seconds, however busy: a client that drips bytes to stay
    /// under the idle timeout is closed at this point (SMTP 421).
    pub session_timeout_secs: u64,
    /// Most concurrent connections per listener, and per identity's onion service; one more
    /// is told to come back later (SMTP 421, IMAP BYE).
    pub max_connections: usize,
    /// Most bytes one identity's mailbox may hold; mail beyond it is deferred (SMTP 452
    /// 4.2.2, the sender retries) and APPEND refused. 0 means no limit.
    pub mailbox_quota_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 1000,
            idle_timeout_secs: 300,
            session_timeout_secs: 600,
            max_connections: 64,
            mailbox_quota_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The idle timeout as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The whole-session deadline as a [`Duration`].
    pub fn session_timeout(&self) -> Duration {
        Duration::from_secs(self.session_timeout_secs)
    }

    /// The mailbox quota, `None` for no limit.
    pub fn mailbox_quota(&self) -> Option<u64> {
        (self.mailbox_quota_bytes > 0).then_some(self.mailbox_quota_bytes)
    }
}

/// Retry schedule of the outbound queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// First retry delay; doubles after every failed attempt.
    pub retry_base_secs: f64,
    /// Longest delay between two attempts.
    pub retry_max_secs: f64,
    /// After this long undelivered, the message bounces to its sender.
    pub retry_window_secs: f64,
    /// Relative random spread of each retry delay (0 to 1; 0.5 spreads a delay `d` over
    /// `[0.75 d, 1.25 d)`), drawn per message so that two identities' retries never leave
    /// in lock-step.
    pub retry_jitter: f64,
    /// Concurrent outbound deliveries.
    pub concurrency: usize,
    /// Most connections one identity keeps open to one destination; each carries many
    /// messages (pipelined) and takes what becomes due for that destination while it is open.
    pub connections_per_destination: usize,
    /// Once a message has waited this long (seconds since it was queued) and the recipient's
    /// onion is still unreachable, the attempt goes on to the recipient's mailbox hosts
    /// (read from the ledger with a proof), encrypted copies only. Negative: never.
    pub hosts_after_secs: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retry_base_secs: 30.0,
            retry_max_secs: 3600.0,
            retry_window_secs: 5.0 * 86400.0,
            retry_jitter: 0.5,
            concurrency: 16,
            connections_per_destination: 4,
            hosts_after_secs: 1800.0,
        }
    }
}

/// Which transport carries outbound SMTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// `"onion"` (Tor, via arti; the default) or `"direct"` (a loopback map, for tests).
    #[serde(default)]
    pub kind: TransportKind,
    /// Onion host name -> socket address, for the direct transport.
    #[serde(default)]
    pub direct: BTreeMap<String, SocketAddr>,
    /// Settings of the onion transport.
    #[serde(default)]
    pub onion: OnionConfig,
}

/// Settings of the onion transport.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnionConfig {
    /// arti's state (keystore, guards) and cache directory; default `<home>/arti`.
    pub state_dir: Option<PathBuf>,
    /// A private Tor network; absent means the public Tor network.
    pub private: Option<PrivateNetwork>,
}

/// A private Tor network: its directory authorities and the caches to bootstrap from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateNetwork {
    /// The directory authorities.
    pub authorities: Vec<AuthorityEntry>,
    /// Where to fetch the first consensus (usually the authorities' OR ports).
    pub fallbacks: Vec<FallbackEntry>,
}

/// One directory authority.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// Its v3 identity (the fingerprint of its authority certificate), 40 hex digits.
    pub v3ident: String,
    /// Its directory port.
    pub dir: SocketAddr,
}

/// One fallback directory cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackEntry {
    /// RSA identity fingerprint, 40 hex digits.
    pub rsa_identity: String,
    /// Ed25519 identity, base64.
    pub ed_identity: String,
    /// Its OR port.
    pub orport: SocketAddr,
}

/// Transport kinds.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// A fixed map from onion names to loopback ports (tests only).
    Direct,
    /// Tor onion services through arti.
    #[default]
    Onion,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse(_, e) => ConfigError::Parse(name, e),
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(String::new(), e))?;
        // Inbound mail from other nodes arrives on onion services; the [smtp] listener is a
        // loopback stand-in for tests, and the client-facing ones are never public.
        for (what, l) in [
            ("smtp", &cfg.smtp),
            ("submission", &cfg.submission),
            ("imap", &cfg.imap),
        ] {
            if let Some(addr) = l.listen
                && !addr.ip().is_loopback()
            {
                return Err(ConfigError::NotLoopback(what, addr));
            }
        }
        if let Some(l) = &cfg.ledger {
            if l.endpoints.is_empty() {
                return Err(ConfigError::Ledger(
                    "endpoints is empty: name at least one ledger server".into(),
                ));
            }
            if l.chain_id.is_empty() {
                return Err(ConfigError::Ledger("chain_id is empty".into()));
            }
            if !(l.relay_timeout_secs.is_finite() && l.relay_timeout_secs > 0.0) {
                return Err(ConfigError::Ledger(
                    "relay_timeout_secs must be a positive number of seconds".into(),
                ));
            }
        }
        if !(1..=6).contains(&cfg.e2e.trust_depth) {
            return Err(ConfigError::E2e(format!(
                "trust_depth must be 1 to 6 statements, not {}",
                cfg.e2e.trust_depth
            )));
        }
        if let Some(g) = &cfg.gateway
            && g.address().is_none()
        {
            return Err(ConfigError::Gateway(format!(
                "onion = {:?} is not a v3 onion host name (<56 characters>.onion)",
                g.onion
            )));
        }
        if cfg.e2e.monitor_interval_secs == 0 {
            return Err(ConfigError::E2e(
                "monitor_interval_secs must be at least 1".into(),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_public_imap() {
        let cfg = Config::parse(
            "[smtp]\nlisten = \"127.0.0.1:2525\"\n[queue]\nretry_base_secs = 0.5\n\
             [transport.direct]\n\"x.onion\" = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(cfg.queue.retry_base_secs, 0.5);
        assert_eq!(cfg.limits.max_recipients, 100);
        assert_eq!(cfg.transport.direct.len(), 1);
        assert!(matches!(
            Config::parse("[imap]\nlisten = \"0.0.0.0:143\"\n"),
            Err(ConfigError::NotLoopback("imap", _))
        ));
        assert!(Config::parse("[bogus]\n").is_err());
        assert!(matches!(
            Config::parse("[smtp]\nlisten = \"192.0.2.1:25\"\n"),
            Err(ConfigError::NotLoopback("smtp", _))
        ));
        let d = Config::parse("").unwrap();
        assert_eq!(
            d.transport.kind,
            TransportKind::Onion,
            "Tor unless told otherwise"
        );
        assert_eq!(d.limits.mailbox_quota(), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(d.queue.retry_jitter, 0.5);
        assert!(d.ledger.is_none(), "no ledger unless configured");
        assert!(d.e2e.enabled);
        assert_eq!(d.e2e.unverified_from_bound, UnverifiedPolicy::Mark);
        assert!(d.gateway.is_none(), "no gateway unless configured");
        let onion = OnionAddress::from_public_key([2; 32]).hostname();
        let g = Config::parse(&format!("[gateway]\nonion = \"{onion}\"\n")).unwrap();
        assert_eq!(
            g.gateway.unwrap().address(),
            Some(OnionAddress::from_public_key([2; 32]))
        );
        assert!(matches!(
            Config::parse("[gateway]\nonion = \"gw.example.com\"\n"),
            Err(ConfigError::Gateway(_))
        ));
        let e = Config::parse("[e2e]\nunverified_from_bound = \"refuse\"\n").unwrap();
        assert_eq!(e.e2e.unverified_from_bound, UnverifiedPolicy::Refuse);
        assert!(Config::parse("[e2e]\nunverified_from_bound = \"maybe\"\n").is_err());
        assert_eq!(d.e2e.trust_depth, 4);
        let t = Config::parse("[e2e]\ntrust_depth = 2\nmonitor_interval_secs = 1\n").unwrap();
        assert_eq!((t.e2e.trust_depth, t.e2e.monitor_interval_secs), (2, 1));
        for bad in [
            "trust_depth = 0",
            "trust_depth = 7",
            "monitor_interval_secs = 0",
        ] {
            assert!(
                matches!(
                    Config::parse(&format!("[e2e]\n{bad}\n")),
                    Err(ConfigError::E2e(_))
                ),
                "{bad}"
            );
        }
        assert!(
            !d.hosting.enabled,
            "nobody's mail is held unless configured"
        );
        assert_eq!(d.queue.hosts_after_secs, 1800.0);
        let h = Config::parse("[hosting]\nenabled = true\nmax_messages_per_sender = 3\n").unwrap();
        assert!(h.hosting.enabled);
        assert_eq!(h.hosting.max_messages_per_sender, 3);
        assert!(Config::parse("[hosting]\nenable = true\n").is_err());
    }

    #[test]
    fn ledger_table_is_strict() {
        let cfg = Config::parse(
            "[ledger]\nendpoints = [\"http://127.0.0.1:9090\"]\nchain_id = \"c\"\n\
             genesis = \"/g.json\"\n",
        )
        .unwrap();
        let l = cfg.ledger.unwrap();
        assert_eq!(l.endpoints, ["http://127.0.0.1:9090"]);
        assert_eq!(
            (l.height_window, l.relay_timeout_secs),
            (DEFAULT_HEIGHT_WINDOW, 30.0)
        );
        assert!(l.checkpoint.is_none());
        let typo = Config::parse(
            "[ledger]\nendpoints = []\nchain_id = \"c\"\ngenesis = \"/g\"\nchain = \"x\"\n",
        );
        assert!(matches!(typo, Err(ConfigError::Parse(..))), "{typo:?}");
        let empty = Config::parse("[ledger]\nendpoints = []\nchain_id = \"c\"\ngenesis = \"/g\"\n");
        assert!(
            matches!(&empty, Err(ConfigError::Ledger(m)) if m.contains("endpoints")),
            "{empty:?}"
        );
        assert!(Config::parse("[ledger]\nendpoints = [\"http://x:1\"]\n").is_err());
    }
}
