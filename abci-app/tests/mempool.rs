//! The mempool's correctness: CheckTx refusals leave no trace in the check state, and every
//! commit re-checks the waiting transactions against the new state, and a flood of anonymous
//! registrations neither fills it nor delays the transactions behind it.

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::mempool::{MAX_REGISTRATIONS_PER_BLOCK, MempoolLimits};
use onionpost_ledger::testkit::{GOVERNING_LIST, Signer, apply_block, init_chain_request};
use onionpost_ledger::validator::host::MAX_BLOCK_TX_BYTES;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use tendermint_abci::Application;
use tendermint_proto::v0_38::abci::{
    RequestPrepareProposal, RequestProcessProposal, response_process_proposal::ProposalStatus,
};

const CHAIN: &str = "mempool-chain";

fn key(i: u8) -> SigningKey {
    SigningKey::from([i; 32])
}

fn open() -> (LedgerApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app = LedgerApp::open(dir.path()).unwrap();
    app.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]));
    (app, dir)
}

fn register(name: &str) -> Action {
    Action::RegisterIdentity(pb::RegisterIdentity {
        display_name: name.into(),
    })
}

fn member(who: &Signer) -> Action {
    Action::AddMember(pb::AddMember {
        list: GOVERNING_LIST.into(),
        member: who.public_key().to_vec(),
    })
}

fn hosts(host: &Signer) -> Action {
    Action::SetMailboxHosts(pb::SetMailboxHosts {
        hosts: vec![host.public_key().to_vec()],
    })
}

/// Commits whatever the mempool holds as the next block; returns the result codes.
fn commit_mempool(app: &LedgerApp, height: u64) -> Vec<u32> {
    let txs = app.mempool().peek(1 << 20);
    let res = apply_block(app, height, &txs);
    res.tx_results.iter().map(|r| r.code).collect()
}

#[test]
fn a_refused_transaction_does_not_spend_its_nonce_in_the_check_state() {
    let (app, _dir) = open();
    let mut admin = Signer::new(key(1), CHAIN, 0);
    let mut alice = Signer::new(key(2), CHAIN, 0);
    app.submit(alice.sign(register("alice"))).unwrap();

    // Nonce 0: refused (alice is registered only in the check state, not a member of an
    // unknown list).
    let refused = admin.sign(Action::AddMember(pb::AddMember {
        list: "nope".into(),
        member: alice.public_key().to_vec(),
    }));
    let (code, log) = app.submit(refused).unwrap_err();
    assert_eq!(code, 10, "{log}");
    assert_eq!(
        app.mempool().len(),
        1,
        "the refused transaction is not queued"
    );

    // Nonce 0 again, for a valid action: accepted, because the refusal spent nothing.
    admin.nonce = 0;
    app.submit(admin.sign(member(&alice)))
        .expect("nonce 0 is still the admin's next nonce");
    // And its successor.
    app.submit(admin.sign(hosts(&alice))).unwrap();

    assert_eq!(commit_mempool(&app, 1), vec![0, 0, 0], "all three apply");
    assert!(app.mempool().is_empty());
}

