//! A hostile consensus peer, for tests: it joins the validators' libp2p network as a real
//! peer (Malachite's network actor: TCP, noise, yamux, gossipsub, with the validators' own
//! wire codec) and publishes whatever it is told, signed with whichever key it holds.
//!
//! With a key outside the validator set it is an outsider; with a validator's key (that
//! validator's process not running) it is a Byzantine validator that can also sign
//! proposals — bad ones. [`HostilePeer`] offers the floods the flood tests inject:
//! proposal parts for far-future heights, many incomplete streams, oversized streams,
//! malformed stream ids, and complete, correctly signed proposals whose block breaks a rule
//! (size, time).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use malachitebft_app_channel::NetworkIdentity;
use malachitebft_app_channel::app::config::{
    ConsensusConfig, DiscoveryConfig, P2pConfig, TransportProtocol, ValuePayload, ValueSyncConfig,
};
use malachitebft_app_channel::app::consensus::SignedConsensusMsg;
use malachitebft_app_channel::app::engine::network::{Msg as NetworkActorMsg, NetworkRef};
use malachitebft_app_channel::app::metrics::SharedRegistry;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::Keypair;
use malachitebft_core_types::{Context as _, Round, SignedMessage};
use malachitebft_signing_ed25519::PrivateKey;
use onionpost_ledger::validator::reassembly::stream_id;
use onionpost_ledger::validator::types::{
    Address, BlockHash, Height, LedgerContext, ProposalPart, ValidatorSet, Value,
};
use onionpost_ledger::validator::wire::WireCodec;
use onionpost_proto::consensus::{block_hash, validator_address};
use onionpost_proto::v1 as pb;
use prost::Message;

/// Size of the `Data` parts the hostile peer sends (the validators' own chunk size).
const CHUNK: usize = 256 << 10;

/// A peer on the validators' network that does what it is told.
pub struct HostilePeer {
    network: NetworkRef<LedgerContext>,
    ctx: LedgerContext,
    key: PrivateKey,
    public_key: [u8; 32],
    address: Address,
    counter: u64,
}

fn multiaddr(a: SocketAddr) -> malachitebft_app_channel::app::net::Multiaddr {
    TransportProtocol::Tcp.multiaddr(&a.ip().to_string(), a.port() as usize)
}

impl HostilePeer {
    /// Joins the network of chain `chain_id` with ed25519 seed `seed`, listening on `listen`
    /// and dialling `peers` (validators' p2p addresses).
    pub async fn start(
        chain_id: &str,
        seed: [u8; 32],
        listen: SocketAddr,
        peers: &[SocketAddr],
    ) -> Result<Self> {
        let key = PrivateKey::from(seed);
        let public_key = *key.public_key().as_bytes();
        let address = Address(validator_address(&public_key));
        let keypair = Keypair::ed25519_from_bytes(seed).context("hostile key")?;
        let identity = NetworkIdentity::new("hostile".into(), keypair, Some(address.to_string()));
        let consensus = ConsensusConfig {
            value_payload: ValuePayload::ProposalAndParts,
            p2p: P2pConfig {
                listen_addr: multiaddr(listen),
                persistent_peers: peers.iter().copied().map(multiaddr).collect(),
                discovery: DiscoveryConfig {
                    max_connections_per_ip: 256,
                    ip_throttle_duration: Duration::ZERO,
                    ..DiscoveryConfig::default()
                },
                ..P2pConfig::default()
            },
            ..ConsensusConfig::default()
        };
        let (network, _publish) = malachitebft_app_channel::spawn::spawn_network_actor(
            identity,
            &consensus,
            &ValueSyncConfig::default(),
            &SharedRegistry::global().with_moniker("hostile"),
            WireCodec,
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the hostile peer's network: {e:#}"))?;
        Ok(Self {
            network,
            ctx: LedgerContext {
                chain_id: chain_id.to_owned(),
            },
            key,
            public_key,
            address,
            counter: 0,
        })
    }

    /// Its consensus address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Its public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn next_id(&mut self, height: u64, round: i64) -> StreamId {
        self.counter += 1;
        StreamId::new(stream_id(height, round, self.counter))
    }

