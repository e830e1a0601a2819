//! The onion transport: Tor through arti, in process.
//!
//! * Inbound: every hosted identity publishes its own onion service. The service's identity
//!   key *is* the identity's ed25519 key, so the `.onion` name equals the identity's address
//!   (and the key that signs its ledger transactions). Streams to port 25 are handed to the
//!   node's SMTP server, whose greeting names that onion; other ports are refused.
//! * Outbound: [`OnionTransport::connect`] opens `<onion>.onion:25` through a
//!   [`TorClient::isolated_client`] belonging to the sending identity, so two identities of
//!   one node never share a circuit and cannot be linked by it.
//! * Network: the public Tor network by default; a private one (authorities and fallback
//!   caches) when the configuration has `[transport.onion.private]`.
//!
//! Bootstrap progress and each service's reachability are logged as they change and
//! summarised by [`OnionTransport::status`] for `onionpost-node status`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::config::TorClientConfigBuilder;
use arti_client::config::dir::FallbackDir;
use arti_client::{DataStream, TorClient, TorClientConfig};
use futures::StreamExt;
use onionpost_proto::onion::OnionAddress;
use serde::{Deserialize, Serialize};
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hscrypto::pk::{HsId, HsIdKey, HsIdKeypair};
use tor_hsservice::config::OnionServiceConfigBuilder;
use tor_hsservice::{HsNickname, RendRequest, RunningOnionService, StreamRequest};
use tor_llcrypto::pk::ed25519::{Ed25519Identity, ExpandedKeypair, Keypair};
use tor_llcrypto::pk::rsa::RsaIdentity;
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

use crate::config::{OnionConfig, PrivateNetwork};
use crate::identity::Identity;
use crate::node::Node;
use crate::smtp;
use crate::transport::Transport;

/// The port that onion mail services listen on.
pub const SMTP_PORT: u16 = 25;

/// How long one outbound onion connection may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting the onion transport.
#[derive(Debug, thiserror::Error)]
pub enum OnionError {
    /// The arti configuration could not be built.
    #[error("invalid Tor configuration: {0}")]
    Config(String),
    /// arti could not be created.
    #[error("creating the Tor client: {0}")]
    Client(String),
    /// An identity's key could not be loaded.
    #[error("loading the key of {name}: {why}")]
    Key {
        /// The identity.
        name: String,
        /// Why.
        why: String,
    },
    /// An identity's onion service did not launch.
    #[error("launching the onion service of {address}: {why}")]
    Launch {
        /// The identity's address.
        address: String,
        /// Why.
        why: String,
    },
}

/// What `status` shows about Tor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TorStatus {
    /// `"public"` or `"private"`.
    pub network: String,
    /// arti's bootstrap summary, e.g. "100%: connected to the internet" .
    pub bootstrap: String,
    /// Whether arti considers itself ready for traffic.
    pub ready: bool,
    /// Onion address -> state of its onion service (arti's view).
    pub services: BTreeMap<String, String>,
    /// Onion address -> inbound SMTP streams accepted (proof of reachability).
    pub inbound_streams: BTreeMap<String, u64>,
    /// Outbound onion connections that succeeded.
    pub outbound_ok: u64,
    /// Outbound onion connections that failed.
    pub outbound_failed: u64,
}

/// The rendezvous requests of one onion service.
type Requests = Pin<Box<dyn futures::Stream<Item = RendRequest> + Send + 'static>>;

/// One hosted identity's onion service.
struct Service {
    onion: OnionAddress,
    running: Arc<RunningOnionService>,
    inbound: Arc<AtomicU64>,
}

/// The Tor transport: an arti client, one isolated client per identity, one onion service
/// per identity.
pub struct OnionTransport {
    base: Arc<TorClient<PreferredRuntime>>,
    /// Each identity's own isolated client; replaced by a fresh one after a failed connect
    /// (arti caches onion descriptors per isolation, and a restarted service's old descriptor
    /// names dead introduction points).
    isolated: Mutex<HashMap<OnionAddress, Arc<TorClient<PreferredRuntime>>>>,
    services: Vec<Service>,
    network: &'static str,
    outbound_ok: AtomicU64,
    outbound_failed: AtomicU64,
}

impl std::fmt::Debug for OnionTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionTransport")
            .field("network", &self.network)
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

