//! [`GrpcLedger`]: the [`Ledger`] seam over the gRPC `Ledger` service of several ledger
//! servers, with fail-over, a checkpoint and a cache keyed by height.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryFutureExt};
use onionpost_proto::keys;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, trust_query};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::IdentityKey;
use crate::cache::HeightCache;
use crate::chain::{CertifiedRoot, Chain, StepError, VerifiedBlock};
use crate::checkpoint::Checkpoint;
use crate::error::{EndpointFailure, Error, Failure, Lie};
use crate::genesis::Genesis;
use crate::keydir::{Growth, KeyDirectory, Rewrite};
use crate::ledger::{
    At, Basis, Direction, Identity, Ledger, List, Membership, PathLimits, TrustPath, Verified,
};
use crate::validators::ValidatorSet;
use crate::verify::{self, Anchored};

/// An app hash the caller trusts at a height (from its own validator, or an earlier audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedRoot {
    /// The height.
    pub height: u64,
    /// The app hash.
    pub root: [u8; 32],
}

/// What answers are checked against.
#[derive(Debug, Clone)]
pub enum RootPolicy {
    /// App hashes certified by commit certificates, checked against validator sets derived
    /// from this genesis (resuming from the checkpoint, if one is configured). The policy for
    /// anything that acts on an answer.
    Certified(Genesis),
    /// One app hash the caller supplies; reads happen at its height only.
    Pinned(TrustedRoot),
    /// The app hash each server states in its answer: the proofs then only show that the
    /// answer is consistent with the state the server claims. Development only.
    ServerStated,
}

/// How to reach the ledger and what to trust.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC addresses of ledger servers (`http://host:port`), tried in order, the last one
    /// that answered first.
    pub endpoints: Vec<String>,
    /// What answers are checked against.
    pub policy: RootPolicy,
    /// Where the checkpoint lives (certified policy only); `None` keeps it in memory, so
    /// every process starts again from genesis.
    pub checkpoint: Option<PathBuf>,
    /// Time limit of one call to one server.
    pub rpc_timeout: Duration,
    /// Time limit of connecting to one server.
    pub connect_timeout: Duration,
    /// How long the latest verified height is reused before the servers are asked for newer
    /// blocks ([`At::Latest`] may lag the chain by this much).
    pub refresh: Duration,
    /// Most verified answers cached.
    pub cache_capacity: usize,
    /// The checkpoint is written after this many newly verified blocks (and on
    /// [`GrpcLedger::save_checkpoint`]).
    pub save_every: u64,
    /// Blocks fetched concurrently while walking the chain.
    pub pipeline: usize,
}

impl Config {
    /// A configuration with the defaults: 10 s per call, 5 s to connect, a refresh
    /// interval of 1 s, 10,000 cached answers, a checkpoint every 1,000 blocks, 32 blocks
    /// in flight.
    pub fn new(endpoints: Vec<String>, policy: RootPolicy) -> Self {
        Self {
            endpoints,
            policy,
            checkpoint: None,
            rpc_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(1),
            cache_capacity: 10_000,
            save_every: 1_000,
            pipeline: 32,
        }
    }
}

/// App hashes kept in memory for reads at earlier heights; older ones are certified again
/// from the validator-set history when asked for.
const ROOTS_KEPT: usize = 100_000;

/// The [`Ledger`] seam over gRPC. Cheap to clone (clones share state); every method may be
/// called from many tasks at once. Its futures need a tokio runtime (any flavour) to run;
/// creating it does not.
#[derive(Clone)]
pub struct GrpcLedger {
    inner: Arc<Inner>,
}

struct Server {
    url: String,
    endpoint: Endpoint,
    channel: OnceLock<Channel>,
}

enum Mode {
    Certified,
    Pinned(TrustedRoot),
    ServerStated,
}

/// The walk from genesis: advanced by one task at a time.
struct Walk {
    chain: Chain,
    saved_at: u64,
    pending: Vec<(u64, IdentityKey)>,
}

struct Inner {
    servers: Vec<Server>,
    preferred: AtomicUsize,
    mode: Mode,
    checkpoint: Option<PathBuf>,
    refresh: Duration,
    save_every: u64,
    pipeline: usize,
    genesis_identities: Vec<IdentityKey>,
    walk: tokio::sync::Mutex<Option<Walk>>,
    /// The chain as of the last walk, and when a walk last reached the servers' latest
    /// block (`None`: not yet in this process).
    snapshot: Mutex<Option<(Arc<Chain>, Option<Instant>)>>,
    roots: Mutex<BTreeMap<u64, [u8; 32]>>,
    keys: Mutex<KeyDirectory>,
    cache: Mutex<HeightCache<Query, Verified<Answer>>>,
    /// The latest endpoint failures, newest last, for operators.
    recent: Mutex<VecDeque<(String, String)>>,
}

