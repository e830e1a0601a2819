//! The host: answers the Malachite engine's requests by driving the ledger's ABCI
//! [`Application`] — propose → PrepareProposal, a complete received proposal →
//! ProcessProposal, decided → FinalizeBlock + Commit — and serves decided blocks to
//! validators that sync.
//!
//! Every engine message is answered (an unanswered one stalls consensus). Blocks are stored
//! before the engine learns their hash, and a decided block with its certificate is stored
//! before the ledger commits it, so a crash at any point is repaired on restart by the engine's
//! write-ahead log replaying the same messages. The validator set of height `h` is the ledger's
//! `validators` record at version `h - 2`: updates returned by FinalizeBlock(h) apply at h + 2.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use malachitebft_app_channel::app::consensus::ProposedValue;
use malachitebft_app_channel::app::engine::host::{HeightParams, Next, SyncedValueOutcome};
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::{LocallyProposedValue, PeerId};
use malachitebft_app_channel::{AppMsg, Channels, NetworkMsg};
use malachitebft_core_types::{
    Context, ExtendedCommitCertificate, LinearTimeouts, Round, Validity, VoteExtensions,
};
use malachitebft_signing_ed25519::PrivateKey;
use malachitebft_sync::RawDecidedValue;
use onionpost_proto::consensus::block_hash;
use onionpost_proto::keys;
use onionpost_proto::v1 as pb;
use prost::Message;
use tendermint_abci::Application;
use tendermint_proto::google::protobuf::Timestamp;
use tendermint_proto::v0_38::abci::{
    RequestFinalizeBlock, RequestPrepareProposal, RequestProcessProposal,
    response_process_proposal::ProposalStatus,
};
use tracing::{debug, info, warn};

use super::store::{ConsensusStore, Decided, StoreError, StoredProposal};
use super::types::{Address, BlockHash, Height, LedgerContext, Validator, ValidatorSet, Value};
use crate::LedgerApp;

/// Most transaction bytes in one block.
pub const MAX_BLOCK_TX_BYTES: usize = 2 << 20;
/// Size of one `Data` proposal part.
const CHUNK: usize = 256 << 10;
/// How far in the future a proposed block time may be, in seconds.
const MAX_CLOCK_DRIFT: u64 = 30;
/// Most partially received proposal streams kept at once.
const MAX_STREAMS: usize = 256;

/// A failure that stops the validator (the engine restarts it from its write-ahead log).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The consensus store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Ledger state is unreadable or inconsistent.
    #[error("ledger state: {0}")]
    Ledger(String),
}

/// Proposal parts being reassembled, per (publisher, stream).
#[derive(Default)]
struct PartStreams {
    streams: HashMap<(PeerId, Bytes), Stream>,
}

#[derive(Default)]
struct Stream {
    parts: BTreeMap<u64, super::types::ProposalPart>,
    fin: Option<u64>,
}

impl PartStreams {
    /// Adds one message; returns the whole proposal once every part arrived.
    fn insert(
        &mut self,
        publisher: PeerId,
        msg: StreamMessage<super::types::ProposalPart>,
    ) -> Option<Vec<super::types::ProposalPart>> {
        if self.streams.len() >= MAX_STREAMS {
            warn!("too many incomplete proposal streams; dropping them all");
            self.streams.clear();
        }
        let key = (publisher, msg.stream_id.to_bytes());
        let stream = self.streams.entry(key.clone()).or_default();
        match msg.content {
            StreamContent::Data(part) => {
                stream.parts.insert(msg.sequence, part);
            }
            StreamContent::Fin => stream.fin = Some(msg.sequence),
        }
        let fin = stream.fin?;
        if stream.parts.len() as u64 != fin || stream.parts.keys().next_back() != Some(&(fin - 1)) {
            return None;
        }
        let stream = self.streams.remove(&key)?;
        Some(stream.parts.into_values().collect())
    }
}

