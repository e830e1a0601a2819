//! Ledger benchmarks (a bench binary; method and figures in BENCHMARKS.md).
//!
//! `cargo bench -p onionpost-ledger --bench ledger -- [--identities N] [--lists N] [--members N]
//! [--lookups N] [--throughput-only] [--only sign_trust|lists]` (the last two for profiling).
//!
//! 1. Throughput of FinalizeBlock + Commit for blocks of 100 and 1000 signed transactions:
//!    decoding, batch signature verification, execution, the Jellyfish Merkle update and the
//!    synced RocksDB commit, on one thread; and, in the same run on the same transactions,
//!    the rate of the batch signature verification alone (the floor), with each action's
//!    applied rate as a fraction of it. Actions: register_identity, sign_trust, create_list
//!    and add_member.
//! 2. A state of N identities and L lists (with M members each), built through blocks.
//! 3. gRPC CheckMembership over loopback against that state: latency p50/p99 of sequential
//!    calls (the client verifies every proof) and throughput with concurrent clients.

use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use onionpost_ledger::LedgerApp;
use onionpost_ledger::execute::verify_batch;
use onionpost_ledger::grpc::LedgerService;
use onionpost_ledger::testkit::{Signer, finalize_request, init_chain_request, serve_on_loopback};
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
    /// Stop after the throughput part (for profiling).
    throughput_only: bool,
    /// Run only this throughput action after registrations (`sign_trust` or `lists`).
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        identities: 100_000,
        lists: 1_000,
        members: 20,
        lookups: 20_000,
        throughput_only: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().expect("flag needs a value");
        let mut num = || val().parse().expect("flag needs a number");
        match flag.as_str() {
            "--identities" => a.identities = num(),
            "--lists" => a.lists = num(),
            "--members" => a.members = num(),
            "--lookups" => a.lookups = num() as usize,
            "--throughput-only" => a.throughput_only = true,
            "--only" => a.only = Some(val()),
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
    /// Applies one block; returns how long FinalizeBlock and Commit took.
    fn block(&mut self, txs: &[Vec<u8>]) -> (Timed, Timed) {
        self.height += 1;
        let t = Timer::start();
        let res = self.app.finalize_block(finalize_request(self.height, txs));
        let finalized = t.stop();
        let t = Timer::start();
        self.app.commit();
        let committed = t.stop();
        if let Some(bad) = res.tx_results.iter().find(|r| r.code != 0) {
            panic!(
                "benchmark transaction rejected at height {}: {}",
                self.height, bad.log
            );
        }
        (finalized, committed)
    }
}

/// Wall-clock time and this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so that a run on a
/// loaded machine still says how much work a block took: time spent waiting for a core is not
/// counted (and neither is time waiting for fsync).
#[derive(Clone, Copy, Default)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

impl std::ops::Add for Timed {
    type Output = Timed;
    fn add(self, o: Timed) -> Timed {
        Timed {
            wall: self.wall + o.wall,
            cpu: self.cpu + o.cpu,
        }
    }
}

struct Timer {
    wall: Instant,
    cpu: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Timer {
    fn start() -> Self {
        let cpu = thread_cpu();
        Timer {
            wall: Instant::now(),
            cpu,
        }
    }

    fn stop(self) -> Timed {
        let wall = self.wall.elapsed();
        Timed {
            wall,
            cpu: thread_cpu().saturating_sub(self.cpu),
        }
    }
}

/// The blocks of one action and block size: FinalizeBlock, Commit and bare verification
/// times, one entry per block.
#[derive(Default)]
struct Measured {
    finalize: Vec<Timed>,
    commit: Vec<Timed>,
    verify: Vec<Timed>,
}

impl Measured {
    /// Applies `txs` as the next block, then times the batch verification of its signatures.
    fn block(&mut self, chain: &mut Chain, txs: &[Vec<u8>]) {
        let (f, c) = chain.block(txs);
        self.finalize.push(f);
        self.commit.push(c);
        self.verify.push(verify_only(txs));
    }