/// Endpoint failures remembered for [`GrpcLedger::recent_failures`].
const RECENT_KEPT: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Query {
    Membership(String, IdentityKey),
    List(String),
    Identity(IdentityKey),
    Trust(IdentityKey, Direction),
    Path(IdentityKey, IdentityKey, PathLimits),
}

#[derive(Debug, Clone)]
enum Answer {
    Membership(Membership),
    List(Option<List>),
    Identity(Option<Identity>),
    Trust(Vec<pb::TrustStatement>),
    Path(TrustPath),
}

/// A commit checked by [`GrpcLedger::check_commit`].
#[derive(Debug, Clone)]
pub struct CheckedCommit {
    /// The block.
    pub block: VerifiedBlock,
    /// Its certificate.
    pub certificate: pb::CommitCertificate,
    /// The validator set the certificate was checked against.
    pub validators: ValidatorSet,
    /// Whether that set was derived from genesis (`true`), or is the one the server
    /// claims (`false`: the certificate then proves nothing about the chain).
    pub derived: bool,
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Failure {
    move |status| Failure::Rpc { call, status }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why one server's attempt ended: its own fault (try the next one) or the chain's.
enum Attempt {
    Server(Failure),
    Fatal(Error),
}

impl From<Failure> for Attempt {
    fn from(f: Failure) -> Self {
        Attempt::Server(f)
    }
}

impl From<Lie> for Attempt {
    fn from(l: Lie) -> Self {
        Attempt::Server(Failure::Lie(l))
    }
}

impl GrpcLedger {
    /// A client for `config`. With the certified policy it resumes from the checkpoint if
    /// one exists (refusing one from another genesis), else starts at genesis; reading the
    /// checkpoint blocks briefly. Nothing is contacted until the first read.
    pub fn new(config: Config) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no ledger endpoint is configured".into()));
        }
        let servers = config
            .endpoints
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| Error::Config(format!("{url:?} is not a gRPC address: {e}")))?
                    .connect_timeout(config.connect_timeout)
                    .timeout(config.rpc_timeout)
                    .tcp_nodelay(true);
                Ok(Server {
                    url: url.clone(),
                    endpoint,
                    channel: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut keys = KeyDirectory::new();
        let mut genesis_identities = Vec::new();
        let (mode, walk) = match config.policy {
            RootPolicy::Certified(genesis) => {
                genesis_identities = genesis.identities.clone();
                let cp = match &config.checkpoint {
                    Some(path) => match Checkpoint::load(path)? {
                        Some(cp) => {
                            cp.check_genesis(&genesis, path)?;
                            info!(path = %path.display(), height = cp.chain.height(), "resuming from the checkpoint");
                            cp
                        }
                        None => Checkpoint::new(Chain::from_genesis(&genesis)),
                    },
                    None => Checkpoint::new(Chain::from_genesis(&genesis)),
                };
                keys = cp.keys;
                let walk = Walk {
                    saved_at: cp.chain.height(),
                    chain: cp.chain,
                    pending: cp.pending,
                };
                (Mode::Certified, Some(walk))
            }
            RootPolicy::Pinned(t) => (Mode::Pinned(t), None),
            RootPolicy::ServerStated => (Mode::ServerStated, None),
        };
        let snapshot = walk.as_ref().map(|w| (Arc::new(w.chain.clone()), None));
        let mut roots = BTreeMap::new();
        if let Some(r) = walk.as_ref().and_then(|w| w.chain.latest_root()) {
            roots.insert(r.height, r.root);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                servers,
                preferred: AtomicUsize::new(0),
                mode,
                checkpoint: config.checkpoint,
                refresh: config.refresh,
                save_every: config.save_every.max(1),
                pipeline: config.pipeline.max(1),
                genesis_identities,
                walk: tokio::sync::Mutex::new(walk),
                snapshot: Mutex::new(snapshot),
                roots: Mutex::new(roots),
                keys: Mutex::new(keys),
                cache: Mutex::new(HeightCache::new(config.cache_capacity)),
                recent: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// The configured endpoints, in order.
    pub fn endpoints(&self) -> Vec<&str> {
        self.inner.servers.iter().map(|s| s.url.as_str()).collect()
    }

    /// The verified chain as of the last walk (certified policy only).
    pub fn chain(&self) -> Option<Arc<Chain>> {
        locked(&self.inner.snapshot)
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    /// The latest failures of endpoints (at most 32, oldest first) as `(endpoint, what
    /// happened)`, including those a fail-over hid from the caller: lies show up here.
    pub fn recent_failures(&self) -> Vec<(String, String)> {
        locked(&self.inner.recent).iter().cloned().collect()
    }

    /// `(hits, misses)` of the answer cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        locked(&self.inner.cache).stats()
    }

    /// A copy of the key directory (the key histories remembered).
    pub fn key_directory(&self) -> KeyDirectory {
        locked(&self.inner.keys).clone()
    }

    /// Identities registered at genesis (certified policy only).
    pub fn genesis_identities(&self) -> &[IdentityKey] {
        &self.inner.genesis_identities
    }

    fn client(&self, i: usize) -> LedgerClient<Channel> {
        let s = &self.inner.servers[i];
        let channel = s.channel.get_or_init(|| s.endpoint.connect_lazy());
        LedgerClient::new(channel.clone())
    }

    /// The servers in the order to try them: the last one that answered first.
    fn order(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.inner.servers.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |k| (start + k) % n)
    }

    fn failed(&self, i: usize, failure: Failure, failures: &mut Vec<EndpointFailure>) {
        let endpoint = self.inner.servers[i].url.clone();
        warn!(%endpoint, error = %failure, "ledger endpoint gave no verified answer");
        let mut recent = locked(&self.inner.recent);
        if recent.len() == RECENT_KEPT {
            recent.pop_front();
        }
        recent.push_back((endpoint.clone(), failure.to_string()));
        drop(recent);
        failures.push(EndpointFailure { endpoint, failure });
    }

    /// Runs `attempt` against each server in turn, starting with the last one that
    /// answered, until one gives a verified answer.
    async fn failover<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(LedgerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut failures = Vec::new();
        for i in self.order() {
            match attempt(self.client(i)).await {
                Ok(v) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Server(failure)) => self.failed(i, failure, &mut failures),
            }
        }
        Err(Error::NoVerifiedAnswer(failures))
    }

    /// Remembers a certified app hash; a different one for the same height is a fork.
    fn note_root(&self, r: CertifiedRoot) -> Result<(), Error> {
        let mut roots = locked(&self.inner.roots);
        match roots.get(&r.height) {
            Some(known) if *known != r.root => {
                return Err(Error::Fork {
                    what: "app hashes",
                    height: r.height,
                    first: hex::encode(known),
                    second: hex::encode(r.root),
                });
            }
            Some(_) => {}
            None => {
                roots.insert(r.height, r.root);
                while roots.len() > ROOTS_KEPT {
                    roots.pop_first();
                }
            }
        }
        Ok(())
    }

    fn fresh_chain(&self) -> Option<Arc<Chain>> {
        let snap = locked(&self.inner.snapshot);
        snap.as_ref()
            .filter(|(_, at)| at.is_some_and(|t| t.elapsed() < self.inner.refresh))
            .map(|(c, _)| c.clone())
    }

    /// Walks the chain to `to` (default: the latest block the servers report), verifying
    /// every block and validator-set change on the way, calling `observe` with each
    /// verified block. Returns the latest certified app hash. Certified policy only.
    pub async fn sync_to(
        &self,
        to: Option<u64>,
        observe: &mut (dyn FnMut(&VerifiedBlock) + Send),
    ) -> Result<CertifiedRoot, Error> {
        let mut guard = self.inner.walk.lock().await;
        let walk = guard.as_mut().ok_or_else(|| {
            Error::Config("walking the chain needs the certified policy (a genesis)".into())
        })?;
        self.sync_locked(walk, to, observe).await
    }

    /// Verifies the newest blocks now, whatever the refresh interval.
    pub async fn sync(&self) -> Result<CertifiedRoot, Error> {
        self.sync_to(None, &mut |_| {}).await
    }

    /// The latest verified height, asked for now: under the certified policy the newest
    /// blocks are walked whatever the refresh interval (a transaction the caller just saw
    /// applied is then seen as soon as the next block certifies it); under the others, as
    /// [`Ledger::latest_height`].
    pub async fn latest_height_now(&self) -> Result<u64, Error> {
        match self.inner.mode {
            Mode::Certified => Ok(self.sync().await?.height),
            _ => self.latest_height().await,
        }
    }

    async fn sync_locked(
        &self,
        walk: &mut Walk,
        to: Option<u64>,
        observe: &mut (dyn FnMut(&VerifiedBlock) + Send),
    ) -> Result<CertifiedRoot, Error> {
        let before = walk.chain.height();
        let mut failures = Vec::new();
        let mut outcome = Err(None);
        for i in self.order() {
            match self.walk_one(walk, self.client(i), to, observe).await {
                Ok(()) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    outcome = Ok(());
                    break;
                }
                Err(Attempt::Fatal(e)) => {
                    outcome = Err(Some(e));
                    break;
                }
                Err(Attempt::Server(failure)) => self.failed(i, failure, &mut failures),
            }
        }
        // Progress is verified even if a later block failed: keep it, but only a walk that
        // reached its goal makes the chain fresh.
        {
            let mut snap = locked(&self.inner.snapshot);
            let at = match (&outcome, snap.as_ref()) {
                (Err(_), Some((_, at))) => *at,
                _ => Some(Instant::now()),
            };
            *snap = Some((Arc::new(walk.chain.clone()), at));
        }
        if walk.chain.height() > before {
            debug!(from = before, to = walk.chain.height(), "verified blocks");
        }
        if walk.chain.height() >= walk.saved_at + self.inner.save_every {
            self.save(walk).await?;
        }
        match outcome {
            Ok(()) => walk.chain.latest_root().ok_or(Error::NothingCertified),
            Err(Some(fatal)) => Err(fatal),
            Err(None) => Err(Error::NoVerifiedAnswer(failures)),
        }
    }

