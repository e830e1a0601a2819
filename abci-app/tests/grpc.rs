//! The gRPC Ledger service over a real socket: every answer's proof verifies against the app
//! hash that FinalizeBlock reported (not against anything the server says), and a tampered
//! answer fails verification.

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::grpc::LedgerService;
use onionpost_ledger::testkit::{GOVERNING_LIST, Signer, apply_block, init_chain_request};
use onionpost_proto::keys;
use onionpost_proto::proof::{ProofError, verify, verify_record};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;
use tendermint_abci::Application;
use tonic::transport::Channel;

const CHAIN: &str = "grpc-chain";

struct Net {
    app: LedgerApp,
    client: LedgerClient<Channel>,
    /// App hash per height, as FinalizeBlock reported it: the trusted roots.
    roots: Vec<[u8; 32]>,
    admin: Signer,
    alice: Signer,
    bob: Signer,
    carol: Signer,
    _dir: tempfile::TempDir,
}

fn key(i: u8) -> SigningKey {
    SigningKey::from([i; 32])
}

/// Serves `service` on a loopback port of its own; a client connected to it.
async fn serve(service: LedgerService) -> LedgerClient<Channel> {
    let addr = onionpost_ledger::testkit::serve_on_loopback(service).await;
    LedgerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

impl Net {
    async fn start() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let app = LedgerApp::open(dir.path()).unwrap();
        let genesis = app.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]));
        let client = serve(LedgerService::new(app.clone())).await;
        Net {
            app,
            client,
            roots: vec![genesis.app_hash.as_ref().try_into().unwrap()],
            admin: Signer::new(key(1), CHAIN, 0),
            alice: Signer::new(key(2), CHAIN, 0),
            bob: Signer::new(key(3), CHAIN, 0),
            carol: Signer::new(key(4), CHAIN, 0),
            _dir: dir,
        }
    }

    fn block(&mut self, txs: Vec<Vec<u8>>) {
        let h = self.roots.len() as u64;
        let res = apply_block(&self.app, h, &txs);
        for r in &res.tx_results {
            assert_eq!(r.code, 0, "{}", r.log);
        }
        self.roots.push(res.app_hash.as_ref().try_into().unwrap());
    }

    fn root(&self, anchor: &Option<pb::Anchor>) -> [u8; 32] {
        let a = anchor.as_ref().unwrap();
        let trusted = self.roots[a.height as usize];
        assert_eq!(
            a.root, trusted,
            "the server's anchor matches FinalizeBlock's app hash"
        );
        trusted
    }
}

fn register(name: &str) -> Action {
    Action::RegisterIdentity(pb::RegisterIdentity {
        display_name: name.into(),
    })
}

fn e2e(b: &[u8]) -> pb::E2eKey {
    pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key: b.to_vec(),
    }
}

