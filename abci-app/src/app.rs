//! The ABCI 2.0 application: the thin edge between a consensus engine and the ledger.
//!
//! [`LedgerApp`] implements tendermint-abci's [`Application`], so it runs unchanged under
//! CometBFT through the ABCI socket server, and in-process under the devnet's embedded engine.
//! It translates requests to the pure state machine ([`crate::execute`]) and the durable store
//! ([`crate::storage`]) and holds the little state in between: the block finalized but not yet
//! committed, and the mempool's check state. Events of each committed block are stored and
//! broadcast to gRPC subscribers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use onionpost_proto::v1::{LedgerEvent, ValidatorUpdate};
use prost::Message;
use tendermint_abci::Application;
use tendermint_proto::v0_38::abci::{
    CheckTxType, Event, EventAttribute, ExecTxResult, RequestCheckTx, RequestFinalizeBlock,
    RequestInfo, RequestInitChain, RequestPrepareProposal, RequestProcessProposal, RequestQuery,
    ResponseCheckTx, ResponseCommit, ResponseFinalizeBlock, ResponseInfo, ResponseInitChain,
    ResponsePrepareProposal, ResponseProcessProposal, ResponseQuery,
    response_process_proposal::ProposalStatus,
};
use tendermint_proto::v0_38::crypto::{ProofOp, ProofOps, PublicKey, public_key::Sum};
use tokio::sync::broadcast;
use tracing::{debug, error, info, warn};

use crate::error::TxError;
use crate::execute::{self, BlockContext, MAX_TX_BYTES, Overlay, WriteSet};
use crate::genesis::AppGenesis;
use crate::mempool::{MAX_REGISTRATIONS_PER_BLOCK, Mempool, MempoolError, MempoolLimits};
use crate::storage::{PreparedBlock, Storage, StorageError};
use onionpost_proto::tx::DecodedTx;

/// Version string reported by Info.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The ABCI application protocol version of this state machine.
pub const APP_PROTOCOL_VERSION: u64 = 1;
/// Transactions the mempool holds at most: about five seconds of what a small validator set
/// commits. A deeper queue only spends CPU on CheckTx for transactions that would wait for
/// many seconds (measured: past saturation throughput collapsed with 50,000).
pub const MEMPOOL_CAPACITY: usize = 10_000;

/// The ledger application. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct LedgerApp {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    state: Mutex<AppState>,
    events: broadcast::Sender<LedgerEvent>,
    mempool: Mempool,
}

#[derive(Default)]
struct AppState {
    /// FinalizeBlock's result, waiting for Commit.
    pending: Option<Pending>,
    /// Writes of transactions accepted by CheckTx since the last commit, so a signer's
    /// consecutive nonces pass CheckTx before a block includes them.
    check_writes: WriteSet,
}

struct Pending {
    block: PreparedBlock,
    events: Vec<LedgerEvent>,
    tx_hashes: Vec<[u8; 32]>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the ledger database in {dir}: {source}")]
pub struct OpenError {
    dir: String,
    source: StorageError,
}

impl LedgerApp {
    /// Opens the ledger whose database lives in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with_mempool(dir, MEMPOOL_CAPACITY)
    }

    /// [`LedgerApp::open`] with a mempool of `capacity` transactions (in each lane).
    pub fn open_with_mempool(dir: &Path, capacity: usize) -> Result<Self, OpenError> {
        Self::open_with_limits(dir, MempoolLimits::with_capacity(capacity))
    }

    /// [`LedgerApp::open`] with a mempool of these limits.
    pub fn open_with_limits(dir: &Path, limits: MempoolLimits) -> Result<Self, OpenError> {
        let storage = Storage::open(dir).map_err(|source| OpenError {
            dir: dir.display().to_string(),
            source,
        })?;
        if let Some(c) = storage.committed() {
            info!(height = c.height, app_hash = %hex::encode(c.app_hash), chain_id = %c.chain_id, "ledger state loaded");
        }
        let (events, _) = broadcast::channel(4096);
        Ok(Self {
            inner: Arc::new(Inner {
                storage,
                state: Mutex::default(),
                events,
                mempool: Mempool::with_limits(limits),
            }),
        })
    }

    /// The durable store (for queries).
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Transactions waiting for a block.
    pub fn mempool(&self) -> &Mempool {
        &self.inner.mempool
    }