    async fn walk_one(
        &self,
        walk: &mut Walk,
        mut client: LedgerClient<Channel>,
        to: Option<u64>,
        observe: &mut (dyn FnMut(&VerifiedBlock) + Send),
    ) -> Result<(), Attempt> {
        let goal = match to {
            Some(h) => h,
            None => {
                let latest = client
                    .get_commit(pb::CommitQuery { height: 0 })
                    .await
                    .map_err(rpc("GetCommit"))?
                    .into_inner();
                let h = latest
                    .certificate
                    .as_ref()
                    .ok_or_else(|| Lie::Malformed("the latest commit has no certificate".into()))?
                    .height;
                if h < walk.chain.height() {
                    return Err(Lie::StaleLatest {
                        latest: h,
                        verified: walk.chain.height(),
                    }
                    .into());
                }
                h
            }
        };
        let start = walk.chain.height() + 1;
        if goal < start {
            return Ok(());
        }
        // The chain this server continues must be the one verified so far: its block at
        // the last verified height must be the same block.
        let last = walk.chain.height();
        if last > 0 {
            let commit = client
                .get_commit(pb::CommitQuery { height: last })
                .await
                .map_err(rpc("GetCommit"))?
                .into_inner();
            let block = walk.chain.verify_block(last, &commit)?;
            if block.hash != walk.chain.block_hash() {
                return Err(Attempt::Fatal(Error::Fork {
                    what: "blocks",
                    height: last,
                    first: hex::encode(walk.chain.block_hash()),
                    second: hex::encode(block.hash),
                }));
            }
        }
        let steps = futures::stream::iter(start..=goal)
            .map(|h| fetch_step(client.clone(), h))
            .buffered(self.inner.pipeline);
        futures::pin_mut!(steps);
        while let Some(step) = steps.next().await {
            let (h, commit, record) = step?;
            let block = walk.chain.verify_block(h, &commit)?;
            self.note_root(block.certifies).map_err(Attempt::Fatal)?;
            observe(&block);
            walk.chain
                .advance(block, record.as_ref())
                .map_err(|e| match e {
                    StepError::Lie(l) => Attempt::Server(Failure::Lie(l)),
                    StepError::Unusable { height, source } => {
                        Attempt::Fatal(Error::UnusableValidatorSet { height, source })
                    }
                })?;
        }
        Ok(())
    }