    /// Publishes one stream message as it is.
    pub fn publish(&self, msg: StreamMessage<ProposalPart>) -> Result<()> {
        self.network
            .cast(NetworkActorMsg::PublishProposalPart(msg))
            .map_err(|e| anyhow::anyhow!("the hostile peer's network is gone: {e}"))
    }

    fn init(&self, height: u64, round: Round) -> ProposalPart {
        ProposalPart::Init {
            height: Height(height),
            round,
            pol_round: Round::Nil,
            proposer: self.address,
        }
    }

    /// `n` streams for heights `from`, `from + 1`, …: each an `Init` and one `Data` part of
    /// `bytes` bytes, never ended.
    pub fn flood_heights(&mut self, from: u64, n: u64, bytes: usize) -> Result<()> {
        for i in 0..n {
            let h = from.saturating_add(i);
            let id = self.next_id(h, 0);
            self.publish(StreamMessage::new(
                id.clone(),
                0,
                StreamContent::Data(self.init(h, Round::new(0))),
            ))?;
            self.publish(StreamMessage::new(
                id,
                1,
                StreamContent::Data(ProposalPart::Data(Bytes::from(vec![0xAB; bytes]))),
            ))?;
        }
        Ok(())
    }

    /// One stream at `height` of `parts` full-size `Data` parts (more than a block may have).
    pub fn flood_oversized(&mut self, height: u64, parts: u64) -> Result<()> {
        let id = self.next_id(height, 0);
        self.publish(StreamMessage::new(
            id.clone(),
            0,
            StreamContent::Data(self.init(height, Round::new(0))),
        ))?;
        let chunk = Bytes::from(vec![0xCD; CHUNK]);
        for i in 1..=parts {
            self.publish(StreamMessage::new(
                id.clone(),
                i,
                StreamContent::Data(ProposalPart::Data(chunk.clone())),
            ))?;
        }
        Ok(())
    }

    /// `n` parts with stream ids that are not of the validators' format.
    pub fn flood_bad_ids(&mut self, n: u64) -> Result<()> {
        for i in 0..n {
            self.publish(StreamMessage::new(
                StreamId::new(Bytes::from(i.to_be_bytes().to_vec())),
                0,
                StreamContent::Fin,
            ))?;
        }
        Ok(())
    }

    /// A complete proposal of `block` for (`block.height`, `round`), signed with this peer's
    /// key as the proposer: the parts and the signed `Proposal` message.
    pub fn propose(&mut self, block: &pb::Block, round: Round) -> Result<()> {
        let encoded = block.encode_to_vec();
        let hash = BlockHash(block_hash(&encoded));
        let height = Height(block.height);
        let signature = self.key.sign(&self.ctx.proposal_bytes(
            height,
            round,
            Round::Nil,
            &hash,
            &self.address,
        ));
        let id = self.next_id(block.height, round.as_i64());
        let mut parts = vec![self.init(block.height, round)];
        parts.extend(
            encoded
                .chunks(CHUNK)
                .map(|c| ProposalPart::Data(Bytes::copy_from_slice(c))),
        );
        parts.push(ProposalPart::Fin(signature));
        let n = parts.len() as u64;
        for (i, p) in parts.into_iter().enumerate() {
            self.publish(StreamMessage::new(
                id.clone(),
                i as u64,
                StreamContent::Data(p),
            ))?;
        }
        self.publish(StreamMessage::new(id, n, StreamContent::Fin))?;
        let proposal = self
            .ctx
            .new_proposal(height, round, Value(hash), Round::Nil, self.address);
        self.network
            .cast(NetworkActorMsg::PublishConsensusMsg(
                SignedConsensusMsg::Proposal(SignedMessage::new(proposal, signature)),
            ))
            .map_err(|e| anyhow::anyhow!("the hostile peer's network is gone: {e}"))
    }

    /// Whether this peer is the proposer of round 0 at `height` under `set`.
    pub fn proposes(&self, set: &ValidatorSet, height: u64) -> bool {
        self.ctx
            .select_proposer(set, Height(height), Round::new(0))
            .address
            == self.address
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.network.stop(None);
    }
}
