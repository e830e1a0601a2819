//! Test helpers: a real validator network (processes of `onionpost-ledger validator`), and
//! a real gRPC proxy in front of one validator that forwards honestly or tells one lie.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use futures::StreamExt;
use onionpost_devnet::{InitOptions, Manifest, init, start_validator, validator_ip, wait_ready};
use onionpost_ledger::testkit::Signer;
use onionpost_proto::consensus::{VoteKind, validator_address, vote_sign_bytes};
use onionpost_proto::keys;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::ledger_server::{Ledger, LedgerServer};
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A validator network on 127.0.0.x, killed on drop.
pub struct Devnet {
    pub dir: tempfile::TempDir,
    pub m: Manifest,
    children: Vec<Child>,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port p with p and p+1 free on the addresses of `n` validators.
fn free_base_port(n: usize) -> u16 {
    let mut seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20_000 + ((seed >> 33) % 20_000) as u16 * 2;
        let free = (0..n).all(|i| {
            [p, p + 1]
                .iter()
                .all(|port| TcpListener::bind(SocketAddr::new(validator_ip(i), *port)).is_ok())
        });
        if free {
            return p;
        }
    }
    panic!("no free ports for {n} validators");
}

/// The `onionpost-ledger` binary that `onionpost_devnet::start_validator` runs.
fn check_ledger_bin() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("onionpost-ledger");
    assert!(
        bin.exists() || std::env::var_os("ONIONPOST_LEDGER_BIN").is_some(),
        "{} is missing: build it first (cargo build -p onionpost-ledger) or run the workspace's tests",
        bin.display()
    );
}