    async fn save(&self, walk: &mut Walk) -> Result<(), Error> {
        let Some(path) = self.inner.checkpoint.clone() else {
            return Ok(());
        };
        let cp = Checkpoint {
            chain: walk.chain.clone(),
            keys: locked(&self.inner.keys).clone(),
            pending: walk.pending.clone(),
        };
        tokio::task::spawn_blocking(move || cp.save(&path))
            .await
            .map_err(|e| Error::Config(format!("the checkpoint writer panicked: {e}")))??;
        walk.saved_at = walk.chain.height();
        Ok(())
    }

    /// Writes the checkpoint now (certified policy with a checkpoint path; else a no-op).
    pub async fn save_checkpoint(&self) -> Result<(), Error> {
        let mut guard = self.inner.walk.lock().await;
        match guard.as_mut() {
            Some(walk) => self.save(walk).await,
            None => Ok(()),
        }
    }

    /// The latest certified app hash, walking new blocks if the last walk is older than the
    /// refresh interval.
    async fn latest_certified(&self) -> Result<CertifiedRoot, Error> {
        if let Some(r) = self.fresh_chain().and_then(|c| c.latest_root()) {
            return Ok(r);
        }
        let mut guard = self.inner.walk.lock().await;
        // Another task may have walked while this one waited.
        if let Some(r) = self.fresh_chain().and_then(|c| c.latest_root()) {
            return Ok(r);
        }
        let walk = guard.as_mut().ok_or(Error::NothingCertified)?;
        self.sync_locked(walk, None, &mut |_| {}).await
    }

