//! The gRPC `Ledger` service (tonic): typed reads with proofs, submission, and events.
//!
//! Every read answers at a stated height (the latest committed one unless asked otherwise)
//! with an [`Anchor`] (height and app hash) and [`ProvenValue`]s, so a mail node, a client
//! or an auditor checks the answer with `onionpost_proto::proof` instead of trusting this
//! server. Reads go straight to RocksDB and never wait for block execution; they run on
//! tokio's blocking pool (as do submission's checks and GetCommit's certificate reads), so
//! a slow disk or a long trust search holds up only its own call, never the async workers
//! that serve the others.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::Stream;
use onionpost_proto::keys;
use onionpost_proto::trust::decode_index;
use onionpost_proto::v1::ledger_server::{Ledger, LedgerServer};
use onionpost_proto::v1::{
    Anchor, BlockInfo, CommitAnswer, CommitQuery, EventsQuery, GetStatusRequest, HeightQuery,
    IdentityAnswer, IdentityQuery, IdentityRecord, KeyHistoryAnswer, LedgerEvent, ListAnswer,
    ListMembersAnswer, ListQuery, MembershipAnswer, MembershipQuery, SignedTx, StatusAnswer,
    SubmitAnswer, TrustAnswer, TrustIndex, TrustPathAnswer, TrustPathQuery, TrustQuery,
    ValidatorSetAnswer, trust_query::Direction,
};
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::app::LedgerApp;
use crate::storage::StorageError;

/// The connections of `listener`, with Nagle's algorithm off: without it every small gRPC
/// answer waits ~40 ms for the client's delayed ACK.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Deepest trust path searched.
pub const MAX_TRUST_DEPTH: u32 = 6;
/// Default depth when a query says 0.
pub const DEFAULT_TRUST_DEPTH: u32 = 4;
/// Most identities a trust-path search visits before giving up.
pub const MAX_TRUST_VISITS: usize = 20_000;

/// Where decided blocks and their commit certificates come from (validators only).
pub trait CommitSource: Send + Sync {
    /// The decided block of `height` (0 = latest) with its certificate, if stored.
    fn commit(&self, height: u64) -> Result<Option<CommitAnswer>, String>;
}

/// Forwards transactions this node accepted to the other validators.
pub trait TxRelay: Send + Sync {
    /// Called once per transaction accepted from a client (not for relayed ones).
    fn relay(&self, tx: SignedTx);
}

/// Metadata key marking a SubmitTx as relayed by another validator (so it is not relayed again).
pub const RELAYED_HEADER: &str = "x-onionpost-relayed";

/// The service over one ledger.
#[derive(Clone)]
pub struct LedgerService {
    app: LedgerApp,
    moniker: String,
    peers: Arc<AtomicU32>,
    commits: Option<Arc<dyn CommitSource>>,
    relay: Option<Arc<dyn TxRelay>>,
}

impl LedgerService {
    /// A service answering from `app`.
    pub fn new(app: LedgerApp) -> Self {
        Self {
            app,
            moniker: String::new(),
            peers: Arc::default(),
            commits: None,
            relay: None,
        }
    }

    /// Serves GetCommit from `commits` and relays submitted transactions through `relay`.
    pub fn with_consensus(
        mut self,
        commits: Arc<dyn CommitSource>,
        relay: Arc<dyn TxRelay>,
    ) -> Self {
        self.commits = Some(commits);
        self.relay = Some(relay);
        self
    }

    /// Names the node in status answers and reports its live consensus peer count.
    pub fn with_node_info(mut self, moniker: String, peers: Arc<AtomicU32>) -> Self {
        self.moniker = moniker;
        self.peers = peers;
        self
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> LedgerServer<Self> {
        LedgerServer::new(self)
    }

    /// Runs `read` (RocksDB reads and proofs, a trust search, CheckTx) on tokio's blocking
    /// pool with a handle on this service, so storage I/O never runs on an async worker.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Self) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || read(&service))
            .await
            .map_err(|e| Status::internal(format!("the storage task failed: {e}")))?
    }