impl Devnet {
    pub async fn start(validators: usize, chain_id: &str) -> Devnet {
        check_ledger_bin();
        let dir = tempfile::tempdir().unwrap();
        let m = init(
            dir.path(),
            &InitOptions {
                validators,
                admins: 1,
                chain_id: chain_id.into(),
                base_port: free_base_port(validators),
                block_ms: 100,
            },
        )
        .unwrap();
        let children = m
            .validators
            .iter()
            .map(|v| start_validator(v).unwrap())
            .collect();
        let net = Devnet { dir, m, children };
        wait_ready(&net.m, Duration::from_secs(60)).await.unwrap();
        net
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.m.validators[i].grpc)
    }

    pub fn genesis_path(&self) -> PathBuf {
        self.m.validators[0].home.join("genesis.json")
    }

    pub fn admin(&self) -> Signer {
        let text = std::fs::read_to_string(&self.m.admin_keys[0]).unwrap();
        let seed: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
        Signer::new(SigningKey::from(seed), &self.m.chain_id, 0)
    }

    pub async fn client(&self, i: usize) -> LedgerClient<Channel> {
        LedgerClient::connect(self.url(i)).await.unwrap()
    }

    /// Submits transactions (of different signers), waits until each signer's nonce moved
    /// past them, then until the state holding them is certified.
    pub async fn commit(&self, txs: Vec<Vec<u8>>) {
        let mut c = self.client(0).await;
        let mut want = Vec::new();
        for tx in txs {
            let signed = pb::SignedTx::decode(tx.as_slice()).unwrap();
            let body = pb::TxBody::decode(signed.body.as_slice()).unwrap();
            let ans = c.submit_tx(signed.clone()).await.unwrap().into_inner();
            assert_eq!(ans.code, 0, "{}", ans.log);
            want.push((signed.signer, body.nonce));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for (signer, nonce) in want {
            loop {
                let ans = c
                    .get_identity(pb::IdentityQuery {
                        identity: signer.clone(),
                        height: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let pv = ans.identity.unwrap();
                let next = if pv.present {
                    pb::IdentityRecord::decode(pv.value.as_slice())
                        .unwrap()
                        .next_nonce
                } else {
                    0
                };
                if next > nonce {
                    break;
                }
                assert!(Instant::now() < deadline, "a transaction never committed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The app hash of the height that holds them is certified by the next block.
        let h = self.height().await;
        self.wait_height(h + 2).await;
    }

    /// The latest decided height, as validator 0 says.
    pub async fn height(&self) -> u64 {
        let mut c = self.client(0).await;
        let ans = c
            .get_commit(pb::CommitQuery { height: 0 })
            .await
            .unwrap()
            .into_inner();
        ans.certificate.unwrap().height
    }

    /// Waits until the chain reaches `h`.
    pub async fn wait_height(&self, h: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.height().await < h {
            assert!(Instant::now() < deadline, "the chain never reached {h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Alice's and Bob's keys (and the admin's, whom alice trusts).
pub struct People {
    pub alice: [u8; 32],
    pub bob: [u8; 32],
    pub admin: [u8; 32],
}

pub const LIST: &str = "friends";

/// Creates list "friends" with alice (who binds an end-to-end key and trusts the admin)
/// but not bob.
pub async fn populate(net: &Devnet) -> People {
    let mut admin = net.admin();
    let mut alice = Signer::new(SigningKey::from([0xa1; 32]), &net.m.chain_id, 0);
    let bob = SigningKey::from([0xb0; 32]).verification_key().to_bytes();
    net.commit(vec![
        admin.sign(Action::CreateList(pb::CreateList {
            name: LIST.into(),
            policy: None,
        })),
        alice.sign(Action::RegisterIdentity(pb::RegisterIdentity {
            display_name: "alice".into(),
        })),
    ])
    .await;
    net.commit(vec![
        admin.sign(Action::AddMember(pb::AddMember {
            list: LIST.into(),
            member: alice.public_key().to_vec(),
        })),
        alice.sign(Action::BindKey(pb::BindKey {
            key: Some(pb::E2eKey {
                algorithm: "openpgp".into(),
                public_key: b"alice's key".to_vec(),
            }),
        })),
    ])
    .await;
    net.commit(vec![alice.sign(Action::SignTrust(pb::SignTrust {
        target: admin.public_key().to_vec(),
        level: 2,
        expires_at: 0,
    }))])
    .await;
    People {
        alice: alice.public_key(),
        bob,
        admin: admin.public_key(),
    }
}

/// The one lie a [`Proxy`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Forward everything unchanged.
    Honest,
    /// Answer GetCommit(h) with the (genuinely certified) block of h-1.
    ReplayOlderBlock,
    /// Report a validator set of its own beside each block, with a certificate it signed.
    SwapValidatorSet,
    /// Replace the proven validator-set record with one of its own.
    ForgeValidatorRecord,
    /// Claim a non-member is a member.
    ForgeMembershipProof,
    /// Leave out the membership proof.
    DropMembershipProof,
    /// Leave out the last key history entry.
    DropKeyHistoryEntry,
    /// Answer reads from three heights below the one asked about.
    StaleHeight,
    /// Report as latest a block five heights old.
    StaleLatest,
    /// Raise the level of the first statement of a trust path.
    ForgeTrustPath,
}

/// A gRPC `Ledger` server that forwards to a real validator and tells one lie.
#[derive(Clone)]
pub struct Proxy {
    upstream: LedgerClient<Channel>,
    pub tamper: Arc<Mutex<Tamper>>,
    fake_validators: Arc<Vec<SigningKey>>,
}

impl Proxy {
    /// Serves on a fresh loopback port in front of `upstream`; returns the proxy and its URL.
    pub async fn start(upstream: &str) -> (Proxy, String) {
        let proxy = Proxy {
            upstream: LedgerClient::connect(upstream.to_owned()).await.unwrap(),
            tamper: Arc::new(Mutex::new(Tamper::Honest)),
            fake_validators: Arc::new((0..4).map(|i| SigningKey::from([0x70 + i; 32])).collect()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = proxy.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(LedgerServer::new(server))
                .serve_with_incoming(onionpost_ledger::grpc::incoming(listener))
                .await
                .unwrap();
        });
        (proxy, url)
    }

    pub fn set(&self, t: Tamper) {
        *self.tamper.lock().unwrap() = t;
    }

    fn is(&self, t: Tamper) -> bool {
        *self.tamper.lock().unwrap() == t
    }

    fn up(&self) -> LedgerClient<Channel> {
        self.upstream.clone()
    }

    /// The height to forward a read at.
    fn read_height(&self, h: u64) -> u64 {
        if self.is(Tamper::StaleHeight) && h > 3 {
            h - 3
        } else {
            h
        }
    }

    async fn commit(&self, height: u64) -> Result<pb::CommitAnswer, Status> {
        Ok(self
            .up()
            .get_commit(pb::CommitQuery { height })
            .await?
            .into_inner())
    }
}

#[tonic::async_trait]
impl Ledger for Proxy {
    async fn get_status(
        &self,
        r: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::StatusAnswer>, Status> {
        self.up().get_status(r.into_inner()).await
    }

    async fn get_identity(
        &self,
        r: Request<pb::IdentityQuery>,
    ) -> Result<Response<pb::IdentityAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        self.up().get_identity(q).await
    }

    async fn get_key_history(
        &self,
        r: Request<pb::IdentityQuery>,
    ) -> Result<Response<pb::KeyHistoryAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        let mut ans = self.up().get_key_history(q).await?.into_inner();
        if self.is(Tamper::DropKeyHistoryEntry) {
            ans.entries.pop();
        }
        Ok(Response::new(ans))
    }

    async fn check_membership(
        &self,
        r: Request<pb::MembershipQuery>,
    ) -> Result<Response<pb::MembershipAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        let (list, who) = (q.list.clone(), q.identity.clone());
        let mut ans = self.up().check_membership(q).await?.into_inner();
        if self.is(Tamper::ForgeMembershipProof) {
            let m = ans.membership.as_mut().unwrap();
            m.present = true;
            m.value = pb::MembershipRecord {
                list,
                member: who,
                added_height: 1,
            }
            .encode_to_vec();
        }
        if self.is(Tamper::DropMembershipProof) {
            ans.membership = None;
        }
        Ok(Response::new(ans))
    }

    async fn get_list(
        &self,
        r: Request<pb::ListQuery>,
    ) -> Result<Response<pb::ListAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        self.up().get_list(q).await
    }

    async fn list_members(
        &self,
        r: Request<pb::ListQuery>,
    ) -> Result<Response<pb::ListMembersAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        self.up().list_members(q).await
    }

    async fn get_trust(
        &self,
        r: Request<pb::TrustQuery>,
    ) -> Result<Response<pb::TrustAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        self.up().get_trust(q).await
    }

    async fn find_trust_path(
        &self,
        r: Request<pb::TrustPathQuery>,
    ) -> Result<Response<pb::TrustPathAnswer>, Status> {
        let mut q = r.into_inner();
        q.height = self.read_height(q.height);
        let mut ans = self.up().find_trust_path(q).await?.into_inner();
        if self.is(Tamper::ForgeTrustPath)
            && let Some(pv) = ans.statements.first_mut()
        {
            // The first hop's statement, in its signer's outgoing index.
            let mut index = pb::TrustIndex::decode(pv.value.as_slice()).unwrap();
            for e in &mut index.entries {
                e.level = 9;
            }
            pv.value = index.encode_to_vec();
        }
        Ok(Response::new(ans))
    }

    async fn submit_tx(
        &self,
        r: Request<pb::SignedTx>,
    ) -> Result<Response<pb::SubmitAnswer>, Status> {
        self.up().submit_tx(r.into_inner()).await
    }

    type StreamEventsStream = futures::stream::BoxStream<'static, Result<pb::LedgerEvent, Status>>;

    async fn stream_events(
        &self,
        r: Request<pb::EventsQuery>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let s = self.up().stream_events(r.into_inner()).await?.into_inner();
        Ok(Response::new(s.boxed()))
    }

    async fn get_commit(
        &self,
        r: Request<pb::CommitQuery>,
    ) -> Result<Response<pb::CommitAnswer>, Status> {
        let h = r.into_inner().height;
        let mut ans = self.commit(h).await?;
        let latest = ans.certificate.as_ref().map_or(0, |c| c.height);
        if self.is(Tamper::ReplayOlderBlock) && latest > 1 {
            ans = self.commit(latest - 1).await?;
        }
        if self.is(Tamper::StaleLatest) && h == 0 && latest > 5 {
            ans = self.commit(latest - 5).await?;
        }
        if self.is(Tamper::SwapValidatorSet) {
            let cert = ans.certificate.as_mut().unwrap();
            ans.validators = self
                .fake_validators
                .iter()
                .map(|k| pb::ValidatorUpdate {
                    pub_key: k.verification_key().to_bytes().to_vec(),
                    power: 10,
                })
                .collect();
            let hash: [u8; 32] = cert.block_hash.as_slice().try_into().unwrap();
            cert.signatures = self
                .fake_validators
                .iter()
                .map(|k| {
                    let address = validator_address(&k.verification_key().to_bytes());
                    let msg = vote_sign_bytes(
                        &ans.chain_id,
                        VoteKind::Precommit,
                        cert.height,
                        cert.round as i64,
                        Some(&hash),
                        &address,
                    );
                    pb::CommitSignature {
                        address: address.to_vec(),
                        signature: k.sign(&msg).to_bytes().to_vec(),
                    }
                })
                .collect();
        }
        Ok(Response::new(ans))
    }

    async fn get_validator_set(
        &self,
        r: Request<pb::HeightQuery>,
    ) -> Result<Response<pb::ValidatorSetAnswer>, Status> {
        let mut ans = self
            .up()
            .get_validator_set(r.into_inner())
            .await?
            .into_inner();
        if self.is(Tamper::ForgeValidatorRecord) {
            let pv = ans.validators.as_mut().unwrap();
            assert_eq!(pv.key, keys::validators());
            pv.value = pb::ValidatorSet {
                validators: self
                    .fake_validators
                    .iter()
                    .map(|k| pb::ValidatorUpdate {
                        pub_key: k.verification_key().to_bytes().to_vec(),
                        power: 10,
                    })
                    .collect(),
            }
            .encode_to_vec();
        }
        Ok(Response::new(ans))
    }
}
