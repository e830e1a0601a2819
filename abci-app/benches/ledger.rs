//! Ledger benchmarks (a bench binary; method and figures in BENCHMARKS.md).
//!
//! `cargo bench -p onionpost-ledger --bench ledger -- [--identities N] [--lists N] [--members N]`
//!
//! 1. Throughput of FinalizeBlock + Commit for blocks of 100 and 1000 signed transactions:
//!    decoding, batch signature verification, execution, the Jellyfish Merkle update and the
//!    synced RocksDB commit, on one thread; and, in the same run on the same transactions,
//!    the rate of the batch signature verification alone (the floor), with each action's
//!    applied rate as a fraction of it.
//! 2. A state of N identities and L lists (with M members each), built through blocks.
//! 3. gRPC CheckMembership over loopback against that state: latency p50/p99 of sequential
//!    calls (the client verifies every proof) and throughput with concurrent clients.

use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::execute::verify_batch;
use onionpost_ledger::grpc::LedgerService;
use onionpost_ledger::testkit::{Signer, apply_block, init_chain_request};
use onionpost_proto::keys;
use onionpost_proto::proof::verify;
use onionpost_proto::tx::DecodedTx;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use tendermint_abci::Application;

const CHAIN: &str = "bench-chain";

fn seed_key(i: u64) -> SigningKey {
    let mut seed = [0x5au8; 32];
    seed[..8].copy_from_slice(&i.to_be_bytes());
    SigningKey::from(seed)
}

struct Args {
    identities: u64,
    lists: u64,
    members: u64,
    lookups: usize,
}