    /// The certified app hash of `height`: from memory, else by checking the certificate of
    /// block `height + 1` against the derived validator set. Certified policy only.
    pub async fn certified_root(&self, height: u64) -> Result<CertifiedRoot, Error> {
        if let Some(root) = locked(&self.inner.roots).get(&height) {
            return Ok(CertifiedRoot {
                height,
                root: *root,
            });
        }
        let mut latest = self.latest_certified().await?;
        if height > latest.height {
            latest = self.sync().await?;
            if height > latest.height {
                return Err(Error::NotYetVerified {
                    asked: height,
                    latest: latest.height,
                });
            }
        }
        if let Some(root) = locked(&self.inner.roots).get(&height) {
            return Ok(CertifiedRoot {
                height,
                root: *root,
            });
        }
        let chain = self.chain().ok_or(Error::NothingCertified)?;
        let block = self
            .failover(|mut client| {
                let chain = chain.clone();
                async move {
                    let commit = client
                        .get_commit(pb::CommitQuery { height: height + 1 })
                        .await
                        .map_err(rpc("GetCommit"))?
                        .into_inner();
                    Ok(chain.verify_block(height + 1, &commit)?)
                }
            })
            .await?;
        self.note_root(block.certifies)?;
        Ok(block.certifies)
    }

    /// The block of `height` (0 = the latest) with its certificate checked: against the
    /// validator set derived from genesis under the certified policy (walking the chain to
    /// it first), else against the set the server claims, which [`CheckedCommit::derived`]
    /// then says.
    pub async fn check_commit(&self, height: u64) -> Result<CheckedCommit, Error> {
        if matches!(self.inner.mode, Mode::Certified) {
            let root = self
                .sync_to((height > 0).then_some(height), &mut |_| {})
                .await?;
            let chain = self.chain().ok_or(Error::NothingCertified)?;
            let h = if height == 0 { root.height + 1 } else { height };
            let set = chain.set_for(h).cloned().ok_or(Error::NothingCertified)?;
            return self
                .failover(|mut client| {
                    let chain = chain.clone();
                    let set = set.clone();
                    async move {
                        let commit = client
                            .get_commit(pb::CommitQuery { height: h })
                            .await
                            .map_err(rpc("GetCommit"))?
                            .into_inner();
                        let block = chain.verify_block(h, &commit)?;
                        Ok(CheckedCommit {
                            block,
                            certificate: commit.certificate.unwrap_or_default(),
                            validators: set,
                            derived: true,
                        })
                    }
                })
                .await;
        }
        self.failover(|mut client| async move {
            let commit = client
                .get_commit(pb::CommitQuery { height })
                .await
                .map_err(rpc("GetCommit"))?
                .into_inner();
            let claimed = ValidatorSet::from_updates(&commit.validators).map_err(|e| {
                Lie::Malformed(format!("the claimed validator set is unusable: {e}"))
            })?;
            let h = commit.certificate.as_ref().map_or(0, |c| c.height);
            if height > 0 && h != height {
                return Err(Lie::ReplayedBlock {
                    asked: height,
                    got: h,
                }
                .into());
            }
            let block = crate::chain::verify_block_with(&commit.chain_id, h, &claimed, &commit)?;
            Ok(CheckedCommit {
                block,
                certificate: commit.certificate.unwrap_or_default(),
                validators: claimed,
                derived: false,
            })
        })
        .await
    }