    /// Live events of committed blocks.
    pub fn subscribe(&self) -> broadcast::Receiver<LedgerEvent> {
        self.inner.events.subscribe()
    }

    /// Runs CheckTx and, when it passes, queues the transaction in the mempool.
    /// A full mempool refuses before CheckTx: under overload the cheap refusal is what keeps
    /// the validator's CPU for the transactions it can commit.
    pub fn submit(&self, tx: Vec<u8>) -> Result<[u8; 32], (u32, String)> {
        let fail = |e: TxError| (e.code(), e.to_string());
        let full = || {
            TxError::Mempool(format!(
                "mempool is full ({} transactions); retry after the next block",
                self.inner.mempool.len()
            ))
        };
        let hash = onionpost_proto::tx::tx_hash(&tx);
        if self.inner.mempool.is_full() {
            return Err(fail(full()));
        }
        // The lane's room is known once decoded, before the costly signature check.
        let decoded = self.stateless_check(&tx, false).map_err(fail)?;
        let no_room = |e: MempoolError| fail(TxError::Mempool(e.to_string()));
        self.inner.mempool.room_for(&decoded).map_err(no_room)?;
        if !decoded.verify_signature() {
            return Err(fail(bad_signature(&decoded)));
        }
        // Check and queue under one lock (every insert happens under it), so the check state
        // always holds exactly the writes of the transactions waiting in the mempool.
        let mut state = self.state();
        self.inner.mempool.room_for(&decoded).map_err(no_room)?;
        self.check_on_state(&mut state, &decoded).map_err(|e| {
            debug!(code = e.code(), error = %e, "CheckTx rejected a transaction");
            fail(e)
        })?;
        // Cannot fail: not full (checked under the lock) and not a duplicate (a duplicate
        // fails the check, its nonce being spent in the check state).
        self.inner
            .mempool
            .insert(hash, tx, decoded)
            .map_err(|e| fail(TxError::Mempool(e.to_string())))?;
        Ok(hash)
    }

    fn chain_id(&self) -> Option<String> {
        self.inner.storage.committed().map(|c| c.chain_id)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.inner.state.lock().expect("ledger state lock poisoned")
    }

    /// CheckTx: the stateless checks, then a dry run on the check state.
    fn check(&self, raw: &[u8], verify_signature: bool) -> Result<(), TxError> {
        let tx = self.stateless_check(raw, verify_signature)?;
        let mut state = self.state();
        self.check_on_state(&mut state, &tx)
    }

    /// Size, envelope, chain id and (unless `verify_signature` is false, for a re-check of a
    /// transaction verified before) the signature.
    fn stateless_check(&self, raw: &[u8], verify_signature: bool) -> Result<DecodedTx, TxError> {
        let chain_id = self.chain_id().ok_or_else(|| {
            TxError::Invalid("the ledger has no genesis yet; InitChain has not run".into())
        })?;
        let tx = execute::decode_checked(raw, &chain_id)?;
        if verify_signature && !tx.verify_signature() {
            return Err(bad_signature(&tx));
        }
        Ok(tx)
    }

    /// The context CheckTx judges a transaction in: the next height, the last block's time.
    fn check_context(&self) -> Option<BlockContext> {
        let committed = self.inner.storage.committed()?;
        Some(BlockContext {
            chain_id: committed.chain_id,
            height: committed.height + 1,
            time: self.last_block_time(),
        })
    }