/// Builds arti's configuration: state and cache under `state_dir`, and the network.
pub fn arti_config(
    state_dir: &Path,
    private: Option<&PrivateNetwork>,
) -> Result<TorClientConfig, OnionError> {
    let mut b =
        TorClientConfigBuilder::from_directories(state_dir.join("state"), state_dir.join("cache"));
    if let Some(p) = private {
        let bad = |what: &str, v: &str| OnionError::Config(format!("invalid {what} {v:?}"));
        let net = b.tor_network();
        let mut fallbacks = Vec::new();
        for f in &p.fallbacks {
            let mut fb = FallbackDir::builder();
            fb.rsa_identity(
                RsaIdentity::from_hex(&f.rsa_identity)
                    .ok_or_else(|| bad("rsa_identity", &f.rsa_identity))?,
            )
            .ed_identity(
                Ed25519Identity::from_base64(&f.ed_identity)
                    .ok_or_else(|| bad("ed_identity", &f.ed_identity))?,
            );
            fb.orports().push(f.orport);
            fallbacks.push(fb);
        }
        // `set_`, not `push`: the list accessor starts from the public network's fallbacks.
        net.set_fallback_caches(fallbacks);
        let mut v3 = Vec::new();
        for a in &p.authorities {
            v3.push(RsaIdentity::from_hex(&a.v3ident).ok_or_else(|| bad("v3ident", &a.v3ident))?);
        }
        let dirs: Vec<Vec<_>> = p.authorities.iter().map(|a| vec![a.dir]).collect();
        let auth = net.authorities();
        auth.set_v3idents(v3);
        auth.set_uploads(dirs.clone());
        auth.set_downloads(dirs.clone());
        auth.set_votes(dirs);
        // Every relay of a loopback network shares 127.0.0.1: do not treat them as a family.
        b.path_rules()
            .ipv4_subnet_family_prefix(33)
            .ipv6_subnet_family_prefix(129);
    }
    b.build().map_err(|e| OnionError::Config(e.to_string()))
}

/// The onion-service nickname of an identity (keys and state are filed under it).
fn nickname(onion: &OnionAddress) -> HsNickname {
    let label = onion.label();
    format!("onionpost-{}", &label[..16])
        .parse()
        .expect("a-z2-7 and '-' make a valid nickname")
}

/// arti's identity key pair for an onion service, from the identity's ed25519 seed.
fn hsid_keypair(identity: &Identity) -> Result<HsIdKeypair, OnionError> {
    let seed = identity
        .signing_key()
        .map_err(|e| OnionError::Key {
            name: identity.name.clone(),
            why: e.to_string(),
        })?
        .to_bytes();
    let kp = Keypair::from(&seed);
    Ok(HsIdKeypair::from(ExpandedKeypair::from(&kp)))
}

impl OnionTransport {
    /// Creates the arti client, starts bootstrapping (in the background), launches one onion
    /// service per hosted identity and serves their inbound streams with the node's SMTP
    /// server. Returns without waiting for Tor: the queue retries until circuits exist.
    pub async fn start(node: Arc<Node>, cfg: &OnionConfig) -> Result<Arc<Self>, OnionError> {
        let state_dir = cfg
            .state_dir
            .clone()
            .unwrap_or_else(|| node.home.join("arti"));
        let network = if cfg.private.is_some() {
            "private"
        } else {
            "public"
        };
        let config = arti_config(&state_dir, cfg.private.as_ref())?;
        let base = TorClient::builder()
            .config(config)
            .create_unbootstrapped()
            .map_err(|e| OnionError::Client(e.to_string()))?;
        tracing::info!(network, state_dir = %state_dir.display(), "Tor client created; bootstrapping");
        tokio::spawn(log_bootstrap(base.clone()));
        {
            let base = base.clone();
            tokio::spawn(async move {
                if let Err(e) = base.bootstrap().await {
                    tracing::warn!("Tor bootstrap failed (will keep trying on demand): {e}");
                }
            });
        }
        let mut isolated = HashMap::new();
        let mut services = Vec::new();
        for h in &node.hosted {
            let onion = h.identity.onion;
            isolated.insert(onion, base.isolated_client());
            let (running, requests) = launch(&base, &h.identity)?;
            let inbound = Arc::new(AtomicU64::new(0));
            tracing::info!(address = %h.identity.address(), "onion service launched");
            tokio::spawn(log_service_state(onion, running.clone()));
            tokio::spawn(serve_requests(
                node.clone(),
                onion,
                requests,
                inbound.clone(),
            ));
            services.push(Service {
                onion,
                running,
                inbound,
            });
        }
        Ok(Arc::new(OnionTransport {
            base,
            isolated: Mutex::new(isolated),
            services,
            network,
            outbound_ok: AtomicU64::new(0),
            outbound_failed: AtomicU64::new(0),
        }))
    }

