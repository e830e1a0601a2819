//! Starting a validator: the ledger app, the Malachite engine, the host loop, the gRPC
//! service (with commit certificates and transaction relay) and the peer counter, in one
//! process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use malachitebft_app_channel::app::config::{
    ConsensusConfig, DiscoveryConfig, NodeConfig, P2pConfig, TransportProtocol, ValuePayload,
    ValueSyncConfig,
};
use malachitebft_app_channel::app::types::Keypair;
use malachitebft_app_channel::{
    ConsensusContext, NetworkContext, NetworkIdentity, NetworkRequest, RequestContext, SyncContext,
    WalContext, start_engine,
};
use malachitebft_core_types::LinearTimeouts;
use malachitebft_signing_ed25519::PrivateKey;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, CommitAnswer, SignedTx};
use tendermint_abci::Application;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::config::{ChainGenesis, ValidatorConfig, load_key};
use super::host::Host;
use super::store::ConsensusStore;
use super::types::{Height, LedgerContext};
use super::wire::{WalCodec, WireCodec};
use crate::LedgerApp;
use crate::grpc::{CommitSource, LedgerService, RELAYED_HEADER, TxRelay};

/// Why a validator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its files are unusable.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// Something else, said in words.
    #[error("{0}")]
    Other(String),
}

fn other(what: &str) -> impl FnOnce(String) -> StartError + '_ {
    move |e| StartError::Other(format!("{what}: {e}"))
}

struct EngineConfig {
    moniker: String,
    consensus: ConsensusConfig,
    value_sync: ValueSyncConfig,
}

impl NodeConfig for EngineConfig {
    fn moniker(&self) -> &str {
        &self.moniker
    }
    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }
    fn consensus_mut(&mut self) -> &mut ConsensusConfig {
        &mut self.consensus
    }
    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }
    fn value_sync_mut(&mut self) -> &mut ValueSyncConfig {
        &mut self.value_sync
    }
}

fn multiaddr(a: SocketAddr) -> malachitebft_app_channel::app::net::Multiaddr {
    TransportProtocol::Tcp.multiaddr(&a.ip().to_string(), a.port() as usize)
}

/// Timeouts for a validator network on one machine or a LAN.
pub fn local_timeouts() -> LinearTimeouts {
    LinearTimeouts {
        propose: Duration::from_millis(1500),
        propose_delta: Duration::from_millis(500),
        prevote: Duration::from_millis(500),
        prevote_delta: Duration::from_millis(250),
        precommit: Duration::from_millis(500),
        precommit_delta: Duration::from_millis(250),
        rebroadcast: Duration::from_millis(2000),
        ..LinearTimeouts::default()
    }
}

/// Runs the validator whose files are in `home` until the process is killed.
pub async fn run(home: &Path) -> Result<(), StartError> {
    let config = ValidatorConfig::load(home)?;
    let genesis = ChainGenesis::load(home)?;
    let key = load_key(home)?;
    let app = LedgerApp::open(&home.join("data")).map_err(|e| StartError::Other(e.to_string()))?;
    if app.storage().committed().is_none() {
        app.init_chain(init_chain_request(&genesis));
    }
    let chain_id = app.storage().committed().expect("genesis").chain_id;
    if chain_id != genesis.chain_id {
        return Err(StartError::Other(format!(
            "the database in {} belongs to chain {chain_id:?}, genesis.json says {:?}",
            home.join("data").display(),
            genesis.chain_id
        )));
    }
    let store = Arc::new(
        ConsensusStore::open(&home.join("consensus"))
            .map_err(|e| StartError::Other(e.to_string()))?,
    );
    let ctx = LedgerContext {
        chain_id: chain_id.clone(),
    };
    let private_key = PrivateKey::from(key.to_bytes());
    let address = super::types::Address(onionpost_proto::consensus::validator_address(
        &key.verification_key().to_bytes(),
    ));

    let engine_config = EngineConfig {
        moniker: config.moniker.clone(),
        consensus: ConsensusConfig {
            value_payload: ValuePayload::ProposalAndParts,
            p2p: P2pConfig {
                listen_addr: multiaddr(config.p2p_listen),
                persistent_peers: config
                    .persistent_peers
                    .iter()
                    .copied()
                    .map(multiaddr)
                    .collect(),
                discovery: DiscoveryConfig {
                    // All validators share 127.0.0.0/8: no per-IP limits or reconnect throttling.
                    max_connections_per_ip: 256,
                    ip_throttle_duration: Duration::ZERO,
                    ..DiscoveryConfig::default()
                },
                ..P2pConfig::default()
            },
            ..ConsensusConfig::default()
        },
        value_sync: ValueSyncConfig {
            status_update_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..ValueSyncConfig::default()
        },
    };
    let keypair = Keypair::ed25519_from_bytes(key.to_bytes())
        .map_err(|e| StartError::Other(format!("validator key: {e}")))?;
    let identity = NetworkIdentity::new(config.moniker.clone(), keypair, Some(address.to_string()));
    std::fs::create_dir_all(home.join("wal")).map_err(|e| other("creating wal/")(e.to_string()))?;
    let (channels, _engine) = start_engine(
        ctx.clone(),
        engine_config,
        WalContext::new(home.join("wal").join("consensus.wal"), WalCodec),
        NetworkContext::new(identity, WireCodec),
        ConsensusContext::new_validator(
            address,
            Box::new(super::signing::LedgerVerifier::new(ctx.clone())),
            Box::new(super::signing::LedgerSigner::new(
                ctx.clone(),
                private_key.clone(),
            )),
        ),
        SyncContext::new(WireCodec),
        RequestContext::new(100),
    )
    .await
    .map_err(|e| other("starting the consensus engine")(format!("{e:#}")))?;

    // Peers, for status.
    let peers = Arc::new(AtomicU32::new(0));
    {
        let peers = peers.clone();
        let net = channels.net_requests.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(Some(dump)) = NetworkRequest::dump_state(&net).await {
                    peers.store(dump.peers.len() as u32, Ordering::Relaxed);
                }
            }
        });
    }

    // gRPC: queries, submission (relayed to the other validators), commit certificates.
    let relay = Arc::new(GrpcRelay::spawn(config.peer_grpc.clone()));
    let commits = Arc::new(Commits {
        app: app.clone(),
        store: store.clone(),
        chain_id: chain_id.clone(),
    });
    let service = LedgerService::new(app.clone())
        .with_node_info(config.moniker.clone(), peers)
        .with_consensus(commits, relay);
    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| other("binding the gRPC address")(format!("{}: {e}", config.grpc_listen)))?;
    info!(moniker = %config.moniker, grpc = %config.grpc_listen, p2p = %config.p2p_listen, %address, "validator starting");
    println!(
        "listening grpc={} p2p={}",
        config.grpc_listen, config.p2p_listen
    );
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(crate::grpc::incoming(listener))
            .await
        {
            warn!("gRPC server stopped: {e}");
        }
    });

    let target_time = (config.block_ms > 0).then(|| Duration::from_millis(config.block_ms));
    let host = Host::new(ctx, app, store, private_key, local_timeouts(), target_time);
    host.run(channels)
        .await
        .map_err(|e| StartError::Other(format!("validator stopped: {e}")))
}