    fn anchor(&self, height: u64) -> Result<Anchor, Status> {
        let storage = self.app.storage();
        let height = storage.resolve_height(height).map_err(status)?;
        let root = storage.root_at(height).map_err(status)?;
        Ok(Anchor {
            height,
            root: root.to_vec(),
        })
    }

    fn prove(&self, key: &[u8], height: u64) -> Result<onionpost_proto::v1::ProvenValue, Status> {
        self.app.storage().prove(key, height).map_err(status)
    }

    fn record<M: Message + Default>(&self, key: &[u8], height: u64) -> Result<Option<M>, Status> {
        match self.app.storage().get_at(key, height).map_err(status)? {
            None => Ok(None),
            Some(b) => M::decode(b.as_slice())
                .map(Some)
                .map_err(|e| Status::data_loss(format!("stored record is corrupt: {e}"))),
        }
    }
}

fn status(e: StorageError) -> Status {
    match e {
        StorageError::NoSuchHeight { .. } => Status::out_of_range(e.to_string()),
        StorageError::NoGenesis => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn identity_arg(bytes: &[u8], what: &str) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "{what} must be a 32-byte ed25519 public key, got {} bytes",
            bytes.len()
        ))
    })
}

fn list_arg(name: &str) -> Result<(), Status> {
    if keys::is_valid_list_name(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{name:?} is not a list name (1-64 characters of a-z, 0-9, '-', '.')"
        )))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<LedgerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<StatusAnswer>, Status> {
        let committed = self
            .app
            .storage()
            .committed()
            .ok_or_else(|| status(StorageError::NoGenesis))?;
        Ok(Response::new(StatusAnswer {
            chain_id: committed.chain_id,
            anchor: Some(Anchor {
                height: committed.height,
                root: committed.app_hash.to_vec(),
            }),
            mempool_size: self.app.mempool().len() as u64,
            peers: self.peers.load(Ordering::Relaxed),
            moniker: self.moniker.clone(),
        }))
    }

    async fn get_identity(
        &self,
        request: Request<IdentityQuery>,
    ) -> Result<Response<IdentityAnswer>, Status> {
        let q = request.into_inner();
        let id = identity_arg(&q.identity, "identity")?;
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let identity = s.prove(&keys::identity(&id), anchor.height)?;
            Ok(IdentityAnswer {
                anchor: Some(anchor),
                identity: Some(identity),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_key_history(
        &self,
        request: Request<IdentityQuery>,
    ) -> Result<Response<KeyHistoryAnswer>, Status> {
        let q = request.into_inner();
        let id = identity_arg(&q.identity, "identity")?;
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let h = anchor.height;
            let identity = s.prove(&keys::identity(&id), h)?;
            let len = s
                .record::<IdentityRecord>(&keys::identity(&id), h)?
                .map_or(0, |r| r.key_history_len);
            let entries = (0..len)
                .map(|seq| s.prove(&keys::key_history(&id, seq), h))
                .collect::<Result<_, _>>()?;
            Ok(KeyHistoryAnswer {
                anchor: Some(anchor),
                identity: Some(identity),
                entries,
            })
        })
        .await
        .map(Response::new)
    }

    async fn check_membership(
        &self,
        request: Request<MembershipQuery>,
    ) -> Result<Response<MembershipAnswer>, Status> {
        let q = request.into_inner();
        list_arg(&q.list)?;
        let id = identity_arg(&q.identity, "identity")?;
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let h = anchor.height;
            Ok(MembershipAnswer {
                list: Some(s.prove(&keys::list(&q.list), h)?),
                membership: Some(s.prove(&keys::membership(&q.list, &id), h)?),
                anchor: Some(anchor),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_list(&self, request: Request<ListQuery>) -> Result<Response<ListAnswer>, Status> {
        let q = request.into_inner();
        list_arg(&q.list)?;
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            Ok(ListAnswer {
                list: Some(s.prove(&keys::list(&q.list), anchor.height)?),
                anchor: Some(anchor),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_members(
        &self,
        request: Request<ListQuery>,
    ) -> Result<Response<ListMembersAnswer>, Status> {
        let q = request.into_inner();
        list_arg(&q.list)?;
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let h = anchor.height;
            Ok(ListMembersAnswer {
                list: Some(s.prove(&keys::list(&q.list), h)?),
                members: Some(s.prove(&keys::list_members(&q.list), h)?),
                anchor: Some(anchor),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_trust(
        &self,
        request: Request<TrustQuery>,
    ) -> Result<Response<TrustAnswer>, Status> {
        let q = request.into_inner();
        let id = identity_arg(&q.identity, "identity")?;
        let index_key = if q.direction() == Direction::Outgoing {
            keys::trust_outgoing(&id)
        } else {
            keys::trust_incoming(&id)
        };
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let h = anchor.height;
            // The index holds every statement whole: its one proof is the answer.
            Ok(TrustAnswer {
                anchor: Some(anchor),
                index: Some(s.prove(&index_key, h)?),
                statements: Vec::new(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn find_trust_path(
        &self,
        request: Request<TrustPathQuery>,
    ) -> Result<Response<TrustPathAnswer>, Status> {
        let q = request.into_inner();
        let from = identity_arg(&q.from, "from")?;
        let to = identity_arg(&q.to, "to")?;
        let depth = match q.max_depth {
            0 => DEFAULT_TRUST_DEPTH,
            d if d <= MAX_TRUST_DEPTH => d,
            d => {
                return Err(Status::invalid_argument(format!(
                    "max_depth {d} exceeds {MAX_TRUST_DEPTH}"
                )));
            }
        };
        self.blocking(move |s| {
            let anchor = s.anchor(q.height)?;
            let h = anchor.height;
            let block_time = s
                .record::<BlockInfo>(&keys::block_info(), h)?
                .map_or(0, |b| b.time);
            let path = s.trust_path(from, to, depth, q.min_level, block_time, h)?;
            // Each hop is proven by its signer's outgoing index, which holds the statement.
            let (statements, hops) = match &path {
                None => (Vec::new(), Vec::new()),
                Some(path) => (
                    path[..path.len() - 1]
                        .iter()
                        .map(|signer| s.prove(&keys::trust_outgoing(signer), h))
                        .collect::<Result<_, _>>()?,
                    path[1..].iter().map(|id| id.to_vec()).collect(),
                ),
            };
            Ok(TrustPathAnswer {
                found: path.is_some(),
                statements,
                block_info: Some(s.prove(&keys::block_info(), h)?),
                anchor: Some(anchor),
                hops,
            })
        })
        .await
        .map(Response::new)
    }

    async fn submit_tx(
        &self,
        request: Request<SignedTx>,
    ) -> Result<Response<SubmitAnswer>, Status> {
        let relayed = request.metadata().contains_key(RELAYED_HEADER);
        let signed = request.into_inner();
        self.blocking(move |s| {
            let tx = signed.encode_to_vec();
            let hash = onionpost_proto::tx::tx_hash(&tx);
            // CheckTx reads the sender's record and nonce from storage.
            Ok(match s.app.submit(tx) {
                Ok(_) => {
                    if let (false, Some(relay)) = (relayed, &s.relay) {
                        relay.relay(signed);
                    }
                    SubmitAnswer {
                        tx_hash: hash.to_vec(),
                        code: 0,
                        log: "accepted into the mempool".into(),
                    }
                }
                Err((code, log)) => SubmitAnswer {
                    tx_hash: hash.to_vec(),
                    code,
                    log,
                },
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_commit(
        &self,
        request: Request<CommitQuery>,
    ) -> Result<Response<CommitAnswer>, Status> {
        let Some(commits) = self.commits.clone() else {
            return Err(Status::unimplemented(
                "this node does not run consensus; ask a validator for commit certificates",
            ));
        };
        let height = request.into_inner().height;
        self.blocking(
            move |_| match commits.commit(height).map_err(Status::internal)? {
                Some(answer) => Ok(answer),
                None => Err(Status::not_found(format!(
                    "no decided block at height {height}"
                ))),
            },
        )
        .await
        .map(Response::new)
    }

    async fn get_validator_set(
        &self,
        request: Request<HeightQuery>,
    ) -> Result<Response<ValidatorSetAnswer>, Status> {
        let height = request.into_inner().height;
        self.blocking(move |s| {
            let anchor = s.anchor(height)?;
            Ok(ValidatorSetAnswer {
                validators: Some(s.prove(&keys::validators(), anchor.height)?),
                anchor: Some(anchor),
            })
        })
        .await
        .map(Response::new)
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<EventsQuery>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let from = request.into_inner().from_height;
        // Subscribe before reading history, so no block falls between the two.
        let mut live = self.app.subscribe();
        let service = self.clone();
        let stream = async_stream(move |tx| async move {
            let mut next_height = from;
            if from > 0 {
                let committed = service.app.storage().committed_height().unwrap_or(0);
                for h in from..=committed {
                    let events = service
                        .blocking(move |s| s.app.storage().events_at(h).map_err(status))
                        .await?;
                    for e in events {
                        tx.send(Ok(e))
                            .await
                            .map_err(|_| Status::cancelled("gone"))?;
                    }
                }
                next_height = committed + 1;
            }
            loop {
                match live.recv().await {
                    Ok(e) if e.height >= next_height => tx
                        .send(Ok(e))
                        .await
                        .map_err(|_| Status::cancelled("gone"))?,
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        return Err(Status::resource_exhausted(format!(
                            "subscriber fell {n} events behind; reconnect with from_height"
                        )));
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
            }
        });
        Ok(Response::new(stream))
    }
}

impl LedgerService {
    /// The trust index at `key` and `h`, if there is one.
    fn trust_index(&self, key: &[u8], h: u64) -> Result<Option<TrustIndex>, Status> {
        match self.app.storage().get_at(key, h).map_err(status)? {
            None => Ok(None),
            Some(b) => decode_index(&b).map(Some).map_err(|e| {
                Status::data_loss(format!(
                    "stored trust index {:?} at height {h}: {e}",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    /// Breadth-first search over unexpired trust statements; returns the identities on a
    /// shortest path, `from` first.
    fn trust_path(
        &self,
        from: [u8; 32],
        to: [u8; 32],
        depth: u32,
        min_level: u32,
        block_time: u64,
        h: u64,
    ) -> Result<Option<Vec<[u8; 32]>>, Status> {
        let mut parent: BTreeMap<[u8; 32], [u8; 32]> = BTreeMap::new();
        let mut queue = VecDeque::from([(from, 0u32)]);
        parent.insert(from, from);
        while let Some((node, d)) = queue.pop_front() {
            if node == to {
                let mut path = vec![to];
                let mut cur = to;
                while cur != from {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                return Ok(Some(path));
            }
            if d == depth || parent.len() > MAX_TRUST_VISITS {
                continue;
            }
            let Some(out) = self.trust_index(&keys::trust_outgoing(&node), h)? else {
                continue;
            };
            for st in out.entries {
                let next = identity_arg(&st.other, "stored identity")?;
                if parent.contains_key(&next) {
                    continue;
                }
                let live = st.expires_at == 0 || st.expires_at > block_time;
                if live && st.level >= min_level {
                    parent.insert(next, node);
                    queue.push_back((next, d + 1));
                }
            }
        }
        Ok(None)
    }
}

/// A stream fed by a task through a small channel; the task ends when the client goes away.
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<LedgerEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let fut = f(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