    /// A snapshot for the status file.
    pub fn status(&self) -> TorStatus {
        let boot = self.base.bootstrap_status();
        TorStatus {
            network: self.network.to_string(),
            bootstrap: boot.to_string(),
            ready: boot.ready_for_traffic(),
            services: self
                .services
                .iter()
                .map(|s| {
                    (
                        s.onion.hostname(),
                        format!("{:?}", s.running.status().state()),
                    )
                })
                .collect(),
            inbound_streams: self
                .services
                .iter()
                .map(|s| (s.onion.hostname(), s.inbound.load(Ordering::Relaxed)))
                .collect(),
            outbound_ok: self.outbound_ok.load(Ordering::Relaxed),
            outbound_failed: self.outbound_failed.load(Ordering::Relaxed),
        }
    }
}

/// Launches the identity's onion service with its own key. arti files the key in its
/// keystore on the first launch and refuses to overwrite it later ("Key already exists"):
/// then the service is launched by nickname, and its address checked against the identity.
fn launch(
    base: &Arc<TorClient<PreferredRuntime>>,
    identity: &Identity,
) -> Result<(Arc<RunningOnionService>, Requests), OnionError> {
    let address = identity.address();
    let fail = |why: String| OnionError::Launch {
        address: address.clone(),
        why,
    };
    let keypair = hsid_keypair(identity)?;
    let expected = HsId::from(HsIdKey::from(&keypair));
    let config = OnionServiceConfigBuilder::default()
        .nickname(nickname(&identity.onion))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let launched = match base.launch_onion_service_with_hsid(config.clone(), keypair) {
        Ok(l) => l.map(|(r, s)| (r, Box::pin(s) as Requests)),
        Err(first) => {
            tracing::debug!(%address, "launch with key: {first}; launching by nickname");
            base.launch_onion_service(config)
                .map_err(|e| fail(format!("{first}; then by nickname: {e}")))?
                .map(|(r, s)| (r, Box::pin(s) as Requests))
        }
    };
    let (running, requests) = launched.ok_or_else(|| fail("service disabled".into()))?;
    match running.onion_address() {
        Some(id) if id == expected => Ok((running, requests)),
        _ => Err(fail(format!(
            "arti's keystore holds a different key for nickname {}",
            nickname(&identity.onion)
        ))),
    }
}

/// Accepts streams to port 25 and runs an SMTP session on each; refuses other ports.
async fn serve_requests(
    node: Arc<Node>,
    onion: OnionAddress,
    requests: Requests,
    inbound: Arc<AtomicU64>,
) {
    let streams = tor_hsservice::handle_rend_requests(requests);
    futures::pin_mut!(streams);
    while let Some(req) = streams.next().await {
        let port = match req.request() {
            IncomingStreamRequest::Begin(b) => Some(b.port()),
            _ => None,
        };
        if port != Some(SMTP_PORT) {
            tracing::debug!(%onion, ?port, "refusing onion stream");
            tokio::spawn(async move {
                let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
            });
            continue;
        }
        inbound.fetch_add(1, Ordering::Relaxed);
        let (node, onion) = (node.clone(), onion);
        tokio::spawn(handle_stream(node, onion, req));
    }
    tracing::warn!(%onion, "onion service stopped handing out streams");
}

async fn handle_stream(node: Arc<Node>, onion: OnionAddress, req: StreamRequest) {
    let stream: DataStream = match req.accept(Connected::new_empty()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%onion, "accepting onion stream: {e}");
            return;
        }
    };
    tracing::debug!(%onion, "inbound onion SMTP stream");
    if let Err(e) =
        smtp::server::handle(stream, node, smtp::session::Mode::Inbound, onion.hostname()).await
    {
        tracing::debug!(%onion, "onion SMTP session ended: {e}");
    }
}

