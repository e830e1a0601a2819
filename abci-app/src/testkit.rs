//! Building ABCI requests for tests, benchmarks and the devnet: a genesis, a block, and a
//! signer that tracks its own nonce.

use bytes::Bytes;
use ed25519_consensus::SigningKey;
use onionpost_proto::tx::sign;
use onionpost_proto::v1::tx_body::Action;
use prost::Message;
use tendermint_abci::Application;
use tendermint_proto::google::protobuf::Timestamp;
use tendermint_proto::v0_38::abci::{
    RequestFinalizeBlock, RequestInitChain, ResponseFinalizeBlock, ValidatorUpdate,
};
use tendermint_proto::v0_38::crypto::{PublicKey, public_key::Sum};

use crate::genesis::{AppGenesis, GenesisIdentity};

/// Name of the governing list in [`init_chain_request`].
pub const GOVERNING_LIST: &str = "govern";

/// An InitChain request: `admins` govern list [`GOVERNING_LIST`]; `validators` have power 10.
pub fn init_chain_request(
    chain_id: &str,
    admins: &[SigningKey],
    validators: &[SigningKey],
) -> RequestInitChain {
    let genesis = AppGenesis {
        governing_list: GOVERNING_LIST.into(),
        admins: admins
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisIdentity {
                public_key: hex::encode(k.verification_key().to_bytes()),
                display_name: format!("admin{i}"),
            })
            .collect(),
        identities: vec![],
    };
    RequestInitChain {
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        chain_id: chain_id.into(),
        consensus_params: None,
        validators: validators
            .iter()
            .map(|k| ValidatorUpdate {
                pub_key: Some(PublicKey {
                    sum: Some(Sum::Ed25519(k.verification_key().to_bytes().to_vec())),
                }),
                power: 10,
            })
            .collect(),
        app_state_bytes: Bytes::from(serde_json::to_vec(&genesis).expect("genesis serialises")),
        initial_height: 1,
    }
}

/// A FinalizeBlock request for `height` with a block time derived from the height.
pub fn finalize_request(height: u64, txs: &[Vec<u8>]) -> RequestFinalizeBlock {
    RequestFinalizeBlock {
        txs: txs.iter().map(|t| Bytes::from(t.clone())).collect(),
        height: height as i64,
        time: Some(Timestamp {
            seconds: 1_700_000_000 + height as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// FinalizeBlock then Commit; returns FinalizeBlock's response.
pub fn apply_block(app: &impl Application, height: u64, txs: &[Vec<u8>]) -> ResponseFinalizeBlock {
    let res = app.finalize_block(finalize_request(height, txs));
    app.commit();
    res
}

/// A key that signs transactions with consecutive nonces.
pub struct Signer {
    /// The key.
    pub key: SigningKey,
    /// The next nonce it will use.
    pub nonce: u64,
    chain_id: String,
}

impl Signer {
    /// A signer whose next nonce is `nonce`.
    pub fn new(key: SigningKey, chain_id: &str, nonce: u64) -> Self {
        Self {
            key,
            nonce,
            chain_id: chain_id.into(),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verification_key().to_bytes()
    }

    /// Signs `action` with the next nonce; returns the encoded transaction.
    pub fn sign(&mut self, action: Action) -> Vec<u8> {
        let tx = sign(&self.key, &self.chain_id, self.nonce, action);
        self.nonce += 1;
        tx.encode_to_vec()
    }
}

/// Serves `service` on a loopback port of its own, from a task on the current tokio
/// runtime, and returns the address; the server runs until the runtime stops.
pub async fn serve_on_loopback(service: crate::grpc::LedgerService) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let server = service.into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(crate::grpc::incoming(listener))
            .await
            .expect("the gRPC server stopped");
    });
    addr
}