fn args() -> Args {
    let mut a = Args {
        identities: 100_000,
        lists: 1_000,
        members: 20,
        lookups: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("flag needs a number")
        };
        match flag.as_str() {
            "--identities" => a.identities = val(),
            "--lists" => a.lists = val(),
            "--members" => a.members = val(),
            "--lookups" => a.lookups = val() as usize,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Chain {
    app: LedgerApp,
    height: u64,
}

impl Chain {
    fn block(&mut self, txs: &[Vec<u8>]) -> Duration {
        self.height += 1;
        let t = Instant::now();
        let res = apply_block(&self.app, self.height, txs);
        let took = t.elapsed();
        if let Some(bad) = res.tx_results.iter().find(|r| r.code != 0) {
            panic!(
                "benchmark transaction rejected at height {}: {}",
                self.height, bad.log
            );
        }
        took
    }
}

/// How long ed25519-consensus takes to batch-verify the signatures of `txs` alone (decoding
/// excluded): the floor under FinalizeBlock's cost, measured on the same transactions.
fn verify_only(txs: &[Vec<u8>]) -> Duration {
    let decoded: Vec<DecodedTx> = txs
        .iter()
        .map(|t| DecodedTx::decode(t).expect("bench transactions decode"))
        .collect();
    let refs: Vec<&DecodedTx> = decoded.iter().collect();
    let t = Instant::now();
    let ok = verify_batch(&refs);
    let took = t.elapsed();
    assert!(ok.iter().all(|v| *v), "bench signatures verify");
    took
}

fn median_secs(times: &[Duration]) -> f64 {
    let mut v: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let app = LedgerApp::open(dir.path()).expect("open ledger");
    let admin_key = seed_key(u64::MAX);
    app.init_chain(init_chain_request(
        CHAIN,
        std::slice::from_ref(&admin_key),
        &[seed_key(u64::MAX - 1)],
    ));
    let mut chain = Chain { app, height: 0 };

    // --- 1. transactions per second ------------------------------------------------------
    println!("# FinalizeBlock + Commit throughput (one thread, synced RocksDB commit per block)");
    let mut signers: Vec<Signer> = Vec::new();
    let mut next_id = 0u64;
    let mut new_signers = |n: u64| -> Vec<Signer> {
        let v = (next_id..next_id + n)
            .map(|i| Signer::new(seed_key(i), CHAIN, 0))
            .collect();
        next_id += n;
        v
    };
    for &block_size in &[100usize, 1000] {
        let rounds = if block_size == 100 { 30 } else { 10 };
        // Registrations: fresh identities each block.
        let mut reg_times = Vec::new();
        let mut reg_verify = Vec::new();
        for _ in 0..rounds {
            let mut batch = new_signers(block_size as u64);
            let txs: Vec<Vec<u8>> = batch
                .iter_mut()
                .map(|s| {
                    s.sign(Action::RegisterIdentity(pb::RegisterIdentity {
                        display_name: "bench".into(),
                    }))
                })
                .collect();
            reg_times.push(chain.block(&txs));
            reg_verify.push(verify_only(&txs));
            signers.extend(batch);
        }
        // Trust statements between registered identities (reads and writes 3 keys each).
        let mut trust_times = Vec::new();
        let mut trust_verify = Vec::new();
        for r in 0..rounds {
            let n = signers.len();
            let txs: Vec<Vec<u8>> = (0..block_size)
                .map(|i| {
                    let target = signers[(i * 7 + r * 13 + 1) % n].public_key().to_vec();
                    let s = &mut signers[i];
                    if s.public_key().to_vec() == target {
                        return s.sign(Action::SetMailboxHosts(pb::SetMailboxHosts {
                            hosts: vec![],
                        }));
                    }
                    s.sign(Action::SignTrust(pb::SignTrust {
                        target,
                        level: 1,
                        expires_at: 0,
                    }))
                })
                .collect();
            trust_times.push(chain.block(&txs));
            trust_verify.push(verify_only(&txs));
        }
        for (what, times, verify) in [
            ("register_identity", reg_times, reg_verify),
            ("sign_trust", trust_times, trust_verify),
        ] {
            let median = median_secs(&times);
            let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
            let verify_median = median_secs(&verify);
            let applied = block_size as f64 / median;
            let verified = block_size as f64 / verify_median;
            println!(
                "block={block_size:>5} action={what:<18} blocks={rounds:>3} median_block_ms={:>8.2} tx_per_s_median={applied:>8.0} tx_per_s_overall={:>8.0} batch_verify_tx_per_s={verified:>8.0} applied_over_verify={:>5.2}",
                median * 1e3,
                (block_size * rounds) as f64 / total,
                applied / verified,
            );
        }
    }

    // --- 2. a large state ----------------------------------------------------------------------
    println!(
        "# state: {} identities, {} lists x {} members",
        args.identities, args.lists, args.members
    );
    let t = Instant::now();
    let have = signers.len() as u64;
    let mut remaining = args.identities.saturating_sub(have);
    while remaining > 0 {
        let n = remaining.min(2_000);
        let mut batch = new_signers(n);
        let txs: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|s| s.sign(Action::RegisterIdentity(Default::default())))
            .collect();
        chain.block(&txs);
        signers.extend(batch);
        remaining -= n;
    }
    let registered = t.elapsed();
    let t = Instant::now();
    let n = signers.len();
    let mut list_txs = Vec::new();
    for l in 0..args.lists as usize {
        let owner = l % n;
        let name = format!("list-{l}");
        list_txs.push(signers[owner].sign(Action::CreateList(pb::CreateList {
            name: name.clone(),
            policy: None,
        })));
        for m in 1..args.members as usize {
            let member = signers[(owner + m * 101) % n].public_key().to_vec();
            list_txs.push(signers[owner].sign(Action::AddMember(pb::AddMember {
                list: name.clone(),
                member,
            })));
        }
        if list_txs.len() >= 2_000 {
            chain.block(&std::mem::take(&mut list_txs));
        }
    }
    if !list_txs.is_empty() {
        chain.block(&list_txs);
    }
    let listed = t.elapsed();
    let db_bytes = dir_size(dir.path());
    println!(
        "identities={} register_s={:.1} lists={} list_txs={} lists_s={:.1} height={} db_mib={:.0}",
        signers.len(),
        registered.as_secs_f64(),
        args.lists,
        args.lists * args.members,
        listed.as_secs_f64(),
        chain.height,
        db_bytes as f64 / (1 << 20) as f64
    );

    // --- 3. gRPC membership checks ---------------------------------------------------------
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = LedgerService::new(chain.app.clone()).into_server();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(onionpost_ledger::grpc::incoming(listener))
                .await
                .unwrap();
        });
        let root = chain.app.storage().committed().unwrap().app_hash;
        let queries: Vec<(String, [u8; 32])> = (0..args.lookups)
            .map(|i| {
                let l = i % args.lists as usize;
                // Half members, half not.
                let who = if i % 2 == 0 {
                    (l % n + 101) % n
                } else {
                    (l * 31 + 7) % n
                };
                (format!("list-{l}"), signers[who].public_key())
            })
            .collect();
        let mut client = LedgerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut lat = Vec::with_capacity(queries.len());
        let mut members = 0;
        for (list, who) in &queries {
            let t = Instant::now();
            let ans = client
                .check_membership(pb::MembershipQuery {
                    list: list.clone(),
                    identity: who.to_vec(),
                    height: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let is_member = verify(
                &root,
                &keys::membership(list, who),
                ans.membership.as_ref().unwrap(),
            )
            .expect("proof verifies")
            .is_some();
            lat.push(t.elapsed());
            members += is_member as usize;
        }
        lat.sort();
        let pct =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
        println!("# gRPC CheckMembership, sequential, proof verified by the client");
        println!(
            "calls={} members={} p50_us={:.0} p99_us={:.0} max_us={:.0}",
            lat.len(),
            members,
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );

        for &clients in &[4usize, 16] {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut tasks = Vec::new();
            for c in 0..clients {
                let mut client = LedgerClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let queries = queries.clone();
                tasks.push(tokio::spawn(async move {
                    let mut done = 0usize;
                    let mut i = c;
                    while Instant::now() < deadline {
                        let (list, who) = &queries[i % queries.len()];
                        let ans = client
                            .check_membership(pb::MembershipQuery {
                                list: list.clone(),
                                identity: who.to_vec(),
                                height: 0,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        verify(
                            &root,
                            &keys::membership(list, who),
                            ans.membership.as_ref().unwrap(),
                        )
                        .unwrap();
                        done += 1;
                        i += clients;
                    }
                    done
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            println!(
                "concurrent_clients={clients} calls={total} calls_per_s={:.0}",
                total as f64 / 5.0
            );
        }
    });
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let md = e.metadata().unwrap();
                    if md.is_dir() {
                        dir_size(&e.path())
                    } else {
                        md.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