/// Logs bootstrap progress whenever its summary changes.
async fn log_bootstrap(client: Arc<TorClient<PreferredRuntime>>) {
    let mut events = client.bootstrap_events();
    let mut last = String::new();
    while let Some(s) = events.next().await {
        let now = s.to_string();
        if now != last {
            if s.ready_for_traffic() {
                tracing::info!(status = %now, "Tor bootstrap: ready");
            } else {
                tracing::info!(status = %now, "Tor bootstrap");
            }
            last = now;
        }
    }
}

/// Logs each change of an onion service's state (and its current problem, if any).
async fn log_service_state(onion: OnionAddress, running: Arc<RunningOnionService>) {
    let mut events = running.status_events();
    let mut last = String::new();
    while let Some(s) = events.next().await {
        let now = format!("{:?}", s.state());
        if now != last {
            match s.current_problem() {
                Some(p) => tracing::info!(%onion, state = %now, problem = ?p, "onion service"),
                None => tracing::info!(%onion, state = %now, "onion service"),
            }
            last = now;
        }
    }
}

impl Transport for OnionTransport {
    type Stream = DataStream;

    async fn connect(
        &self,
        onion: &OnionAddress,
        port: u16,
        identity: &OnionAddress,
    ) -> io::Result<DataStream> {
        let client = self
            .isolated
            .lock()
            .expect("isolated clients lock")
            .get(identity)
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{identity} is not hosted here: no circuits of its own"),
                )
            })?;
        let started = std::time::Instant::now();
        let result =
            tokio::time::timeout(CONNECT_TIMEOUT, client.connect((onion.hostname(), port))).await;
        if !matches!(result, Ok(Ok(_))) {
            // Start over with new circuits and a fresh descriptor next time.
            self.isolated
                .lock()
                .expect("isolated clients lock")
                .insert(*identity, self.base.isolated_client());
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                self.outbound_failed.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Tor connection to {}:{port} timed out after {CONNECT_TIMEOUT:?}",
                        onion.hostname()
                    ),
                ));
            }
        };
        match result {
            Ok(s) => {
                self.outbound_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(to = %onion, ms = started.elapsed().as_millis() as u64, "onion connected");
                Ok(s)
            }
            Err(e) => {
                self.outbound_failed.fetch_add(1, Ordering::Relaxed);
                let kind = arti_client::HasKind::kind(&e);
                Err(io::Error::other(format!(
                    "Tor connection to {}:{port} failed ({kind}): {e}",
                    onion.hostname()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorityEntry, FallbackEntry};
    use crate::identity::IdentityStore;

    #[test]
    fn onion_service_key_is_the_identity_key() {
        let home = tempfile::tempdir().unwrap();
        let (id, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let kp = hsid_keypair(&id).unwrap();
        let hsid = HsId::from(HsIdKey::from(&kp));
        let hsid: &[u8; 32] = hsid.as_ref();
        assert_eq!(*hsid, id.onion.public_key());
        assert!(nickname(&id.onion).to_string().starts_with("onionpost-"));
    }

    #[test]
    fn private_network_config_builds() {
        let dir = tempfile::tempdir().unwrap();
        let p = PrivateNetwork {
            authorities: vec![AuthorityEntry {
                v3ident: "CDAFFFF4310DF6EE7F21A287AC40DEE9085578C6".into(),
                dir: "127.0.0.1:7001".parse().unwrap(),
            }],
            fallbacks: vec![FallbackEntry {
                rsa_identity: "0A1DF4C9CC470087CFBF4F9CE4E214742E4C07C6".into(),
                ed_identity: "ufVxtsftVCifyc4QRi+YajaFxVGeDv4LGW9D9DfQ/6w".into(),
                orport: "127.0.0.1:7000".parse().unwrap(),
            }],
        };
        let cfg = arti_config(dir.path(), Some(&p)).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("198.12.71.224"),
            "public fallbacks leaked in: {dbg}"
        );
        assert!(dbg.contains("127.0.0.1:7000"), "{dbg}");
        arti_config(dir.path(), None).unwrap();
        let mut bad = p.clone();
        bad.fallbacks[0].rsa_identity = "nope".into();
        assert!(matches!(
            arti_config(dir.path(), Some(&bad)),
            Err(OnionError::Config(_))
        ));
    }
}