#[test]
fn a_commit_drops_the_waiting_transactions_it_made_invalid() {
    let (app, _dir) = open();
    let mut admin = Signer::new(key(1), CHAIN, 0);
    let mut alice = Signer::new(key(2), CHAIN, 0);
    let mut bob = Signer::new(key(3), CHAIN, 0);
    let mut carol = Signer::new(key(4), CHAIN, 0);
    let txs = vec![
        alice.sign(register("alice")),
        bob.sign(register("bob")),
        carol.sign(register("carol")),
        admin.sign(member(&bob)),
    ];
    assert_eq!(apply_block(&app, 1, &txs).tx_results.len(), 4);

    // Waiting here: alice's nonce 1, bob leaving the list, carol's nonce 1.
    let alice_waiting = alice.sign(hosts(&bob));
    app.submit(alice_waiting).unwrap();
    let leave = Action::RemoveMember(pb::RemoveMember {
        list: GOVERNING_LIST.into(),
        member: bob.public_key().to_vec(),
    });
    app.submit(bob.sign(leave)).unwrap();
    app.submit(carol.sign(hosts(&alice))).unwrap();
    assert_eq!(app.mempool().len(), 3);

    // Another validator's block spends alice's nonce 1 with another transaction, and the
    // admin removes bob from the list.
    let mut alice_elsewhere = Signer::new(key(2), CHAIN, 1);
    let block = vec![
        alice_elsewhere.sign(hosts(&carol)),
        admin.sign(Action::RemoveMember(pb::RemoveMember {
            list: GOVERNING_LIST.into(),
            member: bob.public_key().to_vec(),
        })),
    ];
    let res = apply_block(&app, 2, &block);
    assert!(res.tx_results.iter().all(|r| r.code == 0), "{res:?}");

    // Only carol's transaction is still valid, and it is still waiting.
    let waiting = app.mempool().peek(1 << 20);
    assert_eq!(
        waiting.len(),
        1,
        "alice's replayed nonce and bob's stale leave are dropped"
    );
    assert_eq!(commit_mempool(&app, 3), vec![0]);

    // The check state was rebuilt from the survivors: alice's next nonce is 2, carol's 2.
    app.submit(alice.sign(hosts(&carol)))
        .expect("alice's nonce 2 passes CheckTx after the re-check");
    let (code, log) = app
        .submit(Signer::new(key(4), CHAIN, 1).sign(hosts(&bob)))
        .unwrap_err();
    assert_eq!(code, 5, "carol's nonce 1 is spent: {log}");
}

fn fresh(i: u64) -> Signer {
    let mut seed = [0x77u8; 32];
    seed[..8].copy_from_slice(&i.to_be_bytes());
    Signer::new(SigningKey::from(seed), CHAIN, 0)
}

#[test]
fn a_flood_of_registrations_is_refused_without_delaying_other_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let lane = MAX_REGISTRATIONS_PER_BLOCK + 50;
    let app = LedgerApp::open_with_limits(
        dir.path(),
        MempoolLimits {
            capacity: 100,
            registrations: lane,
            per_signer: 8,
        },
    )
    .unwrap();
    app.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]));
    let mut admin = Signer::new(key(1), CHAIN, 0);

    // The flood: more anonymous registrations than the lane holds.
    let mut refused = Vec::new();
    for i in 0..lane as u64 + 10 {
        if let Err((code, log)) = app.submit(fresh(i).sign(register("flood"))) {
            refused.push((code, log));
        }
    }
    assert_eq!(refused.len(), 10, "the lane holds {lane}");
    for (code, log) in &refused {
        assert_eq!(*code, 15, "{log}");
        assert!(log.contains("lane for registrations is full"), "{log}");
    }
    assert_eq!(app.mempool().registrations(), lane);

    // A registered identity's transaction after the flood still finds room...
    let late = admin.sign(Action::CreateList(pb::CreateList {
        name: "late".into(),
        policy: None,
    }));
    app.submit(late.clone())
        .expect("the flood does not fill the lane of registered identities");

    // ... and goes into the very next block, with a bounded share of the flood.
    let txs = app.mempool().peek(MAX_BLOCK_TX_BYTES);
    let prepared = app.prepare_proposal(RequestPrepareProposal {
        max_tx_bytes: MAX_BLOCK_TX_BYTES as i64,
        txs: txs.into_iter().map(Into::into).collect(),
        height: 1,
        ..Default::default()
    });
    assert_eq!(prepared.txs.len(), MAX_REGISTRATIONS_PER_BLOCK + 1);
    assert_eq!(prepared.txs.last().unwrap().as_ref(), late.as_slice());
    let verdict = |txs: Vec<bytes::Bytes>| {
        app.process_proposal(RequestProcessProposal {
            txs,
            height: 1,
            ..Default::default()
        })
        .status
    };
    assert_eq!(verdict(prepared.txs.clone()), ProposalStatus::Accept as i32);
    // A hostile proposer's block with one registration too many is rejected.
    let mut too_many = prepared.txs.clone();
    too_many.push(fresh(lane as u64 + 100).sign(register("x")).into());
    assert_eq!(verdict(too_many), ProposalStatus::Reject as i32);

    let block: Vec<Vec<u8>> = prepared.txs.iter().map(|t| t.to_vec()).collect();
    let res = apply_block(&app, 1, &block);
    assert!(res.tx_results.iter().all(|r| r.code == 0));
    assert_eq!(
        app.mempool().registrations(),
        lane - MAX_REGISTRATIONS_PER_BLOCK,
        "the rest of the flood waits for later blocks"
    );
}
