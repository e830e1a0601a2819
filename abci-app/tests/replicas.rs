//! Determinism: independent replicas fed the same blocks reach the same app hash at every
//! height, including one that is closed and reopened from disk half way.

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::testkit::{GOVERNING_LIST, Signer, apply_block, init_chain_request};
use onionpost_proto::v1::{self as pb, tx_body::Action};
use proptest::prelude::*;
use tendermint_abci::Application;

const CHAIN: &str = "prop-chain";
const KEYS: u8 = 6;

/// An abstract operation; turned into a signed transaction when the blocks are built.
#[derive(Debug, Clone)]
enum Op {
    Register(u8),
    Bind(u8, u8),
    Rotate(u8, u8),
    Revoke(u8),
    Trust(u8, u8, u32),
    Untrust(u8, u8),
    CreateList(u8, u8),
    AddMember(u8, u8, u8),
    RemoveMember(u8, u8, u8),
    AddAdmin(u8, u8, u8),
    RemoveAdmin(u8, u8, u8),
    ProposeAdmin(u8, u8, u8),
    ProposeValidator(u8, u8),
    Approve(u8, u64),
    Hosts(u8, u8),
    Garbage(u8),
    Replay(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    prop_oneof![
        k.clone().prop_map(Op::Register),
        (k.clone(), any::<u8>()).prop_map(|(a, b)| Op::Bind(a, b)),
        (k.clone(), any::<u8>()).prop_map(|(a, b)| Op::Rotate(a, b)),
        k.clone().prop_map(Op::Revoke),
        (k.clone(), k.clone(), 0..4u32).prop_map(|(a, b, l)| Op::Trust(a, b, l)),
        (k.clone(), k.clone()).prop_map(|(a, b)| Op::Untrust(a, b)),
        (k.clone(), 0..3u8).prop_map(|(a, l)| Op::CreateList(a, l)),
        (k.clone(), 0..3u8, k.clone()).prop_map(|(a, l, m)| Op::AddMember(a, l, m)),
        (k.clone(), 0..3u8, k.clone()).prop_map(|(a, l, m)| Op::RemoveMember(a, l, m)),
        (k.clone(), 0..3u8, k.clone()).prop_map(|(a, l, m)| Op::AddAdmin(a, l, m)),
        (k.clone(), 0..3u8, k.clone()).prop_map(|(a, l, m)| Op::RemoveAdmin(a, l, m)),
        (k.clone(), 0..3u8, k.clone()).prop_map(|(a, l, m)| Op::ProposeAdmin(a, l, m)),
        (k.clone(), 0..4u8).prop_map(|(a, p)| Op::ProposeValidator(a, p)),
        (k.clone(), 1..6u64).prop_map(|(a, id)| Op::Approve(a, id)),
        (k.clone(), k.clone()).prop_map(|(a, b)| Op::Hosts(a, b)),
        any::<u8>().prop_map(Op::Garbage),
        k.prop_map(Op::Replay),
    ]
}

fn key(i: u8) -> SigningKey {
    SigningKey::from([i + 1; 32])
}

fn pk(i: u8) -> Vec<u8> {
    key(i).verification_key().to_bytes().to_vec()
}

fn list(l: u8) -> String {
    if l == 0 {
        GOVERNING_LIST.into()
    } else {
        format!("list{l}")
    }
}

fn e2e(b: u8) -> pb::E2eKey {
    pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key: vec![b; 40],
    }
}

