//! The ledger as CometBFT sees it: a separate `onionpost-ledger abci` process spoken to
//! through the real ABCI socket with tendermint-abci's client, including kill -9 at random
//! moments under load and restart from disk.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::testkit::{
    GOVERNING_LIST, Signer, apply_block, finalize_request, init_chain_request,
};
use onionpost_proto::keys;
use onionpost_proto::proof::verify_record;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use rand::Rng;
use tendermint_abci::{Application, ClientBuilder};
use tendermint_proto::v0_38::abci::{RequestCheckTx, RequestInfo, RequestQuery};

const CHAIN: &str = "abci-chain";

struct Ledger {
    child: Child,
    abci: String,
}

impl Ledger {
    fn spawn(home: &std::path::Path) -> Ledger {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onionpost-ledger"))
            .args([
                "abci",
                "--listen",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--home",
            ])
            .arg(home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start onionpost-ledger");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let abci = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("abci="))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Ledger { child, abci }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(i: u8) -> SigningKey {
    SigningKey::from([i; 32])
}

/// `n` blocks of realistic load: registrations, then list and trust changes.
fn workload(n: usize) -> Vec<Vec<Vec<u8>>> {
    let mut admin = Signer::new(key(1), CHAIN, 0);
    let mut users: Vec<Signer> = (0..n * 4)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Signer::new(SigningKey::from(seed), CHAIN, 0)
        })
        .collect();
    (0..n)
        .map(|b| {
            let mut txs = Vec::new();
            for u in &mut users[b * 4..b * 4 + 4] {
                txs.push(u.sign(Action::RegisterIdentity(pb::RegisterIdentity {
                    display_name: format!("u{b}"),
                })));
            }
            let member = users[b * 4].public_key().to_vec();
            txs.push(admin.sign(Action::AddMember(pb::AddMember {
                list: GOVERNING_LIST.into(),
                member,
            })));
            let target = users[b * 4 + 2].public_key().to_vec();
            txs.push(users[b * 4 + 1].sign(Action::SignTrust(pb::SignTrust {
                target,
                level: 1,
                expires_at: 0,
            })));
            txs
        })
        .collect()
}

/// App hashes per height from an in-process replica: the reference.
fn reference(blocks: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let app = LedgerApp::open(dir.path()).unwrap();
    let mut hashes = vec![
        app.init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]))
            .app_hash
            .to_vec(),
    ];
    for (i, txs) in blocks.iter().enumerate() {
        let res = apply_block(&app, i as u64 + 1, txs);
        assert!(
            res.tx_results.iter().all(|r| r.code == 0),
            "{:?}",
            res.tx_results
        );
        hashes.push(res.app_hash.to_vec());
    }
    hashes
}

