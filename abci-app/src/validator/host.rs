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

use super::reassembly::{Limits, Ready, Reassembly, Received};
use super::store::{ConsensusStore, Decided, StoreError, StoredProposal};
use super::types::{Address, BlockHash, Height, LedgerContext, Validator, ValidatorSet, Value};
use crate::LedgerApp;

/// Most transaction bytes in one block.
pub const MAX_BLOCK_TX_BYTES: usize = 2 << 20;
/// Most bytes of an encoded block: its transactions, their framing and the header. A
/// received block larger than this, or whose transactions exceed [`MAX_BLOCK_TX_BYTES`], is
/// voted against.
pub const MAX_BLOCK_BYTES: usize = MAX_BLOCK_TX_BYTES + MAX_BLOCK_TX_BYTES / 8;
/// Size of one `Data` proposal part.
const CHUNK: usize = 256 << 10;
/// How far a new proposal's time may be from this validator's clock, either way, in
/// milliseconds (see [`check_time`]).
pub const MAX_CLOCK_DRIFT_MS: u64 = 10_000;
/// The bounds of proposal reassembly (see [`super::reassembly`]): a stream carries at most
/// one largest block, in as many parts as it takes plus `Init` and `Fin`; four streams per
/// validator; the current height and the next two.
pub const REASSEMBLY_LIMITS: Limits = Limits {
    max_stream_bytes: MAX_BLOCK_BYTES,
    max_parts: MAX_BLOCK_BYTES.div_ceil(CHUNK) as u64 + 2,
    max_streams_per_publisher: 4,
    max_heights_ahead: 2,
};
// Our own largest block must fit what others accept.
const _: () = assert!(
    MAX_BLOCK_BYTES.div_ceil(CHUNK) as u64 + 2 <= REASSEMBLY_LIMITS.max_parts
        && REASSEMBLY_LIMITS.max_stream_bytes >= MAX_BLOCK_BYTES
);

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

/// The block-time rule. A block's time (Unix ms) must be later than its parent's, so time
/// never stands still; and a `live` proposal (for the round being played, or a later one)
/// must be within [`MAX_CLOCK_DRIFT_MS`] of this validator's clock when it arrived, ahead or
/// behind, so a proposer can neither freeze time (trust statements expire by block time) nor
/// race it ahead. A proposal of an earlier round (restreamed because it is being re-proposed,
/// or simply late) is judged by its parent only: an honest validator prevotes a proposal of
/// round r only in round r, so any polka behind a re-proposal was built from live judgements,
/// and refusing it now could stall the validators locked on it (as CometBFT's proposer-based
/// timestamps exempt re-proposals).
pub fn check_time(time_ms: u64, parent_ms: u64, now_ms: u64, live: bool) -> Result<(), String> {
    if live && time_ms > now_ms.saturating_add(MAX_CLOCK_DRIFT_MS) {
        return Err(format!(
            "time {time_ms} ms is more than {MAX_CLOCK_DRIFT_MS} ms ahead of our clock ({now_ms} ms)"
        ));
    }
    if live && time_ms.saturating_add(MAX_CLOCK_DRIFT_MS) < now_ms {
        return Err(format!(
            "time {time_ms} ms is more than {MAX_CLOCK_DRIFT_MS} ms behind our clock ({now_ms} ms)"
        ));
    }
    if time_ms <= parent_ms {
        return Err(format!(
            "time {time_ms} ms is not later than its parent's {parent_ms} ms"
        ));
    }
    Ok(())
}