    /// The root answers at `at` are checked against; `None` under the server-stated policy.
    async fn root_for(&self, at: At) -> Result<Option<(u64, [u8; 32], Basis)>, Error> {
        match &self.inner.mode {
            Mode::Certified => {
                let r = match at {
                    At::Latest => self.latest_certified().await?,
                    At::Height(h) => self.certified_root(h).await?,
                };
                Ok(Some((r.height, r.root, Basis::Certified)))
            }
            Mode::Pinned(t) => match at {
                At::Height(h) if h != t.height => Err(Error::PinnedHeight {
                    pinned: t.height,
                    asked: h,
                }),
                _ => Ok(Some((t.height, t.root, Basis::Pinned))),
            },
            Mode::ServerStated => Ok(None),
        }
    }

    /// One verified read against `root` (or, under the server-stated policy, the root the
    /// answer states): ask the servers in turn and check the answer.
    async fn read<A, T, F, Fut, C>(
        &self,
        at: At,
        root: Option<(u64, [u8; 32], Basis)>,
        fetch: F,
        check: C,
    ) -> Result<Verified<T>, Error>
    where
        A: Anchored,
        F: Fn(LedgerClient<Channel>, u64) -> Fut,
        Fut: Future<Output = Result<A, Failure>>,
        C: Fn(&[u8; 32], u64, &A) -> Result<T, Lie>,
    {
        let asked = match (root, at) {
            // Asking for height 0 would be answered from the server's latest height, and
            // then refused as stale: say what is missing instead.
            (Some((0, _, _)), _) => return Err(Error::OnlyGenesisCertified),
            (Some((h, _, _)), _) | (None, At::Height(h)) => h,
            (None, At::Latest) => 0,
        };
        let check = &check;
        self.failover(|client| {
            let fetched = fetch(client, asked);
            async move {
                let ans = fetched.await?;
                let (height, root, basis) = match root {
                    Some(r) => r,
                    None => {
                        let (h, r) = verify::stated_anchor(&ans)?;
                        if asked != 0 && h != asked {
                            return Err(Lie::StaleHeight { asked, answered: h }.into());
                        }
                        (h, r, Basis::ServerStated)
                    }
                };
                let value = check(&root, height, &ans)?;
                Ok(Verified {
                    value,
                    height,
                    root,
                    basis,
                })
            }
        })
        .await
    }

    /// [`GrpcLedger::read`] through the cache (answers on a server-stated root are not
    /// cached).
    async fn cached_read<A, T, F, Fut, C>(
        &self,
        at: At,
        query: Query,
        fetch: F,
        check: C,
    ) -> Result<Verified<T>, Error>
    where
        A: Anchored,
        T: Clone + Into<Answer> + TryFrom<Answer>,
        F: Fn(LedgerClient<Channel>, u64) -> Fut,
        Fut: Future<Output = Result<A, Failure>>,
        C: Fn(&[u8; 32], u64, &A) -> Result<T, Lie>,
    {
        let root = self.root_for(at).await?;
        if let Some(hit) = self.cached(root, &query) {
            return Ok(hit);
        }
        let v = self.read(at, root, fetch, check).await?;
        self.cache(&v, query);
        Ok(v)
    }

    fn cached<T: TryFrom<Answer>>(
        &self,
        root: Option<(u64, [u8; 32], Basis)>,
        query: &Query,
    ) -> Option<Verified<T>> {
        let (height, _, _) = root?;
        let hit = locked(&self.inner.cache).get(height, query.clone())?;
        let value = T::try_from(hit.value.clone()).ok()?;
        Some(hit.map(|_| value))
    }

    fn cache<T: Clone + Into<Answer>>(&self, v: &Verified<T>, query: Query) {
        if v.basis != Basis::ServerStated {
            locked(&self.inner.cache).insert(v.height, query, v.clone().map(Into::into));
        }
    }

    /// The app hash of a height, checked: certified (certified policy), equal to the
    /// pinned one as the server confirms (pinned policy), or as a server states it.
    pub async fn root(&self, at: At) -> Result<Verified<()>, Error> {
        let root = self.root_for(at).await?;
        if let Some((height, root, Basis::Certified)) = root {
            return Ok(Verified {
                value: (),
                height,
                root,
                basis: Basis::Certified,
            });
        }
        self.read(
            at,
            root,
            |mut c, height| async move {
                c.get_validator_set(pb::HeightQuery { height })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(rpc("GetValidatorSet"))
            },
            |root, height, ans: &pb::ValidatorSetAnswer| verify::check_anchor(ans, height, root),
        )
        .await
    }