    /// Dry-runs `tx` on the check state (committed state plus the transactions accepted since
    /// the last commit). A refusal leaves the check state as it was: the transaction never
    /// enters the mempool, so it must not spend the signer's nonce there.
    fn check_on_state(&self, state: &mut AppState, tx: &DecodedTx) -> Result<(), TxError> {
        let ctx = self.check_context().ok_or_else(|| {
            TxError::Invalid("the ledger has no genesis yet; InitChain has not run".into())
        })?;
        let latest = self.inner.storage.latest();
        let mut overlay = Overlay::with_writes(&latest, std::mem::take(&mut state.check_writes));
        let result = execute::check_tx(&mut overlay, &ctx, tx);
        state.check_writes = overlay.into_writes();
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(read) => Err(TxError::Invalid(format!("ledger state unreadable: {read}"))),
        }
    }

    /// After a commit: re-checks every waiting transaction, in order, against the new state,
    /// and drops those the block made invalid (a nonce another validator's block spent, a
    /// membership already changed, ...). Rebuilds the check state from the survivors.
    /// Signatures were verified when the transactions arrived and are not verified again.
    fn recheck_mempool(&self, state: &mut AppState) {
        let Some(ctx) = self.check_context() else {
            return;
        };
        let latest = self.inner.storage.latest();
        let mut overlay = Overlay::new(&latest);
        let mut gone = Vec::new();
        let waiting = self.inner.mempool.decoded();
        for (hash, tx) in &waiting {
            match execute::check_tx(&mut overlay, &ctx, tx) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(tx = %hex::encode(hash), code = e.code(), error = %e, "re-check dropped a waiting transaction");
                    gone.push(*hash);
                }
                Err(read) => {
                    warn!(tx = %hex::encode(hash), error = %read, "re-check could not read the state; dropping the transaction");
                    gone.push(*hash);
                }
            }
        }
        state.check_writes = overlay.into_writes();
        self.inner.mempool.remove(&gone);
        if !gone.is_empty() {
            debug!(
                dropped = gone.len(),
                kept = waiting.len() - gone.len(),
                "mempool re-checked"
            );
        }
    }

    /// The time of the last committed block: CheckTx judges trust expiry against it.
    fn last_block_time(&self) -> u64 {
        use crate::execute::StateRead;
        self.inner
            .storage
            .latest()
            .get(&onionpost_proto::keys::block_info())
            .ok()
            .flatten()
            .and_then(|b| onionpost_proto::v1::BlockInfo::decode(b.as_slice()).ok())
            .map_or(0, |b| b.time)
    }
}

fn bad_signature(tx: &DecodedTx) -> TxError {
    TxError::BadSignature {
        signer: onionpost_proto::onion::OnionAddress::from_public_key(tx.signer).hostname(),
    }
}

/// The signer of `raw` if it is a registration (`None` for anything else, or undecodable).
fn registration_signer(raw: &[u8]) -> Option<Vec<u8>> {
    use onionpost_proto::v1::{SignedTx, TxBody, tx_body::Action};
    let tx = SignedTx::decode(raw).ok()?;
    let body = TxBody::decode(tx.body.as_slice()).ok()?;
    matches!(body.action, Some(Action::RegisterIdentity(_))).then_some(tx.signer)
}

/// How many of `txs` are registrations.
fn count_registrations(txs: &[Bytes]) -> usize {
    txs.iter()
        .filter(|t| registration_signer(t).is_some())
        .count()
}

fn to_abci_validator(v: &ValidatorUpdate) -> tendermint_proto::v0_38::abci::ValidatorUpdate {
    tendermint_proto::v0_38::abci::ValidatorUpdate {
        pub_key: Some(PublicKey {
            sum: Some(Sum::Ed25519(v.pub_key.clone())),
        }),
        power: v.power as i64,
    }
}

fn from_abci_validator(
    v: &tendermint_proto::v0_38::abci::ValidatorUpdate,
) -> Result<ValidatorUpdate, String> {
    match v.pub_key.as_ref().and_then(|k| k.sum.as_ref()) {
        Some(Sum::Ed25519(key)) if key.len() == 32 && v.power >= 0 => Ok(ValidatorUpdate {
            pub_key: key.clone(),
            power: v.power as u64,
        }),
        _ => Err(format!(
            "genesis validator {v:?} is not an ed25519 key with non-negative power"
        )),
    }
}

fn event_to_abci(e: &LedgerEvent) -> Event {
    let attr = |key: &str, value: String| EventAttribute {
        key: key.into(),
        value,
        index: true,
    };
    let mut attributes = vec![
        attr("kind", e.kind.clone()),
        attr("signer", hex::encode(&e.signer)),
    ];
    if !e.list.is_empty() {
        attributes.push(attr("list", e.list.clone()));
    }
    if !e.subject.is_empty() {
        attributes.push(attr("subject", hex::encode(&e.subject)));
    }
    Event {
        r#type: "onionpost".into(),
        attributes,
    }
}

fn unix_seconds(t: Option<&tendermint_proto::google::protobuf::Timestamp>) -> u64 {
    t.map_or(0, |t| t.seconds.max(0) as u64)
}

impl Application for LedgerApp {
    fn info(&self, _request: RequestInfo) -> ResponseInfo {
        let committed = self.inner.storage.committed();
        ResponseInfo {
            data: "onionpost-ledger".into(),
            version: APP_VERSION.into(),
            app_version: APP_PROTOCOL_VERSION,
            last_block_height: committed.as_ref().map_or(0, |c| c.height as i64),
            last_block_app_hash: committed
                .map(|c| Bytes::copy_from_slice(&c.app_hash))
                .unwrap_or_default(),
        }
    }

