//! The onion transport: Tor through arti, in process, with nothing shared between identities.
//!
//! * Every hosted identity has its own arti client with its own state and cache directories
//!   (`<state_dir>/<first 16 characters of its onion label>/`): its own guards, circuits and
//!   descriptor caches. Two identities of one node share no guard and no circuit, so no relay
//!   and no onion service can see that they run on the same machine.
//! * Inbound: each identity publishes its onion service from its own client. The service's
//!   key *is* the identity's ed25519 key, so the `.onion` name equals the identity's address.
//!   Streams to port 25 go to the [`StreamHandler`] (the runtime runs an SMTP session scoped
//!   to that identity); other ports are refused.
//! * Outbound: [`OnionTransport::connect`] opens `<onion>.onion:25` through the sending
//!   identity's own client.
//! * Network: the public Tor network by default; a private one (authorities and fallback
//!   caches) when the configuration has `[transport.onion.private]`.
//!
//! Bootstrap progress and each service's reachability are logged as they change and
//! summarised by [`OnionTransport::status`].

pub mod arti;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::{DataStream, TorClient};
use futures::StreamExt;
use futures::future::BoxFuture;
use onionpost_proto::onion::OnionAddress;
use serde::{Deserialize, Serialize};
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::RunningOnionService;
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

use crate::config::OnionConfig;
use crate::identity::Identity;
use crate::transport::Transport;

/// The port that onion mail services listen on.
pub const SMTP_PORT: u16 = 25;

/// How long one outbound onion connection may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the onion transport.
#[derive(Debug, thiserror::Error)]
pub enum OnionError {
    /// The arti configuration could not be built.
    #[error("invalid Tor configuration: {0}")]
    Config(String),
    /// arti could not be created.
    #[error("creating the Tor client of {address}: {why}")]
    Client {
        /// The identity's address.
        address: String,
        /// Why.
        why: String,
    },
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

/// What `status` shows about one identity's Tor client and onion service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// arti's bootstrap summary for this identity's client.
    pub bootstrap: String,
    /// Whether the client is ready for traffic.
    pub ready: bool,
    /// The onion service's state (arti's view).
    pub state: String,
    /// Inbound SMTP streams accepted so far (proof of reachability).
    pub inbound_streams: u64,
}

/// What `status` shows about Tor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TorStatus {
    /// `"public"` or `"private"`.
    pub network: String,
    /// Onion host name -> its client and service.
    pub services: BTreeMap<String, ServiceStatus>,
    /// Outbound onion connections that succeeded.
    pub outbound_ok: u64,
    /// Outbound onion connections that failed.
    pub outbound_failed: u64,
}

/// Runs an inbound stream that arrived on `onion`'s service (port 25).
pub type StreamHandler =
    Arc<dyn Fn(OnionAddress, DataStream) -> BoxFuture<'static, ()> + Send + Sync>;

/// One identity's Tor: its client, the isolated client it connects through, its service.
struct IdentityTor {
    base: Arc<TorClient<PreferredRuntime>>,
    /// Replaced by a fresh isolated client after a failed connect: arti caches onion
    /// descriptors per isolation, and a restarted service's old descriptor names dead
    /// introduction points.
    circuits: Mutex<Arc<TorClient<PreferredRuntime>>>,
    service: Arc<RunningOnionService>,
    inbound: Arc<AtomicU64>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for IdentityTor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Tor transport: one arti client and one onion service per hosted identity.
pub struct OnionTransport {
    cfg: OnionConfig,
    state_root: PathBuf,
    network: &'static str,
    handler: StreamHandler,
    identities: Mutex<HashMap<OnionAddress, Arc<IdentityTor>>>,
    outbound_ok: AtomicU64,
    outbound_failed: AtomicU64,
}

impl std::fmt::Debug for OnionTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionTransport")
            .field("network", &self.network)
            .field("state_root", &self.state_root)
            .finish_non_exhaustive()
    }
}

impl OnionTransport {
    /// A transport with no identities yet. arti state goes under `cfg.state_dir`, or
    /// `default_state_dir` when the configuration names none.
    pub fn new(cfg: &OnionConfig, default_state_dir: &Path, handler: StreamHandler) -> Arc<Self> {
        Arc::new(OnionTransport {
            state_root: cfg
                .state_dir
                .clone()
                .unwrap_or_else(|| default_state_dir.to_path_buf()),
            network: if cfg.private.is_some() {
                "private"
            } else {
                "public"
            },
            cfg: cfg.clone(),
            handler,
            identities: Mutex::new(HashMap::new()),
            outbound_ok: AtomicU64::new(0),
            outbound_failed: AtomicU64::new(0),
        })
    }