    fn print(&self, what: &str, block_size: usize) {
        let applied: Vec<Timed> = self
            .finalize
            .iter()
            .zip(&self.commit)
            .map(|(f, c)| *f + *c)
            .collect();
        let wall = |v: &[Timed]| median_secs(&v.iter().map(|t| t.wall).collect::<Vec<_>>());
        let cpu = |v: &[Timed]| median_secs(&v.iter().map(|t| t.cpu).collect::<Vec<_>>());
        let total: f64 = applied.iter().map(|t| t.wall.as_secs_f64()).sum();
        let rate = |secs: f64| block_size as f64 / secs;
        println!(
            "block={block_size:>5} action={what:<18} blocks={:>3} wall median_ms: finalize={:>7.2} commit={:>6.2} verify={:>7.2} | tx_per_s: applied={:>6.0} (overall {:>6.0}) bare_verify={:>6.0} fraction={:>4.2} | cpu median_ms: finalize={:>7.2} commit={:>6.2} verify={:>7.2} fraction={:>4.2}",
            applied.len(),
            wall(&self.finalize) * 1e3,
            wall(&self.commit) * 1e3,
            wall(&self.verify) * 1e3,
            rate(wall(&applied)),
            (block_size * applied.len()) as f64 / total,
            rate(wall(&self.verify)),
            wall(&self.verify) / wall(&applied),
            cpu(&self.finalize) * 1e3,
            cpu(&self.commit) * 1e3,
            cpu(&self.verify) * 1e3,
            cpu(&self.verify) / cpu(&applied),
        );
    }
}

/// How long ed25519-consensus takes to batch-verify the signatures of `txs` alone (decoding
/// excluded): the floor under FinalizeBlock's cost, measured on the same transactions.
fn verify_only(txs: &[Vec<u8>]) -> Timed {
    let decoded: Vec<DecodedTx> = txs
        .iter()
        .map(|t| DecodedTx::decode(t).expect("bench transactions decode"))
        .collect();
    let refs: Vec<&DecodedTx> = decoded.iter().collect();
    let t = Timer::start();
    let ok = verify_batch(&refs);
    let took = t.stop();
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
    println!(
        "# bare_verify: ed25519-consensus batch verification alone of the same blocks' signatures (decoding excluded)"
    );
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
        let mut results: Vec<(&str, Measured)> = Vec::new();
        // Registrations: fresh identities each block (reads 1 key, writes 1).
        let mut m = Measured::default();
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
            m.block(&mut chain, &txs);
            signers.extend(batch);
        }
        results.push(("register_identity", m));
        if args.only.as_deref().is_none_or(|o| o == "sign_trust") {
            // Trust statements between registered identities (reads 4 keys: the signer, the
            // target and the two trust indexes; writes 3: the signer and the two indexes,
            // which hold the statement).
            let mut m = Measured::default();
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
                m.block(&mut chain, &txs);
            }
            results.push(("sign_trust", m));
        }
        if args.only.as_deref().is_none_or(|o| o == "lists") {
            // Lists: each of the first `block_size` identities creates one (writes the list,
            // its member set, the creator's membership and record), then adds one member to
            // it per block (reads 5 keys: the signer, the list, the member's record, the
            // membership and the member set; writes 3: the signer, the membership and the
            // member set; the list record is unchanged since state format 3).
            let mut m = Measured::default();
            let name = |i: usize| format!("bench-{block_size}-{i}");
            let txs: Vec<Vec<u8>> = (0..block_size)
                .map(|i| {
                    signers[i].sign(Action::CreateList(pb::CreateList {
                        name: name(i),
                        policy: None,
                    }))
                })
                .collect();
            m.block(&mut chain, &txs);
            results.push(("create_list", m));
            let mut m = Measured::default();
            for r in 0..rounds {
                let n = signers.len();
                let txs: Vec<Vec<u8>> = (0..block_size)
                    .map(|i| {
                        let member = signers[(i + 1 + r) % n].public_key().to_vec();
                        signers[i].sign(Action::AddMember(pb::AddMember {
                            list: name(i),
                            member,
                        }))
                    })
                    .collect();
                m.block(&mut chain, &txs);
            }
            results.push(("add_member", m));
        }
        for (what, m) in results {
            m.print(what, block_size);
        }
    }
    if args.throughput_only {
        return;
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
        let addr = serve_on_loopback(LedgerService::new(chain.app.clone())).await;
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
