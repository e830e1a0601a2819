//! Fault tests with real validator processes on 127.0.0.x, under a steady transaction load:
//! one validator killed with SIGKILL (the rest go on), restarted (it catches up with equal app
//! hashes at every height), two of four killed (no progress, no divergence), one brought back
//! (progress resumes); and a validator-set change by admin quorum that a fifth validator
//! then takes part in.

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use onionpost_devnet::{
    InitOptions, Manifest, ValidatorEntry, add_validator, init, start_validator, status, wait_ready,
};
use onionpost_ledger::testkit::Signer;
use onionpost_ledger_client::audit::{AuditOptions, KeyAudit, audit};
use onionpost_ledger_client::{Config, Genesis, GrpcLedger, RootPolicy, ValidatorSet};
use onionpost_proto::consensus::{validator_address, verify_commit};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;

const CHAIN: &str = "fault-chain";

/// Checks the ledger binary is where `onionpost_devnet::ledger_binary` finds it (next to
/// this test's directory; cargo builds workspace binaries before workspace tests).
fn ledger_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("onionpost-ledger");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo nextest run --workspace)",
        bin.display()
    );
    bin
}

struct Net {
    dir: tempfile::TempDir,
    m: Manifest,
    children: Vec<Option<Child>>,
}

impl Net {
    async fn start(n: usize) -> Net {
        ledger_bin();
        let dir = tempfile::tempdir().unwrap();
        let base_port = 20_000 + (std::process::id() % 20_000) as u16 * 2;
        let m = init(
            dir.path(),
            &InitOptions {
                validators: n,
                admins: 1,
                chain_id: CHAIN.into(),
                base_port,
                block_ms: 100,
            },
        )
        .unwrap();
        let children = m
            .validators
            .iter()
            .map(|v| Some(start_validator(v).unwrap()))
            .collect();
        let net = Net { dir, m, children };
        wait_ready(&net.m, Duration::from_secs(60)).await.unwrap();
        net
    }

    fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("running");
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    async fn restart(&mut self, i: usize) {
        self.children[i] = Some(start_validator(&self.m.validators[i]).unwrap());
        wait_one(&self.m.validators[i]).await;
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|i| self.children[*i].is_some())
            .collect()
    }

    async fn height(&self, i: usize) -> u64 {
        status(&self.m.validators[i])
            .await
            .unwrap()
            .anchor
            .unwrap()
            .height
    }

    /// Waits until validator `i` reaches `h`.
    async fn wait_height(&self, i: usize, h: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.height(i).await;
            if now >= h {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "validator-{i} stuck at {now}, wanted {h}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The app hash of every height 1..=up_to on validator `i`.
    async fn hashes(&self, i: usize, up_to: u64) -> Vec<Vec<u8>> {
        let mut c = client(&self.m.validators[i]).await;
        let mut out = Vec::new();
        for h in 1..=up_to {
            let a = c
                .get_list(pb::ListQuery {
                    list: "govern".into(),
                    height: h,
                })
                .await
                .unwrap()
                .into_inner();
            out.push(a.anchor.unwrap().root);
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = &self.dir;
    }
}

async fn wait_one(v: &ValidatorEntry) {
    let m = Manifest {
        chain_id: CHAIN.into(),
        validators: vec![v.clone()],
        admin_keys: vec![],
    };
    wait_ready(&m, Duration::from_secs(60)).await.unwrap();
}

async fn client(v: &ValidatorEntry) -> LedgerClient<tonic::transport::Channel> {
    LedgerClient::connect(format!("http://{}", v.grpc))
        .await
        .unwrap()
}

/// Submits fresh registrations to live validators until stopped; counts accepted ones.
fn load(
    targets: Vec<ValidatorEntry>,
    alive: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let target = (i as usize) % targets.len();
            if !alive[target].load(Ordering::Relaxed) {
                continue;
            }
            let mut seed = [0x42u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            let tx = Signer::new(SigningKey::from(seed), CHAIN, 0)
                .sign(Action::RegisterIdentity(Default::default()));
            let tx = pb::SignedTx::decode(tx.as_slice()).unwrap();
            if let Ok(mut c) =
                LedgerClient::connect(format!("http://{}", targets[target].grpc)).await
                && let Ok(a) = c.submit_tx(tx).await
                && a.into_inner().code == 0
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_survive_crashes_and_halt_without_quorum() {
    let mut net = Net::start(4).await;
    let alive = Arc::new((0..4).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let stop = Arc::new(AtomicBool::new(false));
    let (loader, accepted) = load(net.m.validators.clone(), alive.clone(), stop.clone());
    net.wait_height(0, 10, Duration::from_secs(60)).await;

    // One of four killed: the others keep deciding blocks.
    alive[3].store(false, Ordering::Relaxed);
    net.kill(3);
    let h = net.height(0).await;
    net.wait_height(0, h + 15, Duration::from_secs(60)).await;

    // Restarted: it catches up, and its app hash equals the others' at every height.
    net.restart(3).await;
    alive[3].store(true, Ordering::Relaxed);
    let target = net.height(0).await;
    net.wait_height(3, target, Duration::from_secs(60)).await;
    let reference = net.hashes(0, target).await;
    for i in 1..4 {
        assert_eq!(
            net.hashes(i, target).await,
            reference,
            "validator-{i} diverged below height {target}"
        );
    }

    // Two of four killed: no quorum, so no new blocks, and the survivors agree.
    for i in [2, 3] {
        alive[i].store(false, Ordering::Relaxed);
        net.kill(i);
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let an in-flight height settle
    let stalled = net.height(0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(net.height(0).await, stalled, "no blocks without a quorum");
    assert_eq!(net.height(1).await, stalled);
    assert_eq!(net.hashes(0, stalled).await, net.hashes(1, stalled).await);

    // One back: three of four is a quorum again.
    net.restart(2).await;
    alive[2].store(true, Ordering::Relaxed);
    net.wait_height(0, stalled + 10, Duration::from_secs(90))
        .await;
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();

    // The load was real and it was committed: accepted registrations exist on every live node.
    let accepted = accepted.load(Ordering::Relaxed);
    assert!(accepted > 50, "only {accepted} transactions accepted");
    let top = net.height(0).await;
    let mut c = client(&net.m.validators[1]).await;
    let mut registered = 0;
    for h in 1..=top {
        if let Ok(commit) = c.get_commit(pb::CommitQuery { height: h }).await {
            registered += pb::Block::decode(commit.into_inner().block.as_slice())
                .unwrap()
                .txs
                .len();
        }
    }
    assert!(
        registered as u64 >= accepted / 2,
        "{registered} transactions in blocks, {accepted} accepted"
    );
    for i in net.alive() {
        let h = net.height(i).await;
        assert!(h >= stalled + 5, "validator-{i} at {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_validator_joins_by_admin_quorum() {
    let mut net = Net::start(4).await;
    net.wait_height(0, 3, Duration::from_secs(60)).await;

    // A fifth node, not in genesis: it follows the chain.
    let fifth = add_validator(net.dir.path()).unwrap();
    net.m.validators.push(fifth.clone());
    net.children.push(Some(start_validator(&fifth).unwrap()));
    wait_one(&fifth).await;

    // The sole genesis admin proposes it: one of one admins is a quorum.
    let admin_key = std::fs::read_to_string(&net.m.admin_keys[0]).unwrap();
    let admin_key =
        SigningKey::from(<[u8; 32]>::try_from(hex::decode(admin_key.trim()).unwrap()).unwrap());
    let mut admin = Signer::new(admin_key, CHAIN, 0);
    let fifth_key: [u8; 32] = hex::decode(&fifth.pub_key).unwrap().try_into().unwrap();
    let tx = admin.sign(Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
        updates: vec![pb::ValidatorUpdate {
            pub_key: fifth_key.to_vec(),
            power: 10,
        }],
    }));
    let mut c = client(&net.m.validators[0]).await;
    let ans = c
        .submit_tx(pb::SignedTx::decode(tx.as_slice()).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ans.code, 0, "{}", ans.log);

    // Find a later block whose certificate the fifth validator signed, and verify the
    // certificate against the validator set of that height.
    let fifth_addr = validator_address(&fifth_key);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "the fifth validator never signed a commit"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(commit) = c.get_commit(pb::CommitQuery { height: 0 }).await else {
            continue;
        };
        let commit = commit.into_inner();
        let cert = commit.certificate.clone().unwrap();
        if commit.validators.len() == 5 && cert.signatures.iter().any(|s| s.address == fifth_addr) {
            let block = verify_commit(CHAIN, &commit.validators, &commit.block, &cert).unwrap();
            assert_eq!(block.height, cert.height);
            // A tampered certificate does not verify.
            let mut forged = cert.clone();
            forged.signatures[0].signature[0] ^= 1;
            assert!(verify_commit(CHAIN, &commit.validators, &commit.block, &forged).is_err());
            break;
        }
    }
    // And the fifth validator's own state matches the others'.
    let h = net.height(0).await;
    net.wait_height(4, h, Duration::from_secs(30)).await;
    assert_eq!(net.hashes(4, h).await, net.hashes(0, h).await);

    // An auditor with only genesis.json verifies every certificate up to here, including the
    // change to five validators, with sets it derived from proven state; the roots it
    // certifies are the app hashes the validators report.
    let genesis = Genesis::load(&net.m.validators[0].home.join("genesis.json")).unwrap();
    let auditor = |genesis: Genesis| {
        GrpcLedger::new(Config::new(
            vec![format!("http://{}", net.m.validators[4].grpc)],
            RootPolicy::Certified(genesis),
        ))
        .unwrap()
    };
    let ledger = auditor(genesis.clone());
    let opts = |to| AuditOptions {
        to: Some(to),
        keys: KeyAudit::Skip,
    };
    let report = audit(&ledger, &opts(h), &mut |_| {}).await.unwrap();
    assert_eq!(report.height, h);
    assert_eq!(report.set_changes.len(), 1, "{:?}", report.set_changes);
    assert_eq!(report.set_changes[0].1, 5);
    let reported = net.hashes(0, h - 1).await;
    for height in 1..h {
        let root = ledger.certified_root(height).await.unwrap().root;
        assert_eq!(
            root.to_vec(),
            reported[height as usize - 1],
            "height {height}"
        );
    }
    // A genesis naming other validators makes the audit fail at the first block.
    let mut forged = genesis.clone();
    forged.validators = ValidatorSet::new([([7u8; 32], 10)]).unwrap();
    let err = audit(&auditor(forged), &opts(3), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("derived from genesis"), "{err}");
}