    /// The server's own status (chain id, height, mempool size, moniker), unverified.
    pub async fn server_status(&self) -> Result<pb::StatusAnswer, Error> {
        self.failover(|mut c| async move {
            Ok(c.get_status(pb::GetStatusRequest {})
                .await
                .map_err(rpc("GetStatus"))?
                .into_inner())
        })
        .await
    }

    /// [`Ledger::identity`] without the key-directory check: the verified identity, and the
    /// SHA-256 of each key history entry.
    pub(crate) async fn identity_with_digests(
        &self,
        who: &IdentityKey,
        at: At,
    ) -> Result<Verified<(Option<Identity>, Vec<[u8; 32]>)>, Error> {
        let who = *who;
        let root = self.root_for(at).await?;
        self.read(
            at,
            root,
            move |mut c, height| async move {
                c.get_key_history(pb::IdentityQuery {
                    identity: who.to_vec(),
                    height,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(rpc("GetKeyHistory"))
            },
            move |root, height, ans| verify::identity(root, height, &who, ans),
        )
        .await
    }

    /// Compares a verified key history with the key directory and remembers it.
    pub(crate) fn observe_keys(
        &self,
        who: &IdentityKey,
        height: u64,
        digests: &[[u8; 32]],
    ) -> Result<Growth, Rewrite> {
        locked(&self.inner.keys).observe(who, height, digests)
    }

    pub(crate) fn track_identity(&self, who: IdentityKey) {
        locked(&self.inner.keys).track(who);
    }

    /// Runs `f` on the walk's pending key checks (certified policy only).
    pub(crate) async fn with_pending<R>(
        &self,
        f: impl FnOnce(&mut Vec<(u64, IdentityKey)>) -> R,
    ) -> Option<R> {
        self.inner
            .walk
            .lock()
            .await
            .as_mut()
            .map(|w| f(&mut w.pending))
    }
}

fn valid_list(list: &str) -> Result<(), Error> {
    if keys::is_valid_list_name(list) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{list:?} is not a list name (1-64 characters of a-z, 0-9, '-', '.')"
        )))
    }
}

async fn fetch_step(
    mut client: LedgerClient<Channel>,
    h: u64,
) -> Result<(u64, pb::CommitAnswer, Option<pb::ValidatorSetAnswer>), Attempt> {
    let mut other = client.clone();
    let commit = client
        .get_commit(pb::CommitQuery { height: h })
        .map_ok(|r| r.into_inner())
        .map_err(rpc("GetCommit"));
    let record = async move {
        match Chain::record_needed(h) {
            None => Ok(None),
            Some(height) => other
                .get_validator_set(pb::HeightQuery { height })
                .await
                .map(|r| Some(r.into_inner()))
                .map_err(rpc("GetValidatorSet")),
        }
    };
    let (commit, record) = futures::try_join!(commit, record)?;
    Ok((h, commit, record))
}

macro_rules! answer {
    ($variant:ident, $t:ty) => {
        impl From<$t> for Answer {
            fn from(v: $t) -> Self {
                Answer::$variant(v)
            }
        }
        impl TryFrom<Answer> for $t {
            type Error = ();
            fn try_from(a: Answer) -> Result<Self, ()> {
                match a {
                    Answer::$variant(v) => Ok(v),
                    _ => Err(()),
                }
            }
        }
    };
}
answer!(Membership, Membership);
answer!(List, Option<List>);
answer!(Identity, Option<Identity>);
answer!(Trust, Vec<pb::TrustStatement>);
answer!(Path, TrustPath);

impl Ledger for GrpcLedger {
    async fn latest_height(&self) -> Result<u64, Error> {
        match &self.inner.mode {
            Mode::Certified => Ok(self.latest_certified().await?.height),
            Mode::Pinned(t) => Ok(t.height),
            Mode::ServerStated => {
                let s = self.server_status().await?;
                Ok(verify::stated_anchor(&s)
                    .map_err(|l| {
                        Error::NoVerifiedAnswer(vec![EndpointFailure {
                            endpoint: self.endpoints()[0].to_owned(),
                            failure: Failure::Lie(l),
                        }])
                    })?
                    .0)
            }
        }
    }