    fn init_chain(&self, request: RequestInitChain) -> ResponseInitChain {
        let storage = &self.inner.storage;
        if let Some(c) = storage.committed() {
            // CometBFT calls InitChain again while the app reports height 0.
            assert_eq!(
                c.chain_id, request.chain_id,
                "this ledger database belongs to chain {:?}, not {:?}",
                c.chain_id, request.chain_id
            );
            let root = storage.root_at(0).expect("genesis root is readable");
            return ResponseInitChain {
                app_hash: Bytes::copy_from_slice(&root),
                ..Default::default()
            };
        }
        let genesis = AppGenesis::from_json(&request.app_state_bytes)
            .unwrap_or_else(|e| panic!("cannot start the ledger: {e}"));
        let validators: Vec<ValidatorUpdate> = request
            .validators
            .iter()
            .map(from_abci_validator)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("cannot start the ledger: {e}"));
        let writes = genesis
            .writes(&request.chain_id, validators)
            .unwrap_or_else(|e| panic!("cannot start the ledger: {e}"));
        let block = storage
            .prepare(0, &writes)
            .unwrap_or_else(|e| panic!("cannot write genesis: {e}"));
        let committed = storage
            .commit(block, &request.chain_id, &[])
            .unwrap_or_else(|e| panic!("cannot write genesis: {e}"));
        info!(chain_id = %request.chain_id, app_hash = %hex::encode(committed.app_hash), "genesis written");
        ResponseInitChain {
            app_hash: Bytes::copy_from_slice(&committed.app_hash),
            ..Default::default()
        }
    }

    fn query(&self, request: RequestQuery) -> ResponseQuery {
        // Path "/key": data is a raw state key (see onionpost_proto::keys). The gRPC service
        // offers typed queries; this one lets CometBFT's abci_query read any key with a proof.
        let fail = |code: u32, log: String| ResponseQuery {
            code,
            log,
            codespace: TxError::CODESPACE.into(),
            ..Default::default()
        };
        if request.path != "/key" {
            return fail(
                12,
                format!(
                    "unknown query path {:?}; the only path is \"/key\"",
                    request.path
                ),
            );
        }
        let storage = &self.inner.storage;
        let height = match storage.resolve_height(request.height.max(0) as u64) {
            Ok(h) => h,
            Err(e) => return fail(12, e.to_string()),
        };
        match storage.prove(&request.data, height) {
            Ok(pv) => ResponseQuery {
                code: 0,
                log: if pv.present {
                    "exists"
                } else {
                    "does not exist"
                }
                .into(),
                key: request.data,
                value: Bytes::from(pv.value),
                proof_ops: request.prove.then(|| ProofOps {
                    ops: vec![ProofOp {
                        r#type: "jmt:sha256:borsh".into(),
                        key: pv.key,
                        data: pv.proof,
                    }],
                }),
                height: height as i64,
                ..Default::default()
            },
            Err(e) => fail(12, e.to_string()),
        }
    }

    fn check_tx(&self, request: RequestCheckTx) -> ResponseCheckTx {
        // CometBFT re-checks its waiting transactions after each commit (type Recheck): their
        // signatures were verified when they first arrived.
        let recheck = request.r#type == CheckTxType::Recheck as i32;
        match self.check(&request.tx, !recheck) {
            Ok(()) => ResponseCheckTx::default(),
            Err(e) => {
                debug!(code = e.code(), error = %e, "CheckTx rejected a transaction");
                ResponseCheckTx {
                    code: e.code(),
                    log: e.to_string(),
                    codespace: TxError::CODESPACE.into(),
                    ..Default::default()
                }
            }
        }
    }

    fn prepare_proposal(&self, request: RequestPrepareProposal) -> ResponsePrepareProposal {
        let max = request.max_tx_bytes.max(0) as usize;
        let mut total = 0;
        // At most MAX_REGISTRATIONS_PER_BLOCK registrations; the rest (and later transactions
        // of the identities they register) wait, everything else goes in.
        let mut registrations = 0;
        let mut deferred = std::collections::HashSet::new();
        let txs = request
            .txs
            .into_iter()
            .filter(|tx| tx.len() <= MAX_TX_BYTES)
            .filter(|tx| match registration_signer(tx) {
                Some(signer) if registrations >= MAX_REGISTRATIONS_PER_BLOCK => {
                    deferred.insert(signer);
                    false
                }
                Some(_) => {
                    registrations += 1;
                    true
                }
                None => onionpost_proto::v1::SignedTx::decode(tx.as_ref())
                    .map_or(true, |t| !deferred.contains(&t.signer)),
            })
            .take_while(|tx| {
                total += tx.len();
                total <= max
            })
            .collect();
        ResponsePrepareProposal { txs }
    }

    fn process_proposal(&self, request: RequestProcessProposal) -> ResponseProcessProposal {
        // Undecodable or badly signed transactions are harmless (FinalizeBlock rejects them one
        // by one); an oversized one means the proposer broke the rules, so reject the block.
        let oversized = request.txs.iter().any(|tx| tx.len() > MAX_TX_BYTES);
        if oversized {
            warn!(
                height = request.height,
                "rejecting a proposal with an oversized transaction"
            );
        }
        let registrations = count_registrations(&request.txs);
        if registrations > MAX_REGISTRATIONS_PER_BLOCK {
            warn!(
                height = request.height,
                registrations,
                limit = MAX_REGISTRATIONS_PER_BLOCK,
                "rejecting a proposal with too many registrations"
            );
        }
        let ok = !oversized && registrations <= MAX_REGISTRATIONS_PER_BLOCK;
        ResponseProcessProposal {
            status: if ok {
                ProposalStatus::Accept
            } else {
                ProposalStatus::Reject
            } as i32,
        }
    }

    fn finalize_block(&self, request: RequestFinalizeBlock) -> ResponseFinalizeBlock {
        let storage = &self.inner.storage;
        let committed = storage
            .committed()
            .expect("FinalizeBlock before InitChain: the engine must run InitChain first");
        let height = request.height.max(0) as u64;
        assert_eq!(
            height,
            committed.height + 1,
            "FinalizeBlock for height {height} but the ledger is at {}",
            committed.height
        );
        let ctx = BlockContext {
            chain_id: committed.chain_id.clone(),
            height,
            time: unix_seconds(request.time.as_ref()),
        };
        let outcome = execute::execute_block(&storage.latest(), &ctx, &request.txs)
            .unwrap_or_else(|e| panic!("cannot execute block {height}: {e}"));
        let block = storage
            .prepare(height, &outcome.writes)
            .unwrap_or_else(|e| panic!("cannot compute the state root of block {height}: {e}"));
        let app_hash = Bytes::copy_from_slice(&block.root);
        let tx_results = outcome
            .tx_results
            .iter()
            .map(|r| match &r.result {
                Ok(()) => ExecTxResult::default(),
                Err(e) => ExecTxResult {
                    code: e.code(),
                    log: e.to_string(),
                    codespace: TxError::CODESPACE.into(),
                    ..Default::default()
                },
            })
            .collect();
        let events = outcome.events.iter().map(event_to_abci).collect();
        debug!(height, txs = request.txs.len(), "block finalized");
        self.state().pending = Some(Pending {
            block,
            events: outcome.events,
            tx_hashes: outcome.tx_results.iter().map(|r| r.hash).collect(),
        });
        ResponseFinalizeBlock {
            events,
            tx_results,
            validator_updates: outcome
                .validator_updates
                .iter()
                .map(to_abci_validator)
                .collect(),
            consensus_param_updates: None,
            app_hash,
        }
    }

    fn commit(&self) -> ResponseCommit {
        let mut state = self.state();
        let Some(pending) = state.pending.take() else {
            error!("Commit without FinalizeBlock; nothing to commit");
            return ResponseCommit::default();
        };
        let chain_id = self.chain_id().expect("committed state has a chain id");
        let committed = self
            .inner
            .storage
            .commit(pending.block, &chain_id, &pending.events)
            .unwrap_or_else(|e| panic!("cannot commit: {e}"));
        state.check_writes.clear();
        self.inner.mempool.remove(&pending.tx_hashes);
        self.recheck_mempool(&mut state);
        drop(state);
        for e in pending.events {
            // No subscribers is fine.
            let _ = self.inner.events.send(e);
        }
        debug!(height = committed.height, app_hash = %hex::encode(committed.app_hash), "block committed");
        ResponseCommit { retain_height: 0 }
    }
}