fn init_chain_request(g: &ChainGenesis) -> tendermint_proto::v0_38::abci::RequestInitChain {
    use tendermint_proto::v0_38::crypto::{PublicKey, public_key::Sum};
    tendermint_proto::v0_38::abci::RequestInitChain {
        time: Some(tendermint_proto::google::protobuf::Timestamp {
            seconds: g.genesis_time as i64,
            nanos: 0,
        }),
        chain_id: g.chain_id.clone(),
        validators: g
            .validators
            .iter()
            .map(|v| tendermint_proto::v0_38::abci::ValidatorUpdate {
                pub_key: Some(PublicKey {
                    sum: Some(Sum::Ed25519(
                        hex::decode(&v.pub_key).expect("checked at load"),
                    )),
                }),
                power: v.power as i64,
            })
            .collect(),
        app_state_bytes: serde_json::to_vec(&g.app_state)
            .expect("serialisable")
            .into(),
        initial_height: 1,
        consensus_params: None,
    }
}

/// Serves decided blocks and certificates over gRPC.
struct Commits {
    app: LedgerApp,
    store: Arc<ConsensusStore>,
    chain_id: String,
}

impl CommitSource for Commits {
    fn commit(&self, height: u64) -> Result<Option<CommitAnswer>, String> {
        let height = match height {
            0 => match self.store.last_decided().map_err(|e| e.to_string())? {
                Some(h) => h,
                None => return Ok(None),
            },
            h => Height(h),
        };
        let Some(d) = self.store.decided(height).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let vs = Host::validator_set(&self.app, height).map_err(|e| e.to_string())?;
        let cert = &d.certificate;
        Ok(Some(CommitAnswer {
            chain_id: self.chain_id.clone(),
            block: d.block.clone(),
            certificate: Some(pb::CommitCertificate {
                height: cert.height.0,
                round: cert.round.as_u32().unwrap_or(0),
                block_hash: cert.value_id.0.to_vec(),
                signatures: cert
                    .commit_signatures
                    .iter()
                    .map(|s| pb::CommitSignature {
                        address: s.address.0.to_vec(),
                        signature: s.signature.to_bytes().to_vec(),
                    })
                    .collect(),
            }),
            validators: vs
                .validators
                .iter()
                .map(|v| pb::ValidatorUpdate {
                    pub_key: v.public_key.as_bytes().to_vec(),
                    power: v.voting_power,
                })
                .collect(),
        }))
    }
}

/// Relays transactions accepted from clients to the other validators' gRPC services, so any
/// proposer can include them: one task per peer, up to 32 submissions in flight each.
struct GrpcRelay {
    peers: Vec<mpsc::Sender<SignedTx>>,
}

impl GrpcRelay {
    fn spawn(peers: Vec<SocketAddr>) -> Self {
        let senders = peers
            .into_iter()
            .map(|peer| {
                let (tx, rx) = mpsc::channel::<SignedTx>(10_000);
                tokio::spawn(relay_to(peer, rx));
                tx
            })
            .collect();
        Self { peers: senders }
    }
}

async fn relay_to(peer: SocketAddr, rx: mpsc::Receiver<SignedTx>) {
    use futures::StreamExt;
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{peer}")) {
        Ok(e) => e.connect_lazy(),
        Err(e) => {
            warn!(%peer, "cannot relay to peer: {e}");
            return;
        }
    };
    let client = LedgerClient::new(channel);
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .for_each_concurrent(32, |signed| {
            let mut client = client.clone();
            async move {
                let mut req = tonic::Request::new(signed);
                req.metadata_mut()
                    .insert(RELAYED_HEADER, "1".parse().expect("ascii"));
                if let Err(e) = client.submit_tx(req).await {
                    debug!(%peer, "relay failed: {e}");
                }
            }
        })
        .await;
}

impl TxRelay for GrpcRelay {
    fn relay(&self, tx: SignedTx) {
        for p in &self.peers {
            // A full queue means the peer is far behind; it will get the block instead.
            let _ = p.try_send(tx.clone());
        }
    }
}