/// The libp2p peer id of the validator with ed25519 key `public_key` (validators' network
/// identity is their consensus key): the identity multihash of the protobuf-encoded key.
pub fn peer_id(public_key: &[u8; 32]) -> PeerId {
    let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 32];
    bytes.extend_from_slice(public_key);
    PeerId::from_bytes(&bytes).expect("an identity multihash of an ed25519 key")
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
    /// Proposals being received; complete ones for later heights wait there too.
    streams: Reassembly<PeerId>,
    /// The height whose validators `streams` accepts parts from.
    publishers_for: Height,
    current: Height,
    /// The round being played at `current`.
    round: Round,
    next_stream: u64,
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A block time (Unix ms) as the ABCI timestamp.
fn timestamp(ms: u64) -> Timestamp {
    Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
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
            streams: Reassembly::new(REASSEMBLY_LIMITS, 0),
            publishers_for: Height(0),
            current: Height(0),
            round: Round::new(0),
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

    /// The time (Unix ms) of the last committed block: the parent of the next one. At
    /// genesis, the genesis time.
    fn parent_time_ms(&self) -> Result<u64, HostError> {
        let height = self.committed()?.height;
        if height > 0
            && let Some(d) = self.store.decided(Height(height))?
        {
            let block = pb::Block::decode(d.block.as_slice()).map_err(|e| {
                HostError::Ledger(format!("decided block {height} does not decode: {e}"))
            })?;
            return Ok(block.time);
        }
        // Genesis (or a block we only have as state): the ledger records seconds.
        Ok(self
            .app
            .storage()
            .get_at(&keys::block_info(), height)
            .ok()
            .flatten()
            .and_then(|b| pb::BlockInfo::decode(b.as_slice()).ok())
            .map_or(0, |b| b.time.saturating_mul(1000)))
    }

    /// Moves proposal reassembly to `height`: accepts parts from the validators of this
    /// height and the next, forgets older streams, logs what the last height dropped, and
    /// returns the proposals that were waiting for this height.
    fn enter_height(&mut self, height: Height) -> Result<Vec<Ready>, HostError> {
        if self.publishers_for != height {
            let mut publishers = Vec::new();
            for h in [height, Height(height.0 + 1)] {
                publishers.extend(
                    Self::validator_set(&self.app, h)?
                        .validators
                        .iter()
                        .map(|v| peer_id(v.public_key.as_bytes())),
                );
            }
            self.streams.set_publishers(publishers);
            self.publishers_for = height;
        }
        let dropped = self.streams.take_dropped();
        if !dropped.is_empty() {
            let counts: Vec<String> = dropped
                .iter()
                .map(|(why, n)| format!("{}={n}", why.as_str()))
                .collect();
            warn!(%height, dropped = %counts.join(" "), "dropped proposal parts");
        }
        Ok(self.streams.advance(height.0))
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
                self.current = start;
                self.round = Round::new(0);
                for ready in self.enter_height(start)? {
                    self.store_received(start, ready)?;
                }
                let _ = reply.send((start, self.params(start)?));
            }
            AppMsg::StartedRound {
                height,
                round,
                reply_value,
                ..
            } => {
                self.current = height;
                self.round = round;
                for ready in self.enter_height(height)? {
                    self.store_received(height, ready)?;
                }
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
                // Grouped and bounded by publisher (the message's signed author), whichever
                // neighbour relayed it.
                let publisher = published_by.unwrap_or(from);
                let value = match self.streams.insert(publisher, part, unix_now_ms()) {
                    Received::Complete(parts) => self.on_complete_proposal(parts)?,
                    Received::Kept | Received::Dropped(_) => None,
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
        // Later than the parent even if our clock is behind it (within the drift others allow).
        let time = unix_now_ms().max(self.parent_time_ms()? + 1);
        let txs = self.app.mempool().peek(MAX_BLOCK_TX_BYTES);
        let prepared = self.app.prepare_proposal(RequestPrepareProposal {
            max_tx_bytes: MAX_BLOCK_TX_BYTES as i64,
            txs: txs.into_iter().map(Bytes::from).collect(),
            height: height.0 as i64,
            time: Some(timestamp(time)),
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
        let stream_id = StreamId::new(super::reassembly::stream_id(
            height.0,
            round.as_i64(),
            self.next_stream,
        ));
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

    /// A complete proposal for the current height (reassembly keeps later ones until their
    /// height starts): validated, stored, and its value returned to the engine.
    fn on_complete_proposal(
        &mut self,
        parts: Vec<super::types::ProposalPart>,
    ) -> Result<Option<ProposedValue<LedgerContext>>, HostError> {
        let height = self.current;
        Ok(match self.validate(height, parts, unix_now_ms())? {
            None => None,
            Some((hash, p)) => {
                self.store.put_proposal(height, &hash, &p)?;
                Some(proposed_value(height, hash, &p))
            }
        })
    }

    /// A proposal that waited for its height: validated (against the clock at the time it
    /// arrived) and stored, so `StartedRound` hands it to the engine.
    fn store_received(&mut self, height: Height, ready: Ready) -> Result<(), HostError> {
        if let Some((hash, p)) = self.validate(height, ready.parts, ready.completed_at_ms)? {
            self.store.put_proposal(height, &hash, &p)?;
        }
        Ok(())
    }

    /// Checks a complete proposal: shape, proposer, signature, then ProcessProposal. `None`
    /// for anything not signed by the rightful proposer (ignored, not voted against).
    fn validate(
        &self,
        height: Height,
        parts: Vec<super::types::ProposalPart>,
        received_ms: u64,
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
        if let Some(seen) = self.store.proposal(height, &hash)?
            && seen.round == round
            && seen.pol_round == pol_round
            && seen.proposer == proposer
        {
            // Judged already (a restream, a duplicate): the first verdict stands, so a
            // validator never flips its view of a proposal.
            return Ok(Some((hash, seen)));
        }
        let live = round >= self.round;
        let valid = match self.check_block(height, &block, live, received_ms) {
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

    /// ProcessProposal plus the block-level rules: size, height, parent app hash, time.
    fn check_block(
        &self,
        height: Height,
        encoded: &[u8],
        live: bool,
        received_ms: u64,
    ) -> Result<(), String> {
        if encoded.len() > MAX_BLOCK_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_BLOCK_BYTES} a block may have",
                encoded.len()
            ));
        }
        let block = pb::Block::decode(encoded).map_err(|e| format!("does not decode: {e}"))?;
        let tx_bytes: usize = block.txs.iter().map(Vec::len).sum();
        if tx_bytes > MAX_BLOCK_TX_BYTES {
            return Err(format!(
                "{tx_bytes} bytes of transactions, more than the {MAX_BLOCK_TX_BYTES} a block may carry"
            ));
        }
        if block.height != height.0 {
            return Err(format!("says height {} at height {height}", block.height));
        }
        let committed = self.committed().map_err(|e| e.to_string())?;
        if block.last_app_hash != committed.app_hash {
            return Err("builds on another app hash than ours".into());
        }
        let parent = self.parent_time_ms().map_err(|e| e.to_string())?;
        check_time(block.time, parent, received_ms, live)?;
        let res = self.app.process_proposal(RequestProcessProposal {
            txs: block.txs.into_iter().map(Bytes::from).collect(),
            height: height.0 as i64,
            time: Some(timestamp(block.time)),
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
            time: Some(timestamp(block.time)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use malachitebft_app_channel::app::types::Keypair;

    #[test]
    fn block_time_must_move_forward_and_stay_near_the_clock() {
        let now = 1_700_000_000_000;
        let parent = now - 500;
        assert!(check_time(now, parent, now, true).is_ok());
        assert!(check_time(parent + 1, parent, now, true).is_ok());
        // Frozen: the parent's time again, or earlier.
        for t in [parent, parent - 1] {
            let e = check_time(t, parent, now, true).unwrap_err();
            assert!(e.contains("not later than its parent's"), "{e}");
        }
        // Within the drift either way is fine; beyond it is not.
        assert!(check_time(now + MAX_CLOCK_DRIFT_MS, parent, now, true).is_ok());
        let e = check_time(now + MAX_CLOCK_DRIFT_MS + 1, parent, now, true).unwrap_err();
        assert!(e.contains("ahead of our clock"), "{e}");
        let old_parent = now - 10 * MAX_CLOCK_DRIFT_MS;
        assert!(check_time(now - MAX_CLOCK_DRIFT_MS, old_parent, now, true).is_ok());
        let e = check_time(now - MAX_CLOCK_DRIFT_MS - 1, old_parent, now, true).unwrap_err();
        assert!(e.contains("behind our clock"), "{e}");
        // A proposal of an earlier round (restreamed, late) is judged by its parent only.
        assert!(check_time(old_parent + 1, old_parent, now, false).is_ok());
        assert!(check_time(now + 10 * MAX_CLOCK_DRIFT_MS, parent, now, false).is_ok());
        assert!(check_time(parent, parent, now, false).is_err());
        // No overflow at the ends of the range.
        assert!(check_time(u64::MAX, 0, u64::MAX, true).is_ok());
        assert!(check_time(0, 0, 0, true).is_err());
    }

    #[test]
    fn a_validator_key_names_its_libp2p_peer_id() {
        for seed in [[1u8; 32], [0xEE; 32]] {
            let keypair = Keypair::ed25519_from_bytes(seed).unwrap();
            let public = *PrivateKey::from(seed).public_key().as_bytes();
            let libp2p = keypair.public().to_peer_id().to_bytes();
            assert_eq!(peer_id(&public).to_bytes(), libp2p);
        }
    }
}