#[tokio::test]
async fn answers_carry_proofs_that_verify_and_tampering_fails() {
    let mut n = Net::start().await;
    let (a, b, c) = (
        n.alice.public_key(),
        n.bob.public_key(),
        n.carol.public_key(),
    );
    let txs = vec![
        n.alice.sign(register("alice")),
        n.bob.sign(register("bob")),
        n.carol.sign(register("carol")),
    ];
    n.block(txs); // height 1
    let txs = vec![
        n.admin.sign(Action::AddMember(pb::AddMember {
            list: GOVERNING_LIST.into(),
            member: a.to_vec(),
        })),
        n.alice.sign(Action::BindKey(pb::BindKey {
            key: Some(e2e(b"key-1")),
        })),
        n.alice.sign(Action::SignTrust(pb::SignTrust {
            target: b.to_vec(),
            level: 2,
            expires_at: 0,
        })),
        n.bob.sign(Action::SignTrust(pb::SignTrust {
            target: c.to_vec(),
            level: 1,
            expires_at: 0,
        })),
    ];
    n.block(txs); // height 2
    let txs = vec![n.alice.sign(Action::RotateKey(pb::RotateKey {
        new_key: Some(e2e(b"key-2")),
    }))];
    n.block(txs); // height 3

    // Membership: alice is a member (inclusion), bob is not (non-inclusion).
    let m = n
        .client
        .check_membership(pb::MembershipQuery {
            list: GOVERNING_LIST.into(),
            identity: a.to_vec(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let root = n.root(&m.anchor);
    assert_eq!(m.anchor.as_ref().unwrap().height, 3);
    let rec: pb::MembershipRecord = verify_record(
        &root,
        &keys::membership(GOVERNING_LIST, &a),
        m.membership.as_ref().unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!((rec.member.as_slice(), rec.added_height), (&a[..], 2));
    let list: pb::ListRecord =
        verify_record(&root, &keys::list(GOVERNING_LIST), m.list.as_ref().unwrap())
            .unwrap()
            .unwrap();
    // The proven record is the governing list as genesis made it: one admin.
    assert_eq!(
        (list.name.as_str(), list.admins),
        (GOVERNING_LIST, vec![n.admin.public_key().to_vec()])
    );

    let m = n
        .client
        .check_membership(pb::MembershipQuery {
            list: GOVERNING_LIST.into(),
            identity: b.to_vec(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let pv = m.membership.unwrap();
    assert_eq!(
        verify(&root, &keys::membership(GOVERNING_LIST, &b), &pv).unwrap(),
        None
    );

    // Tampering. A forged "member" answer for bob fails; so does a changed value, a changed
    // proof, a proof reused for another key, and a proof checked against another root.
    let mut forged = pv.clone();
    forged.present = true;
    forged.value = rec.encode_to_vec();
    assert!(matches!(
        verify(&root, &keys::membership(GOVERNING_LIST, &b), &forged),
        Err(ProofError::Invalid(_))
    ));
    let m = n
        .client
        .check_membership(pb::MembershipQuery {
            list: GOVERNING_LIST.into(),
            identity: a.to_vec(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let good = m.membership.unwrap();
    let mut changed = good.clone();
    changed.value[0] ^= 1;
    assert!(matches!(
        verify(&root, &keys::membership(GOVERNING_LIST, &a), &changed),
        Err(ProofError::Invalid(_))
    ));
    let mut absent = good.clone();
    absent.present = false;
    assert!(
        verify(&root, &keys::membership(GOVERNING_LIST, &a), &absent).is_err(),
        "hiding a member"
    );
    let mut bad_proof = good.clone();
    let last = bad_proof.proof.len() - 1;
    bad_proof.proof[last] ^= 1;
    assert!(verify(&root, &keys::membership(GOVERNING_LIST, &a), &bad_proof).is_err());
    assert!(matches!(
        verify(&root, &keys::membership(GOVERNING_LIST, &b), &good),
        Err(ProofError::WrongKey { .. })
    ));
    assert!(
        verify(&n.roots[2], &keys::membership(GOVERNING_LIST, &a), &good).is_err(),
        "other root"
    );

    // A past height: at height 1 alice was not yet a member, provably.
    let m = n
        .client
        .check_membership(pb::MembershipQuery {
            list: GOVERNING_LIST.into(),
            identity: a.to_vec(),
            height: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let root1 = n.root(&m.anchor);
    assert_eq!(
        verify(
            &root1,
            &keys::membership(GOVERNING_LIST, &a),
            m.membership.as_ref().unwrap()
        )
        .unwrap(),
        None
    );
    let err = n
        .client
        .check_membership(pb::MembershipQuery {
            list: GOVERNING_LIST.into(),
            identity: a.to_vec(),
            height: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);

    // Unknown list: the list record is provably absent.
    let m = n
        .client
        .check_membership(pb::MembershipQuery {
            list: "nope".into(),
            identity: a.to_vec(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verify(&root, &keys::list("nope"), m.list.as_ref().unwrap()).unwrap(),
        None
    );
    let err = n
        .client
        .check_membership(pb::MembershipQuery {
            list: "Bad/Name".into(),
            identity: a.to_vec(),
            height: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Key history: complete, ordered, each entry proven.
    let kh = n
        .client
        .get_key_history(pb::IdentityQuery {
            identity: a.to_vec(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let root = n.root(&kh.anchor);
    let id: pb::IdentityRecord =
        verify_record(&root, &keys::identity(&a), kh.identity.as_ref().unwrap())
            .unwrap()
            .unwrap();
    assert_eq!(id.key_history_len, 2);
    assert_eq!(kh.entries.len(), 2);
    let entries: Vec<pb::KeyHistoryEntry> = kh
        .entries
        .iter()
        .enumerate()
        .map(|(i, pv)| {
            verify_record(&root, &keys::key_history(&a, i as u64), pv)
                .unwrap()
                .unwrap()
        })
        .collect();
    assert_eq!(entries[0].key.as_ref().unwrap().public_key, b"key-1");
    assert_eq!((entries[0].height, entries[1].height), (2, 3));
    assert_eq!(entries[1].kind, pb::key_history_entry::Kind::Rotate as i32);
    // At height 2 the history had one entry.
    let kh2 = n
        .client
        .get_key_history(pb::IdentityQuery {
            identity: a.to_vec(),
            height: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kh2.entries.len(), 1);

    // Members of a list.
    let lm = n
        .client
        .list_members(pb::ListQuery {
            list: GOVERNING_LIST.into(),
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let root = n.root(&lm.anchor);
    let set: pb::IdentitySet = verify_record(
        &root,
        &keys::list_members(GOVERNING_LIST),
        lm.members.as_ref().unwrap(),
    )
    .unwrap()
    .unwrap();
    let mut want = vec![a.to_vec(), n.admin.public_key().to_vec()];
    want.sort();
    assert_eq!(set.keys, want);

    // Trust: incoming of bob = {alice}; path alice -> bob -> carol.
    let t = n
        .client
        .get_trust(pb::TrustQuery {
            identity: b.to_vec(),
            direction: pb::trust_query::Direction::Incoming as i32,
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let root = n.root(&t.anchor);
    let idx: pb::TrustIndex =
        verify_record(&root, &keys::trust_incoming(&b), t.index.as_ref().unwrap())
            .unwrap()
            .unwrap();
    assert_eq!(idx.entries.len(), 1);
    assert_eq!(idx.entries[0].other, a.to_vec());
    assert_eq!(idx.entries[0].level, 2);
    assert!(t.statements.is_empty(), "the index holds the statements");

    let p = n
        .client
        .find_trust_path(pb::TrustPathQuery {
            from: a.to_vec(),
            to: c.to_vec(),
            max_depth: 0,
            min_level: 0,
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let root = n.root(&p.anchor);
    assert!(p.found);
    assert_eq!(p.hops, vec![b.to_vec(), c.to_vec()]);
    let hops: Vec<pb::TrustEntry> = p
        .statements
        .iter()
        .zip([(a, b), (b, c)])
        .map(|(pv, (x, y))| {
            let index: pb::TrustIndex = verify_record(&root, &keys::trust_outgoing(&x), pv)
                .unwrap()
                .unwrap();
            onionpost_proto::trust::entry(&index, &y).unwrap().clone()
        })
        .collect();
    assert_eq!(hops.len(), 2);
    let p = n
        .client
        .find_trust_path(pb::TrustPathQuery {
            from: a.to_vec(),
            to: c.to_vec(),
            max_depth: 0,
            min_level: 2,
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!p.found, "bob only trusts carol marginally");
    let p = n
        .client
        .find_trust_path(pb::TrustPathQuery {
            from: a.to_vec(),
            to: c.to_vec(),
            max_depth: 1,
            min_level: 0,
            height: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!p.found, "carol is two hops away");
}

#[tokio::test]
async fn submit_checks_transactions_and_events_stream() {
    let mut n = Net::start().await;
    let status = n
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.chain_id, CHAIN);
    assert_eq!(status.anchor.unwrap().height, 0);

    // Good transaction: accepted into the mempool.
    let tx = pb::SignedTx::decode(n.alice.sign(register("alice")).as_slice()).unwrap();
    let ans = n.client.submit_tx(tx.clone()).await.unwrap().into_inner();
    assert_eq!(ans.code, 0, "{}", ans.log);
    assert_eq!(n.app.mempool().len(), 1);
    // The same again: the check state has spent nonce 0.
    let ans = n.client.submit_tx(tx.clone()).await.unwrap().into_inner();
    assert_eq!(ans.code, 8, "{}", ans.log); // already registered (in the check state)
    // Bad signature.
    let mut bad = pb::SignedTx::decode(n.bob.sign(register("bob")).as_slice()).unwrap();
    bad.signature[5] ^= 0x10;
    let ans = n.client.submit_tx(bad).await.unwrap().into_inner();
    assert_eq!(ans.code, 4, "{}", ans.log);
    assert!(ans.log.contains("signature"), "{}", ans.log);
    // Wrong chain.
    let other = onionpost_proto::tx::sign(&key(7), "other", 0, register("x"));
    let ans = n.client.submit_tx(other).await.unwrap().into_inner();
    assert_eq!(ans.code, 3, "{}", ans.log);

    // Events: commit the mempool's transaction, then a live one.
    let mut stream = n
        .client
        .stream_events(pb::EventsQuery { from_height: 1 })
        .await
        .unwrap()
        .into_inner();
    let pending = n.app.mempool().peek(1 << 20);
    n.block(pending);
    assert_eq!(
        n.app.mempool().len(),
        0,
        "committed transactions leave the mempool"
    );
    let e = stream.message().await.unwrap().unwrap();
    assert_eq!((e.height, e.kind.as_str()), (1, "register_identity"));
    assert_eq!(e.signer, n.alice.public_key().to_vec());
    let tx = n.admin.sign(Action::AddMember(pb::AddMember {
        list: GOVERNING_LIST.into(),
        member: n.alice.public_key().to_vec(),
    }));
    n.block(vec![tx]);
    let e = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (e.height, e.kind.as_str(), e.list.as_str()),
        (2, "add_member", GOVERNING_LIST)
    );

    // A full mempool refuses at once, with its own code, and says what to do.
    let small_dir = tempfile::tempdir().unwrap();
    let small = LedgerApp::open_with_mempool(small_dir.path(), 1).unwrap();
    small.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]));
    let mut one = Signer::new(key(20), CHAIN, 0);
    let mut two = Signer::new(key(21), CHAIN, 0);
    small.submit(one.sign(register("one"))).unwrap();
    let (code, log) = small.submit(two.sign(register("two"))).unwrap_err();
    assert_eq!(code, 15, "{log}");
    assert!(log.contains("full") && log.contains("retry"), "{log}");

    // A late subscriber replays history from height 1.
    let mut late = n
        .client
        .stream_events(pb::EventsQuery { from_height: 1 })
        .await
        .unwrap()
        .into_inner();
    let kinds = [
        late.message().await.unwrap().unwrap().kind,
        late.message().await.unwrap().unwrap().kind,
    ];
    assert_eq!(
        kinds,
        ["register_identity".to_string(), "add_member".to_string()]
    );
}

/// A commit source that blocks in `commit` (as a slow disk would) until released, for at
/// most 20 s; `gave_up` tells whether it was never released.
struct GatedCommits {
    entered: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    gave_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl onionpost_ledger::grpc::CommitSource for GatedCommits {
    fn commit(&self, _height: u64) -> Result<Option<pb::CommitAnswer>, String> {
        self.entered.notify_one();
        let released = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(20));
        if released.is_err() {
            self.gave_up
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(None)
    }
}

struct NoRelay;

impl onionpost_ledger::grpc::TxRelay for NoRelay {
    fn relay(&self, _tx: pb::SignedTx) {}
}

/// On a runtime of one thread, a call whose storage read blocks does not hold up another
/// call: reads run on the blocking pool, not on the async worker.
#[tokio::test]
async fn a_blocked_read_does_not_hold_up_other_calls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let app = LedgerApp::open(dir.path()).unwrap();
    app.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]));
    let mut alice = Signer::new(key(2), CHAIN, 0);
    let res = apply_block(&app, 1, &[alice.sign(register("alice"))]);
    assert_eq!(res.tx_results[0].code, 0, "{}", res.tx_results[0].log);

    let entered = Arc::new(tokio::sync::Notify::new());
    let gave_up = Arc::new(AtomicBool::new(false));
    let (release, gate) = std::sync::mpsc::channel();
    let commits = GatedCommits {
        entered: entered.clone(),
        release: std::sync::Mutex::new(gate),
        gave_up: gave_up.clone(),
    };
    let client =
        serve(LedgerService::new(app.clone()).with_consensus(Arc::new(commits), Arc::new(NoRelay)))
            .await;

    let mut slow = client.clone();
    let blocked = tokio::spawn(async move { slow.get_commit(pb::CommitQuery { height: 1 }).await });
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("GetCommit reached its commit source");

    let mut fast = client.clone();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        fast.get_identity(pb::IdentityQuery {
            identity: alice.public_key().to_vec(),
            height: 0,
        }),
    )
    .await
    .expect("GetIdentity answered while GetCommit was blocked")
    .unwrap()
    .into_inner();
    assert!(answer.identity.unwrap().present, "alice is registered");
    assert!(
        !gave_up.load(Ordering::SeqCst),
        "GetIdentity had to wait for the blocked read to give up"
    );

    release.send(()).unwrap();
    let status = blocked.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
    assert!(!gave_up.load(Ordering::SeqCst));
}