#[test]
fn abci_socket_round_trip() {
    let home = tempfile::tempdir().unwrap();
    let blocks = workload(3);
    let want = reference(&blocks);
    let ledger = Ledger::spawn(home.path());
    let mut c = ClientBuilder::default().connect(&ledger.abci).unwrap();

    let info = c.info(RequestInfo::default()).unwrap();
    assert_eq!(
        (info.last_block_height, info.data.as_str()),
        (0, "onionpost-ledger")
    );
    let init = c
        .init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]))
        .unwrap();
    assert_eq!(init.app_hash.to_vec(), want[0]);

    // CheckTx: a good one passes, garbage and a wrong chain get codes and readable logs.
    let ok = c
        .check_tx(RequestCheckTx {
            tx: blocks[0][0].clone().into(),
            r#type: 0,
        })
        .unwrap();
    assert_eq!(ok.code, 0, "{}", ok.log);
    let garbage = c
        .check_tx(RequestCheckTx {
            tx: b"\x0a\x05hello".to_vec().into(),
            r#type: 0,
        })
        .unwrap();
    assert_eq!(garbage.code, 2);
    assert!(!garbage.log.is_empty());
    let wrong = onionpost_proto::tx::sign(
        &key(5),
        "elsewhere",
        0,
        Action::RegisterIdentity(Default::default()),
    );
    let wrong = c
        .check_tx(RequestCheckTx {
            tx: prost::Message::encode_to_vec(&wrong).into(),
            r#type: 0,
        })
        .unwrap();
    assert_eq!(wrong.code, 3);
    assert!(wrong.log.contains("elsewhere"), "{}", wrong.log);

    for (i, txs) in blocks.iter().enumerate() {
        let h = i as u64 + 1;
        let res = c.finalize_block(finalize_request(h, txs)).unwrap();
        assert_eq!(res.tx_results.len(), txs.len());
        assert!(res.tx_results.iter().all(|r| r.code == 0));
        assert_eq!(res.app_hash.to_vec(), want[h as usize]);
        assert!(
            res.events
                .iter()
                .any(|e| e.attributes.iter().any(|a| a.value == "add_member"))
        );
        c.commit().unwrap();
    }
    let info = c.info(RequestInfo::default()).unwrap();
    assert_eq!(info.last_block_height, 3);
    assert_eq!(info.last_block_app_hash.to_vec(), want[3]);

    // Query a key with a proof, through ABCI.
    let admin = key(1).verification_key().to_bytes();
    let q = c
        .query(RequestQuery {
            data: keys::identity(&admin).into(),
            path: "/key".into(),
            height: 0,
            prove: true,
        })
        .unwrap();
    assert_eq!((q.code, q.height), (0, 3));
    let op = &q.proof_ops.as_ref().unwrap().ops[0];
    let pv = pb::ProvenValue {
        key: op.key.clone(),
        present: true,
        value: q.value.to_vec(),
        proof: op.data.clone(),
    };
    let root: [u8; 32] = want[3].as_slice().try_into().unwrap();
    let rec: pb::IdentityRecord = verify_record(&root, &keys::identity(&admin), &pv)
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.next_nonce, 3,
        "admin added a member in each of 3 blocks"
    );
    let bad = c
        .query(RequestQuery {
            data: vec![].into(),
            path: "/nope".into(),
            height: 0,
            prove: false,
        })
        .unwrap();
    assert_ne!(bad.code, 0);
    assert!(bad.log.contains("/key"), "{}", bad.log);
}

#[test]
fn kill_9_at_random_moments_loses_nothing_committed() {
    let home = tempfile::tempdir().unwrap();
    let blocks = workload(300);
    let want = reference(&blocks);
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    let mut restarts_seen = Vec::new();
    loop {
        let ledger = Ledger::spawn(home.path());
        let mut c = ClientBuilder::default().connect(&ledger.abci).unwrap();
        let info = c.info(RequestInfo::default()).unwrap();
        let h = info.last_block_height as usize;
        restarts_seen.push(h);
        if h > 0 || !info.last_block_app_hash.is_empty() {
            assert_eq!(
                info.last_block_app_hash.to_vec(),
                want[h],
                "app hash after restart at height {h}"
            );
        }
        if h == 0 {
            // A kill during InitChain may have left genesis or not: InitChain is idempotent.
            let init = c
                .init_chain(init_chain_request(CHAIN, &[key(1)], &[key(99)]))
                .unwrap();
            assert_eq!(init.app_hash.to_vec(), want[0]);
        }
        if h == blocks.len() {
            break;
        }
        // Feed blocks; a killer fires at a random moment (after the 8th restart, let it finish).
        let pid = ledger.child.id();
        let killer = (kills < 8).then(|| {
            let delay = Duration::from_millis(rng.gen_range(2..60));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                kill_9(pid);
            })
        });
        for (i, txs) in blocks.iter().enumerate().skip(h) {
            let height = i as u64 + 1;
            let Ok(res) = c.finalize_block(finalize_request(height, txs)) else {
                break;
            };
            assert_eq!(
                res.app_hash.to_vec(),
                want[height as usize],
                "height {height}"
            );
            if c.commit().is_err() {
                break;
            }
        }
        if let Some(k) = killer {
            k.join().unwrap();
            kills += 1;
        }
        // Kills the process if the killer did not, and reaps it.
        drop(ledger);
    }
    assert!(kills >= 8, "the ledger was killed {kills} times");
    assert!(
        restarts_seen.windows(2).all(|w| w[0] <= w[1]),
        "heights never go back: {restarts_seen:?}"
    );
    let mid_stream = restarts_seen
        .iter()
        .filter(|&&h| h > 0 && h < blocks.len())
        .count();
    assert!(
        mid_stream >= 4,
        "kills landed mid-workload only {mid_stream} times: {restarts_seen:?}"
    );
}

/// SIGKILL by pid (the child handle lives on the other thread).
fn kill_9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}