/// Signs the ops into blocks. Key 0 (and, in the property test, key 1) are genesis admins,
/// already registered.
fn build_blocks(blocks: &[Vec<Op>]) -> Vec<Vec<Vec<u8>>> {
    let mut signers: Vec<Signer> = (0..KEYS).map(|i| Signer::new(key(i), CHAIN, 0)).collect();
    let mut last: Vec<Option<Vec<u8>>> = vec![None; KEYS as usize];
    blocks
        .iter()
        .map(|ops| {
            ops.iter()
                .map(|op| {
                    let (who, action) = match op.clone() {
                        Op::Register(a) => (
                            a,
                            Action::RegisterIdentity(pb::RegisterIdentity {
                                display_name: format!("k{a}"),
                            }),
                        ),
                        Op::Bind(a, b) => (a, Action::BindKey(pb::BindKey { key: Some(e2e(b)) })),
                        Op::Rotate(a, b) => (
                            a,
                            Action::RotateKey(pb::RotateKey {
                                new_key: Some(e2e(b)),
                            }),
                        ),
                        Op::Revoke(a) => (
                            a,
                            Action::RevokeKey(pb::RevokeKey {
                                key_id: vec![a; 32],
                                reason: String::new(),
                            }),
                        ),
                        Op::Trust(a, b, l) => (
                            a,
                            Action::SignTrust(pb::SignTrust {
                                target: pk(b),
                                level: l,
                                expires_at: 0,
                            }),
                        ),
                        Op::Untrust(a, b) => {
                            (a, Action::RevokeTrust(pb::RevokeTrust { target: pk(b) }))
                        }
                        Op::CreateList(a, l) => (
                            a,
                            Action::CreateList(pb::CreateList {
                                name: list(l),
                                policy: None,
                            }),
                        ),
                        Op::AddMember(a, l, m) => (
                            a,
                            Action::AddMember(pb::AddMember {
                                list: list(l),
                                member: pk(m),
                            }),
                        ),
                        Op::RemoveMember(a, l, m) => (
                            a,
                            Action::RemoveMember(pb::RemoveMember {
                                list: list(l),
                                member: pk(m),
                            }),
                        ),
                        Op::AddAdmin(a, l, m) => (
                            a,
                            Action::AddAdmin(pb::AddAdmin {
                                list: list(l),
                                admin: pk(m),
                            }),
                        ),
                        Op::RemoveAdmin(a, l, m) => (
                            a,
                            Action::RemoveAdmin(pb::RemoveAdmin {
                                list: list(l),
                                admin: pk(m),
                            }),
                        ),
                        Op::ProposeAdmin(a, l, m) => (
                            a,
                            Action::Propose(pb::Propose {
                                change: Some(pb::Change {
                                    kind: Some(pb::change::Kind::AddAdmin(pb::AddAdmin {
                                        list: list(l),
                                        admin: pk(m),
                                    })),
                                }),
                            }),
                        ),
                        Op::ProposeValidator(a, p) => (
                            a,
                            Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
                                updates: vec![pb::ValidatorUpdate {
                                    pub_key: pk(100 + p % 2),
                                    power: u64::from(p),
                                }],
                            }),
                        ),
                        Op::Approve(a, id) => (a, Action::Approve(pb::Approve { proposal_id: id })),
                        Op::Hosts(a, b) => (
                            a,
                            Action::SetMailboxHosts(pb::SetMailboxHosts { hosts: vec![pk(b)] }),
                        ),
                        Op::Garbage(b) => return vec![b; (b as usize) % 50],
                        Op::Replay(a) => {
                            if let Some(tx) = &last[a as usize] {
                                return tx.clone();
                            }
                            (a, Action::RegisterIdentity(Default::default()))
                        }
                    };
                    let tx = signers[who as usize].sign(action);
                    last[who as usize] = Some(tx.clone());
                    tx
                })
                .collect()
        })
        .collect()
}

fn open(dir: &std::path::Path) -> LedgerApp {
    LedgerApp::open(dir).expect("open ledger")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn replicas_agree_at_every_height(blocks in prop::collection::vec(prop::collection::vec(op(), 0..12), 1..10)) {
        let signed = build_blocks(&blocks);
        let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Two governing admins, so admin and validator changes need a proposal and approvals.
        let genesis = init_chain_request(CHAIN, &[key(0), key(1)], &[key(100)]);
        let a = open(d1.path());
        let b = open(d2.path());
        let mut c = open(d3.path());
        let ga = a.init_chain(genesis.clone()).app_hash;
        prop_assert_eq!(&ga, &b.init_chain(genesis.clone()).app_hash);
        prop_assert_eq!(&ga, &c.init_chain(genesis).app_hash);

        let mut hashes = vec![ga];
        for (i, txs) in signed.iter().enumerate() {
            let h = i as u64 + 1;
            let ra = apply_block(&a, h, txs);
            let rb = apply_block(&b, h, txs);
            if i == signed.len() / 2 {
                // Restart replica c from disk before this block.
                drop(c);
                c = open(d3.path());
                prop_assert_eq!(c.info(Default::default()).last_block_height, h as i64 - 1);
            }
            let rc = apply_block(&c, h, txs);
            prop_assert_eq!(&ra.app_hash, &rb.app_hash, "height {}", h);
            prop_assert_eq!(&ra.app_hash, &rc.app_hash, "height {} after restart", h);
            let codes = |r: &tendermint_proto::v0_38::abci::ResponseFinalizeBlock| r.tx_results.iter().map(|t| t.code).collect::<Vec<_>>();
            prop_assert_eq!(codes(&ra), codes(&rb));
            prop_assert_eq!(codes(&ra), codes(&rc));
            prop_assert!(!hashes.contains(&ra.app_hash), "every block changes the state (block info)");
            hashes.push(ra.app_hash.clone());
            let info = a.info(Default::default());
            prop_assert_eq!(info.last_block_height, h as i64);
            prop_assert_eq!(&info.last_block_app_hash, &ra.app_hash);
        }
    }
}

#[test]
fn generator_produces_successful_transactions() {
    // Register everyone, then a list with members: all must succeed, so the property test's
    // generator space contains real state changes, not only rejections.
    let mut ops: Vec<Op> = (1..KEYS).map(Op::Register).collect();
    ops.push(Op::CreateList(1, 1));
    ops.push(Op::AddMember(1, 1, 2));
    ops.push(Op::Trust(2, 3, 2));
    let signed = build_blocks(&[ops]);
    let d = tempfile::tempdir().unwrap();
    let app = open(d.path());
    app.init_chain(init_chain_request(CHAIN, &[key(0)], &[key(100)]));
    let res = apply_block(&app, 1, &signed[0]);
    let codes: Vec<u32> = res.tx_results.iter().map(|t| t.code).collect();
    assert!(
        codes.iter().all(|c| *c == 0),
        "{codes:?}: {:?}",
        res.tx_results
    );
}