    /// Creates the identity's own arti client (bootstrapping in the background), launches its
    /// onion service and serves its inbound streams. Returns without waiting for Tor: the
    /// queue retries until circuits exist. Must run inside the tokio runtime.
    pub fn add(&self, identity: &Identity) -> Result<(), OnionError> {
        let onion = identity.onion;
        let address = identity.address();
        let dir = self.state_root.join(&onion.label()[..16]);
        let config = arti::arti_config(&dir, self.cfg.private.as_ref())?;
        let base = TorClient::builder()
            .config(config)
            .create_unbootstrapped()
            .map_err(|e| OnionError::Client {
                address: address.clone(),
                why: e.to_string(),
            })?;
        let (service, requests) = arti::launch(&base, identity)?;
        let inbound = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(arti::log_bootstrap(base.clone(), onion)).abort_handle());
        {
            let base = base.clone();
            tasks.push(
                tokio::spawn(async move {
                    if let Err(e) = base.bootstrap().await {
                        tracing::warn!(%onion, "Tor bootstrap failed (will keep trying on demand): {e}");
                    }
                })
                .abort_handle(),
            );
        }
        tasks.push(tokio::spawn(arti::log_service_state(onion, service.clone())).abort_handle());
        tasks.push(
            tokio::spawn(serve_requests(
                onion,
                requests,
                inbound.clone(),
                self.handler.clone(),
            ))
            .abort_handle(),
        );
        tracing::info!(%address, network = self.network, state_dir = %dir.display(), "Tor client created, onion service launched");
        let id = IdentityTor {
            circuits: Mutex::new(base.isolated_client()),
            base,
            service,
            inbound,
            tasks,
        };
        self.lock().insert(onion, Arc::new(id));
        Ok(())
    }

    /// Stops an identity's onion service and client.
    pub fn remove(&self, onion: &OnionAddress) {
        if self.lock().remove(onion).is_some() {
            tracing::info!(%onion, "onion service stopped");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OnionAddress, Arc<IdentityTor>>> {
        self.identities.lock().expect("identities lock")
    }

    /// The live state.
    pub fn status(&self) -> TorStatus {
        let services = self
            .lock()
            .iter()
            .map(|(onion, t)| {
                let boot = t.base.bootstrap_status();
                (
                    onion.hostname(),
                    ServiceStatus {
                        bootstrap: boot.to_string(),
                        ready: boot.ready_for_traffic(),
                        state: format!("{:?}", t.service.status().state()),
                        inbound_streams: t.inbound.load(Ordering::Relaxed),
                    },
                )
            })
            .collect();
        TorStatus {
            network: self.network.to_string(),
            services,
            outbound_ok: self.outbound_ok.load(Ordering::Relaxed),
            outbound_failed: self.outbound_failed.load(Ordering::Relaxed),
        }
    }
}

/// Accepts streams to port 25 and hands them to `handler`; refuses other ports.
async fn serve_requests(
    onion: OnionAddress,
    requests: arti::Requests,
    inbound: Arc<AtomicU64>,
    handler: StreamHandler,
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
        let handler = handler.clone();
        tokio::spawn(async move {
            match req.accept(Connected::new_empty()).await {
                Ok(stream) => handler(onion, stream).await,
                Err(e) => tracing::debug!(%onion, "accepting onion stream: {e}"),
            }
        });
    }
    tracing::warn!(%onion, "onion service stopped handing out streams");
}

impl Transport for OnionTransport {
    type Stream = DataStream;

    async fn connect(
        &self,
        onion: &OnionAddress,
        port: u16,
        identity: &OnionAddress,
    ) -> io::Result<DataStream> {
        let tor = self.lock().get(identity).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{identity} is not hosted here: no Tor client of its own"),
            )
        })?;
        let client = tor.circuits.lock().expect("circuits lock").clone();
        let started = std::time::Instant::now();
        let result =
            tokio::time::timeout(CONNECT_TIMEOUT, client.connect((onion.hostname(), port))).await;
        if !matches!(result, Ok(Ok(_))) {
            // Start over with new circuits and a fresh descriptor next time.
            *tor.circuits.lock().expect("circuits lock") = tor.base.isolated_client();
        }
        match result {
            Ok(Ok(s)) => {
                self.outbound_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(to = %onion, ms = started.elapsed().as_millis() as u64, "onion connected");
                Ok(s)
            }
            Ok(Err(e)) => {
                self.outbound_failed.fetch_add(1, Ordering::Relaxed);
                let kind = arti_client::HasKind::kind(&e);
                Err(io::Error::other(format!(
                    "Tor connection to {}:{port} failed ({kind}): {e}",
                    onion.hostname()
                )))
            }
            Err(_) => {
                self.outbound_failed.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Tor connection to {}:{port} timed out after {CONNECT_TIMEOUT:?}",
                        onion.hostname()
                    ),
                ))
            }
        }
    }
}