    async fn membership(
        &self,
        list: &str,
        who: &IdentityKey,
        at: At,
    ) -> Result<Verified<Membership>, Error> {
        valid_list(list)?;
        let (list, who) = (list.to_owned(), *who);
        self.cached_read(
            at,
            Query::Membership(list.clone(), who),
            |mut c, height| {
                let list = list.clone();
                async move {
                    c.check_membership(pb::MembershipQuery {
                        list,
                        identity: who.to_vec(),
                        height,
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(rpc("CheckMembership"))
                }
            },
            |root, height, ans| verify::membership(root, height, &list, &who, ans),
        )
        .await
    }

    async fn list(&self, list: &str, at: At) -> Result<Verified<Option<List>>, Error> {
        valid_list(list)?;
        let list = list.to_owned();
        self.cached_read(
            at,
            Query::List(list.clone()),
            |mut c, height| {
                let list = list.clone();
                async move {
                    c.list_members(pb::ListQuery { list, height })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(rpc("ListMembers"))
                }
            },
            |root, height, ans| verify::list_members(root, height, &list, ans),
        )
        .await
    }

    async fn identity(
        &self,
        who: &IdentityKey,
        at: At,
    ) -> Result<Verified<Option<Identity>>, Error> {
        let query = Query::Identity(*who);
        if let Some(hit) = self.cached(self.root_for(at).await?, &query) {
            return Ok(hit);
        }
        let v = self.identity_with_digests(who, at).await?;
        if v.basis != Basis::ServerStated {
            self.observe_keys(who, v.height, &v.value.1)?;
        }
        let v = v.map(|(identity, _)| identity);
        self.cache(&v, query);
        Ok(v)
    }

    async fn mailbox_hosts(
        &self,
        who: &IdentityKey,
        at: At,
    ) -> Result<Verified<Vec<IdentityKey>>, Error> {
        Ok(self
            .identity(who, at)
            .await?
            .map(|i| i.map(|i| i.mailbox_hosts).unwrap_or_default()))
    }

    async fn trust(
        &self,
        who: &IdentityKey,
        direction: Direction,
        at: At,
    ) -> Result<Verified<Vec<pb::TrustStatement>>, Error> {
        let who = *who;
        let wire = match direction {
            Direction::Outgoing => trust_query::Direction::Outgoing,
            Direction::Incoming => trust_query::Direction::Incoming,
        };
        self.cached_read(
            at,
            Query::Trust(who, direction),
            move |mut c, height| async move {
                c.get_trust(pb::TrustQuery {
                    identity: who.to_vec(),
                    direction: wire as i32,
                    height,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(rpc("GetTrust"))
            },
            move |root, height, ans| verify::trust(root, height, &who, direction, ans),
        )
        .await
    }

    async fn trust_path(
        &self,
        from: &IdentityKey,
        to: &IdentityKey,
        limits: PathLimits,
        at: At,
    ) -> Result<Verified<TrustPath>, Error> {
        if !(1..=6).contains(&limits.max_depth) {
            return Err(Error::InvalidArgument(format!(
                "a trust path's depth is 1 to 6, not {}",
                limits.max_depth
            )));
        }
        let (from, to) = (*from, *to);
        self.cached_read(
            at,
            Query::Path(from, to, limits),
            move |mut c, height| async move {
                c.find_trust_path(pb::TrustPathQuery {
                    from: from.to_vec(),
                    to: to.to_vec(),
                    max_depth: limits.max_depth,
                    min_level: limits.min_level,
                    height,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(rpc("FindTrustPath"))
            },
            move |root, height, ans| verify::trust_path(root, height, &from, &to, limits, ans),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The genesis state cannot be asked for on the wire (height 0 means "the latest"), so a
    /// read against a root at height 0 is refused up front, as transient, before any server
    /// is asked: the answer would come from a later height and look like a stale-height lie.
    #[tokio::test]
    async fn a_root_at_genesis_is_not_queried() {
        let pinned = RootPolicy::Pinned(TrustedRoot {
            height: 0,
            root: [7; 32],
        });
        // Port 9 (discard) on loopback: nothing is asked, so nothing needs to listen.
        let ledger =
            GrpcLedger::new(Config::new(vec!["http://127.0.0.1:9".into()], pinned)).unwrap();
        let err = ledger.identity(&[1; 32], At::Latest).await.unwrap_err();
        assert!(matches!(err, Error::OnlyGenesisCertified), "{err}");
        assert!(err.is_transient());
    }
}
