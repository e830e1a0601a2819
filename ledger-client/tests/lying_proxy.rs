//! The audit and the verified reads against a lying ledger server: a real tonic proxy in
//! front of a validator of a real 4-validator network, which replays an older certified
//! block, swaps the validator set, forges or drops proofs, and answers from stale heights.
//! Each lie is caught and named; with an honest endpoint beside the liar, fail-over gives
//! the true answer.

mod support;

use onionpost_ledger_client::audit::{AuditOptions, KeyAudit, audit};
use onionpost_ledger_client::{
    At, Basis, Config, Direction, Error, Genesis, GrpcLedger, Ledger, Membership, PathLimits,
    RootPolicy, TrustPath,
};
use support::{Devnet, LIST, Proxy, Tamper, populate};

fn certified(endpoints: Vec<String>, genesis: &Genesis) -> GrpcLedger {
    GrpcLedger::new(Config::new(
        endpoints,
        RootPolicy::Certified(genesis.clone()),
    ))
    .unwrap()
}

/// The error's lies must name `endpoint` and contain `what`.
fn assert_lie(err: &Error, endpoint: &str, what: &str) {
    let lies = err.lies();
    assert!(
        lies.iter()
            .any(|(e, l)| *e == endpoint && l.to_string().contains(what)),
        "expected {what:?} by {endpoint}, got: {err}"
    );
    assert!(err.is_transient(), "{err}");
}

const SKIP: AuditOptions = AuditOptions {
    to: None,
    keys: KeyAudit::Skip,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lie_is_detected_and_named() {
    let net = Devnet::start(4, "lying-chain").await;
    let people = populate(&net).await;
    let genesis = Genesis::load(&net.genesis_path()).unwrap();
    let (proxy, via) = Proxy::start(&net.url(1)).await;

    // Honest, through the proxy: the audit and the reads verify.
    let honest = certified(vec![via.clone()], &genesis);
    let report = audit(&honest, &SKIP, &mut |_| {}).await.unwrap();
    assert!(report.height >= 4, "{report:?}");
    let m = honest
        .membership(LIST, &people.alice, At::Latest)
        .await
        .unwrap();
    assert!(m.value.is_member());
    assert_eq!(m.basis, Basis::Certified);
    let m = honest
        .membership(LIST, &people.bob, At::Latest)
        .await
        .unwrap();
    assert!(matches!(m.value, Membership::NotMember { .. }));
    let alice = honest
        .identity(&people.alice, At::Latest)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(alice.key_history.len(), 1);
    assert_eq!(alice.active_key().unwrap().public_key, b"alice's key");
    let trust = honest
        .trust(&people.admin, Direction::Incoming, At::Latest)
        .await
        .unwrap();
    assert_eq!(trust.value.len(), 1);
    assert_eq!(trust.value[0].from, people.alice);
    let path = honest
        .trust_path(
            &people.alice,
            &people.admin,
            PathLimits::default(),
            At::Latest,
        )
        .await
        .unwrap();
    assert!(
        matches!(&path.value, TrustPath::Found { statements, .. } if statements.len() == 1 && statements[0].level == 2),
        "{path:?}"
    );
    let none = honest
        .trust_path(
            &people.bob,
            &people.admin,
            PathLimits::default(),
            At::Latest,
        )
        .await
        .unwrap();
    assert_eq!(none.value, TrustPath::NotFound);

    // Lies about the chain, each caught by a fresh auditor walking from genesis.
    for (tamper, named) in [
        (
            Tamper::ReplayOlderBlock,
            "replayed block: asked for the block of height 2, the server sent one of height 1",
        ),
        (
            Tamper::SwapValidatorSet,
            "swapped validator set: for block 1",
        ),
        (
            Tamper::ForgeValidatorRecord,
            "forged proof: the validator set at height 1",
        ),
    ] {
        proxy.set(tamper);
        let fresh = certified(vec![via.clone()], &genesis);
        let err = audit(&fresh, &SKIP, &mut |_| {}).await.unwrap_err();
        assert_lie(&err, &via, named);
    }

    // Lies in answers to a client that has verified the chain.
    proxy.set(Tamper::Honest);
    let reader = certified(vec![via.clone()], &genesis);
    reader.sync().await.unwrap();
    for (tamper, named) in [
        (
            Tamper::ForgeMembershipProof,
            "forged proof: the membership of",
        ),
        (
            Tamper::DropMembershipProof,
            "dropped proof: the answer about the membership of",
        ),
        (Tamper::StaleHeight, "stale height: asked about height"),
    ] {
        proxy.set(tamper);
        let err = reader
            .membership(LIST, &people.bob, At::Latest)
            .await
            .unwrap_err();
        assert_lie(&err, &via, named);
    }
    proxy.set(Tamper::ForgeTrustPath);
    let err = reader
        .trust_path(
            &people.alice,
            &people.admin,
            PathLimits::default(),
            At::Latest,
        )
        .await
        .unwrap_err();
    assert_lie(&err, &via, "forged proof: the trust statement");
    proxy.set(Tamper::DropKeyHistoryEntry);
    let err = reader
        .identity(&people.alice, At::Latest)
        .await
        .unwrap_err();
    assert_lie(
        &err,
        &via,
        "dropped proof: the answer about the key history of",
    );

    // A server whose latest block is older than one verified is stale.
    proxy.set(Tamper::Honest);
    net.wait_height(reader.chain().unwrap().height() + 6).await;
    reader.sync().await.unwrap();
    proxy.set(Tamper::StaleLatest);
    let err = reader.sync().await.unwrap_err();
    assert_lie(&err, &via, "stale server: its latest block is");

    // With an honest server beside the liar, the answer is the true one, and the lie is
    // on record.
    proxy.set(Tamper::ForgeMembershipProof);
    let both = certified(vec![via.clone(), net.url(2)], &genesis);
    let m = both
        .membership(LIST, &people.bob, At::Latest)
        .await
        .unwrap();
    assert!(matches!(m.value, Membership::NotMember { .. }));
    assert!(
        both.recent_failures()
            .iter()
            .any(|(e, what)| *e == via && what.contains("forged proof")),
        "{:?}",
        both.recent_failures()
    );
    proxy.set(Tamper::SwapValidatorSet);
    let both = certified(vec![via.clone(), net.url(3)], &genesis);
    let report = audit(&both, &SKIP, &mut |_| {}).await.unwrap();
    assert!(report.height >= 4);
}