/// Everything the host needs.
pub struct Host {
    ctx: LedgerContext,
    app: LedgerApp,
    store: Arc<ConsensusStore>,
    key: PrivateKey,
    public_key: [u8; 32],
    address: Address,
    timeouts: LinearTimeouts,
    target_time: Option<Duration>,
    streams: PartStreams,
    /// Complete proposals for heights above the current one, validated when it starts.
    pending: BTreeMap<u64, Vec<Vec<super::types::ProposalPart>>>,
    current: Height,
    next_stream: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Host {
    /// A host for the validator with `key`.
    pub fn new(
        ctx: LedgerContext,
        app: LedgerApp,
        store: Arc<ConsensusStore>,
        key: PrivateKey,
        timeouts: LinearTimeouts,
        target_time: Option<Duration>,
    ) -> Self {
        let public_key = *key.public_key().as_bytes();
        Self {
            ctx,
            app,
            store,
            address: Address(onionpost_proto::consensus::validator_address(&public_key)),
            public_key,
            key,
            timeouts,
            target_time,
            streams: PartStreams::default(),
            pending: BTreeMap::new(),
            current: Height(0),
            next_stream: 0,
        }
    }

    /// The validator set that decides `height`.
    pub fn validator_set(app: &LedgerApp, height: Height) -> Result<ValidatorSet, HostError> {
        let version = height.0.saturating_sub(2);
        let raw = app
            .storage()
            .get_at(&keys::validators(), version)
            .map_err(|e| HostError::Ledger(e.to_string()))?
            .ok_or_else(|| HostError::Ledger(format!("no validator set at version {version}")))?;
        let set = pb::ValidatorSet::decode(raw.as_slice())
            .map_err(|e| HostError::Ledger(format!("validator set at version {version}: {e}")))?;
        let validators =
            set.validators
                .iter()
                .filter(|v| v.power > 0)
                .map(|v| {
                    let key: [u8; 32] =
                        v.pub_key.as_slice().try_into().map_err(|_| {
                            HostError::Ledger("a validator key is not 32 bytes".into())
                        })?;
                    Validator::new(key, v.power)
                        .ok_or_else(|| HostError::Ledger("a validator key is not ed25519".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
        if validators.is_empty() {
            return Err(HostError::Ledger(format!(
                "empty validator set for height {height}"
            )));
        }
        Ok(ValidatorSet::new(validators))
    }

    fn params(&self, height: Height) -> Result<HeightParams<LedgerContext>, HostError> {
        Ok(HeightParams::new(
            Self::validator_set(&self.app, height)?,
            self.timeouts,
            self.target_time,
        ))
    }

    fn committed(&self) -> Result<crate::storage::Committed, HostError> {
        self.app
            .storage()
            .committed()
            .ok_or_else(|| HostError::Ledger("no genesis".into()))
    }

    fn parent_time(&self) -> u64 {
        let version = self.committed().map_or(0, |c| c.height);
        self.app
            .storage()
            .get_at(&keys::block_info(), version)
            .ok()
            .flatten()
            .and_then(|b| pb::BlockInfo::decode(b.as_slice()).ok())
            .map_or(0, |b| b.time)
    }

    /// Runs until the engine closes its channel.
    pub async fn run(mut self, mut channels: Channels<LedgerContext>) -> Result<(), HostError> {
        while let Some(msg) = channels.consensus.recv().await {
            self.handle(msg, &channels.network).await?;
        }
        info!("consensus engine stopped");
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: AppMsg<LedgerContext>,
        network: &tokio::sync::mpsc::Sender<NetworkMsg<LedgerContext>>,
    ) -> Result<(), HostError> {
        match msg {
            AppMsg::ConsensusReady { reply } => {
                let start = Height(self.committed()?.height + 1);
                info!(height = %start, "consensus ready");
                let _ = reply.send((start, self.params(start)?));
            }
            AppMsg::StartedRound {
                height,
                round,
                reply_value,
                ..
            } => {
                self.current = height;
                if let Some(waiting) = self.pending.remove(&height.0) {
                    for parts in waiting {
                        if let Some((hash, p)) = self.validate(height, parts)? {
                            self.store.put_proposal(height, &hash, &p)?;
                        }
                    }
                }
                self.pending.retain(|h, _| *h > height.0);
                let values = self
                    .store
                    .proposals_at(height)?
                    .into_iter()
                    .filter(|(_, p)| p.round == round)
                    .map(|(hash, p)| proposed_value(height, hash, &p))
                    .collect();
                let _ = reply_value.send(values);
            }
            AppMsg::GetValue {
                height,
                round,
                reply,
                ..
            } => {
                let (hash, proposal) = match self
                    .store
                    .proposals_at(height)?
                    .into_iter()
                    .find(|(_, p)| p.round == round && p.proposer == self.address)
                {
                    // Restarted in the middle of our own proposal: propose the same block.
                    Some(found) => found,
                    None => self.build_block(height, round)?,
                };
                self.store.put_proposal(height, &hash, &proposal)?;
                let _ = reply.send(LocallyProposedValue::new(height, round, Value(hash)));
                self.publish(height, round, &proposal, network).await;
            }
            AppMsg::ReceivedProposalPart {
                from,
                published_by,
                part,
                reply,
            } => {
                let value = match self.streams.insert(published_by.unwrap_or(from), part) {
                    None => None,
                    Some(parts) => self.on_complete_proposal(parts)?,
                };
                let _ = reply.send(value);
            }
            AppMsg::RestreamProposal {
                height,
                round,
                value_id,
                ..
            } => match self.store.proposal(height, &value_id)? {
                Some(p) => self.publish(height, round, &p, network).await,
                None => warn!(%height, %value_id, "asked to restream a proposal we do not have"),
            },
            AppMsg::ExtendVote { reply, .. } => {
                let _ = reply.send(None);
            }
            AppMsg::VerifyVoteExtensions {
                extensions, reply, ..
            } => {
                let _ = reply.send(extensions.into_iter().map(|(a, _)| (a, Ok(()))).collect());
            }
            AppMsg::Decided {
                certificate, reply, ..
            } => {
                self.decide(certificate)?;
                let _ = reply.send(());
            }
            AppMsg::Finalized {
                certificate, reply, ..
            } => {
                let height = certificate.height;
                if let Some(mut d) = self.store.decided(height)? {
                    // Finalized may carry late precommits: keep the larger certificate.
                    if certificate.commit_signatures.len() > d.certificate.commit_signatures.len() {
                        d.certificate = certificate;
                        self.store.put_decided(height, &d)?;
                    }
                }
                self.store.prune_proposals(height)?;
                let next = Height(height.0 + 1);
                let _ = reply.send(Next::Start(next, self.params(next)?));
            }
            AppMsg::GetHistoryMinHeight { reply } => {
                let _ = reply.send(Height(1));
            }
            AppMsg::GetDecidedValues { range, reply } => {
                let last = self.committed()?.height;
                let start = range.start().0.max(1);
                let end = range.end().0.min(last).min(start.saturating_add(64));
                let mut values = Vec::new();
                for h in start..=end {
                    let Some(d) = self.store.decided(Height(h))? else {
                        break;
                    };
                    values.push(RawDecidedValue {
                        value_bytes: Bytes::from(d.block),
                        certificate:
                            ExtendedCommitCertificate::from_commit_certificate_and_extensions(
                                d.certificate,
                                VoteExtensions::new(vec![]),
                            ),
                    });
                }
                let _ = reply.send(values);
            }
            AppMsg::ProcessSyncedValue {
                height,
                round,
                proposer,
                value_bytes,
                reply,
            } => {
                let outcome = match pb::Block::decode(value_bytes.as_ref()) {
                    Ok(b) if b.height == height.0 => {
                        let hash = BlockHash(block_hash(&value_bytes));
                        let p = StoredProposal {
                            round,
                            pol_round: Round::Nil,
                            proposer,
                            valid: true,
                            signature: None,
                            block: value_bytes.to_vec(),
                        };
                        self.store.put_proposal(height, &hash, &p)?;
                        SyncedValueOutcome::Verdict(proposed_value(height, hash, &p))
                    }
                    _ => {
                        warn!(%height, "a peer sent a synced block that does not decode");
                        SyncedValueOutcome::PeerFault
                    }
                };
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }

    /// PrepareProposal: a block of waiting transactions on top of the committed state.
    fn build_block(
        &self,
        height: Height,
        round: Round,
    ) -> Result<(BlockHash, StoredProposal), HostError> {
        let committed = self.committed()?;
        let time = unix_now().max(self.parent_time());
        let txs = self.app.mempool().peek(MAX_BLOCK_TX_BYTES);
        let prepared = self.app.prepare_proposal(RequestPrepareProposal {
            max_tx_bytes: MAX_BLOCK_TX_BYTES as i64,
            txs: txs.into_iter().map(Bytes::from).collect(),
            height: height.0 as i64,
            time: Some(Timestamp {
                seconds: time as i64,
                nanos: 0,
            }),
            ..Default::default()
        });
        let block = pb::Block {
            height: height.0,
            time,
            proposer: self.public_key.to_vec(),
            last_app_hash: committed.app_hash.to_vec(),
            txs: prepared.txs.into_iter().map(|t| t.to_vec()).collect(),
        }
        .encode_to_vec();
        let hash = BlockHash(block_hash(&block));
        let signature = self.key.sign(&self.ctx.proposal_bytes(
            height,
            round,
            Round::Nil,
            &hash,
            &self.address,
        ));
        debug!(%height, %round, %hash, bytes = block.len(), "proposing");
        Ok((
            hash,
            StoredProposal {
                round,
                pol_round: Round::Nil,
                proposer: self.address,
                valid: true,
                signature: Some(signature),
                block,
            },
        ))
    }

    /// Sends a stored proposal as a stream of parts: Init, Data chunks, Fin(signature).
    async fn publish(
        &mut self,
        height: Height,
        round: Round,
        p: &StoredProposal,
        network: &tokio::sync::mpsc::Sender<NetworkMsg<LedgerContext>>,
    ) {
        let Some(signature) = p.signature else {
            warn!(%height, "cannot restream a block received by sync (no proposer signature)");
            return;
        };
        self.next_stream += 1;
        let mut id = Vec::with_capacity(24);
        id.extend_from_slice(&height.0.to_be_bytes());
        id.extend_from_slice(&(round.as_i64() as u64).to_be_bytes());
        id.extend_from_slice(&self.next_stream.to_be_bytes());
        let stream_id = StreamId::new(Bytes::from(id));
        let mut parts = vec![super::types::ProposalPart::Init {
            height,
            round: p.round,
            pol_round: p.pol_round,
            proposer: p.proposer,
        }];
        parts.extend(
            p.block
                .chunks(CHUNK)
                .map(|c| super::types::ProposalPart::Data(Bytes::copy_from_slice(c))),
        );
        if p.block.is_empty() {
            parts.push(super::types::ProposalPart::Data(Bytes::new()));
        }
        parts.push(super::types::ProposalPart::Fin(signature));
        let n = parts.len() as u64;
        let messages = parts
            .into_iter()
            .enumerate()
            .map(|(i, part)| {
                StreamMessage::new(stream_id.clone(), i as u64, StreamContent::Data(part))
            })
            .chain(std::iter::once(StreamMessage::new(
                stream_id.clone(),
                n,
                StreamContent::Fin,
            )));
        for m in messages {
            if network
                .send(NetworkMsg::PublishProposalPart(m))
                .await
                .is_err()
            {
                warn!("network is gone; proposal not published");
                return;
            }
        }
    }

    fn on_complete_proposal(
        &mut self,
        parts: Vec<super::types::ProposalPart>,
    ) -> Result<Option<ProposedValue<LedgerContext>>, HostError> {
        let Some(super::types::ProposalPart::Init { height, .. }) = parts.first() else {
            warn!("a proposal stream does not start with Init; ignored");
            return Ok(None);
        };
        let height = *height;
        if height < self.current {
            return Ok(None);
        }
        if height > self.current {
            let waiting = self.pending.entry(height.0).or_default();
            if waiting.len() < 16 {
                waiting.push(parts);
            }
            return Ok(None);
        }
        Ok(match self.validate(height, parts)? {
            None => None,
            Some((hash, p)) => {
                self.store.put_proposal(height, &hash, &p)?;
                Some(proposed_value(height, hash, &p))
            }
        })
    }

    /// Checks a complete proposal: shape, proposer, signature, then ProcessProposal. `None`
    /// for anything not signed by the rightful proposer (ignored, not voted against).
    fn validate(
        &self,
        height: Height,
        parts: Vec<super::types::ProposalPart>,
    ) -> Result<Option<(BlockHash, StoredProposal)>, HostError> {
        use super::types::ProposalPart as P;
        let (
            Some(P::Init {
                height: h,
                round,
                pol_round,
                proposer,
            }),
            Some(P::Fin(signature)),
        ) = (parts.first().cloned(), parts.last().cloned())
        else {
            return Ok(None);
        };
        if h != height || parts.len() < 3 {
            return Ok(None);
        }
        let mut block = Vec::new();
        for p in &parts[1..parts.len() - 1] {
            match p {
                P::Data(d) => block.extend_from_slice(d),
                _ => return Ok(None),
            }
        }
        let vs = Self::validator_set(&self.app, height)?;
        let rightful = self.ctx.select_proposer(&vs, height, round);
        if rightful.address != proposer {
            warn!(%height, %round, %proposer, "proposal from a validator that is not the proposer; ignored");
            return Ok(None);
        }
        let hash = BlockHash(block_hash(&block));
        let bytes = self
            .ctx
            .proposal_bytes(height, round, pol_round, &hash, &proposer);
        if rightful.public_key.verify(&bytes, &signature).is_err() {
            warn!(%height, %round, "proposal with a bad signature; ignored");
            return Ok(None);
        }
        let valid = match self.check_block(height, &block) {
            Ok(()) => true,
            Err(why) => {
                warn!(%height, %round, %hash, "voting against an invalid block: {why}");
                false
            }
        };
        Ok(Some((
            hash,
            StoredProposal {
                round,
                pol_round,
                proposer,
                valid,
                signature: Some(signature),
                block,
            },
        )))
    }

    /// ProcessProposal plus the block-level rules: height, parent app hash, time.
    fn check_block(&self, height: Height, encoded: &[u8]) -> Result<(), String> {
        let block = pb::Block::decode(encoded).map_err(|e| format!("does not decode: {e}"))?;
        if block.height != height.0 {
            return Err(format!("says height {} at height {height}", block.height));
        }
        let committed = self.committed().map_err(|e| e.to_string())?;
        if block.last_app_hash != committed.app_hash {
            return Err("builds on another app hash than ours".into());
        }
        let parent = self.parent_time();
        if block.time < parent || block.time > unix_now() + MAX_CLOCK_DRIFT {
            return Err(format!(
                "time {} is before its parent's {parent} or too far ahead",
                block.time
            ));
        }
        let res = self.app.process_proposal(RequestProcessProposal {
            txs: block.txs.into_iter().map(Bytes::from).collect(),
            height: height.0 as i64,
            ..Default::default()
        });
        if res.status != ProposalStatus::Accept as i32 {
            return Err("ProcessProposal rejected it".into());
        }
        Ok(())
    }

    /// FinalizeBlock + Commit of a decided block (idempotent: a replayed decision of a
    /// height already committed is acknowledged and nothing else). The block is always among
    /// the stored proposals: they are pruned only at `Finalized`, after the commit.
    fn decide(
        &mut self,
        certificate: malachitebft_core_types::CommitCertificate<LedgerContext>,
    ) -> Result<(), HostError> {
        let height = certificate.height;
        if height.0 <= self.committed()?.height {
            return Ok(());
        }
        let stored = self
            .store
            .proposal(height, &certificate.value_id)?
            .ok_or_else(|| {
                HostError::Ledger(format!(
                    "decided block {} of height {height} is not stored",
                    certificate.value_id
                ))
            })?;
        let block = pb::Block::decode(stored.block.as_slice()).map_err(|e| {
            HostError::Ledger(format!(
                "decided block of height {height} does not decode: {e}"
            ))
        })?;
        self.store.put_decided(
            height,
            &Decided {
                block: stored.block.clone(),
                certificate: certificate.clone(),
            },
        )?;
        let res = self.app.finalize_block(RequestFinalizeBlock {
            txs: block.txs.into_iter().map(Bytes::from).collect(),
            height: height.0 as i64,
            time: Some(Timestamp {
                seconds: block.time as i64,
                nanos: 0,
            }),
            hash: Bytes::copy_from_slice(&certificate.value_id.0),
            proposer_address: Bytes::copy_from_slice(&stored.proposer.0),
            ..Default::default()
        });
        self.app.commit();
        let rejected = res.tx_results.iter().filter(|r| r.code != 0).count();
        if !res.validator_updates.is_empty() {
            info!(%height, updates = res.validator_updates.len(), "validator set changes at height {}", height.0 + 2);
        }
        debug!(%height, txs = res.tx_results.len(), rejected, "committed");
        Ok(())
    }
}

fn proposed_value(
    height: Height,
    hash: BlockHash,
    p: &StoredProposal,
) -> ProposedValue<LedgerContext> {
    ProposedValue {
        height,
        round: p.round,
        valid_round: p.pol_round,
        proposer: p.proposer,
        value: Value(hash),
        validity: if p.valid {
            Validity::Valid
        } else {
            Validity::Invalid
        },
    }
}
