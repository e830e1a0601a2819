//! Flood tests: a hostile peer ([`onionpost_devnet::hostile::HostilePeer`], a real libp2p
//! peer speaking the validators' wire protocol) floods a devnet of real validator processes,
//! and blocks keep coming with equal app hashes.
//!
//! - An outsider (a key outside the validator set) next to four validators floods proposal
//!   parts for far-future heights, incomplete and oversized streams, bad stream ids and
//!   proposals it signed itself: every part is dropped, and the validators say so.
//! - A Byzantine validator (validator 3's key, its process not running) floods the same way,
//!   from inside the set, and at each height where it is the proposer proposes a correctly
//!   signed block that breaks a rule: time frozen at its parent's, time far behind or ahead of
//!   the clock, too many transaction bytes. The three honest validators vote each down with
//!   the rule named, and none of its blocks is ever committed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::Child;
use std::time::{Duration, Instant};

use malachitebft_core_types::Round;
use onionpost_devnet::hostile::HostilePeer;
use onionpost_devnet::{InitOptions, Manifest, init, start_validator, status, validator_ip};
use onionpost_ledger::validator::config::load_key;
use onionpost_ledger::validator::host::{MAX_BLOCK_TX_BYTES, MAX_CLOCK_DRIFT_MS};
use onionpost_ledger::validator::types::{Validator, ValidatorSet};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb};
use prost::Message;

const CHAIN: &str = "flood-chain";
/// Blocks the validators must decide while flooded (the Byzantine test goes on until each of
/// its four bad proposals was made, which takes about 16 heights: it proposes one in four).
const BLOCKS_UNDER_FLOOD: u64 = 12;
/// The address an outsider listens on.
const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);

/// A base port that is free on every address a test uses (validators' p2p and gRPC ports,
/// the outsider's port).
fn free_base_port() -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..500u64 {
        let port = 20_000 + ((seed + attempt * 104_729) % 40_000) as u16;
        let mut addrs: Vec<SocketAddr> = (0..4)
            .flat_map(|i| [port, port + 1].map(|p| SocketAddr::new(validator_ip(i), p)))
            .collect();
        addrs.push(SocketAddr::new(IpAddr::V4(OUTSIDER_IP), port));
        if addrs.iter().all(|a| TcpListener::bind(a).is_ok()) {
            return port;
        }
    }
    panic!("no free port range found");
}

/// Validator processes of a 4-validator devnet, `running` of them started.
struct Net {
    /// The validators' homes (kept when the test fails, for their whole logs).
    dir: Option<tempfile::TempDir>,
    m: Manifest,
    base_port: u16,
    children: Vec<Child>,
}

impl Net {
    async fn start(running: usize) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let base_port = free_base_port();
        let m = init(
            dir.path(),
            &InitOptions {
                validators: 4,
                admins: 1,
                chain_id: CHAIN.into(),
                base_port,
                block_ms: 100,
            },
        )
        .unwrap();
        let children = m.validators[..running]
            .iter()
            .map(|v| start_validator(v).unwrap())
            .collect();
        let net = Net {
            dir: Some(dir),
            m,
            base_port,
            children,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..running {
            while status(&net.m.validators[i]).await.is_err() {
                assert!(Instant::now() < deadline, "validator-{i} never answered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        net
    }

    fn running(&self) -> std::ops::Range<usize> {
        0..self.children.len()
    }

    async fn status(&self, i: usize) -> pb::StatusAnswer {
        status(&self.m.validators[i]).await.unwrap()
    }

    async fn height(&self, i: usize) -> u64 {
        self.status(i).await.anchor.unwrap().height
    }

    /// Waits until every running validator has at least `peers` consensus peers.
    async fn wait_peers(&self, peers: u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in self.running() {
            loop {
                let now = self.status(i).await.peers;
                if now >= peers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "validator-{i} has {now} peers, wanted {peers}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn client(&self, i: usize) -> LedgerClient<tonic::transport::Channel> {
        LedgerClient::connect(format!("http://{}", self.m.validators[i].grpc))
            .await
            .unwrap()
    }

    /// The app hash of every height 1..=up_to on validator `i`.
    async fn hashes(&self, i: usize, up_to: u64) -> Vec<Vec<u8>> {
        let mut c = self.client(i).await;
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

    /// The decided block of `height`, from validator `i`.
    async fn block(&self, i: usize, height: u64) -> pb::Block {
        let commit = self
            .client(i)
            .await
            .get_commit(pb::CommitQuery { height })
            .await
            .unwrap()
            .into_inner();
        pb::Block::decode(commit.block.as_slice()).unwrap()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.m.validators[i].home.join("validator.log")).unwrap_or_default()
    }

    /// Every running validator reaches `height` under a deadline, and all agree on the app
    /// hash of every height up to it.
    async fn assert_progress_and_agreement(&self, height: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in self.running() {
            while self.height(i).await < height {
                assert!(
                    Instant::now() < deadline,
                    "validator-{i} stuck below {height}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let reference = self.hashes(0, height).await;
        for i in self.running().skip(1) {
            assert_eq!(
                self.hashes(i, height).await,
                reference,
                "validator-{i} diverged"
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "the validators' homes and logs are kept in {}",
                dir.keep().display()
            );
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One round of the stateless floods, around the height being decided.
fn flood(hostile: &mut HostilePeer, next: u64, round: u64) {
    // Far-future heights: dropped on sight.
    hostile
        .flood_heights(next + 10 + round * 50, 50, 64)
        .unwrap();
    // In the window: more incomplete streams than a publisher may keep.
    hostile.flood_heights(next, 4, 1024).unwrap();
    hostile.flood_heights(next + 1, 4, 1024).unwrap();
    hostile.flood_bad_ids(10).unwrap();
    if round.is_multiple_of(20) {
        // More parts of full size than any block has.
        hostile.flood_oversized(next, 12).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_flooding_proposal_parts_does_not_stop_four_validators() {
    let t0 = Instant::now();
    let net = Net::start(4).await;
    net.wait_peers(3).await;
    let peers: Vec<SocketAddr> = net.m.validators.iter().map(|v| v.p2p).collect();
    let listen = SocketAddr::new(IpAddr::V4(OUTSIDER_IP), net.base_port);
    let mut hostile = HostilePeer::start(CHAIN, [0x66; 32], listen, &peers)
        .await
        .unwrap();
    net.wait_peers(4).await;
    eprintln!("{:?}: the outsider is connected", t0.elapsed());

    let start = net.height(0).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    loop {
        let committed = net.status(0).await.anchor.unwrap();
        if committed.height >= start + BLOCKS_UNDER_FLOOD {
            break;
        }
        if Instant::now() >= deadline {
            // What each validator was doing (CI keeps nothing else of a failed run).
            let mut report = String::new();
            for i in net.running() {
                let log = net.log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                report.push_str(&format!("\n--- validator-{i}, last lines of its log:\n"));
                for line in tail.iter().rev() {
                    report.push_str(line);
                    report.push('\n');
                }
            }
            panic!("stuck at {} under the flood{report}", committed.height);
        }
        flood(&mut hostile, committed.height + 1, round);
        // A well-formed proposal signed by the outsider itself.
        let block = pb::Block {
            height: committed.height + 1,
            time: now_ms(),
            proposer: hostile.public_key().to_vec(),
            last_app_hash: committed.root,
            txs: vec![],
        };
        hostile.propose(&block, Round::new(0)).unwrap();
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{:?}: {BLOCKS_UNDER_FLOOD} blocks under the flood",
        t0.elapsed()
    );
    net.assert_progress_and_agreement(start + BLOCKS_UNDER_FLOOD)
        .await;
    // A flood must not become a disk flood: nothing is logged per part (about 36 KiB a
    // second were written under a long flood; gossipsub's warnings of dropped forwards, each
    // with the whole message in Debug form, once wrote 1-2 MB a second).
    let budget = 128 * 1024 * t0.elapsed().as_secs().max(1) as usize;
    for i in net.running() {
        let log = net.log(i);
        assert!(
            log.contains("dropped proposal parts") && log.contains("not_a_validator="),
            "validator-{i} never saw the flood:\n{log}"
        );
        assert!(
            log.len() <= budget,
            "validator-{i} wrote {} bytes of log in {:?}, more than 128 KiB a second",
            log.len(),
            t0.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byzantine_validator_can_neither_exhaust_the_others_nor_freeze_time() {
    let net = Net::start(3).await;
    net.wait_peers(2).await;
    let byzantine = &net.m.validators[3];
    let seed = load_key(&byzantine.home).unwrap().to_bytes();
    let peers: Vec<SocketAddr> = net.m.validators[..3].iter().map(|v| v.p2p).collect();
    let mut hostile = HostilePeer::start(CHAIN, seed, byzantine.p2p, &peers)
        .await
        .unwrap();
    net.wait_peers(3).await;
    let set = ValidatorSet::new(
        net.m
            .validators
            .iter()
            .map(|v| {
                let key: [u8; 32] = hex::decode(&v.pub_key).unwrap().try_into().unwrap();
                Validator::new(key, 10).unwrap()
            })
            .collect(),
    );

    // The rules its proposals break, and the words the honest validators log for each.
    let rules = [
        ("frozen", "is not later than its parent's"),
        ("behind", "behind our clock"),
        ("ahead", "ahead of our clock"),
        ("too big", "bytes of transactions, more than"),
    ];
    // A rule counts as applied only once an honest validator logged its verdict: a
    // proposal that reached nobody in time (the honest validators were still committing
    // the height before, or had moved past round 0) is made again at the next slot.
    let voted_down = |words: &str| {
        net.running().any(|i| {
            let log = net.log(i);
            log.lines()
                .any(|l| l.contains("voting against an invalid block") && l.contains(words))
        })
    };
    let start = net.height(0).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut round = 0;
    let mut proposed = 0usize;
    let mut last_slot = 0;
    loop {
        let committed = net.status(0).await.anchor.unwrap();
        let next = committed.height + 1;
        let pending = rules.iter().find(|(_, words)| !voted_down(words));
        if committed.height >= start + BLOCKS_UNDER_FLOOD && pending.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {} under the flood ({proposed} bad proposals made, {:?} never voted down)",
            committed.height,
            pending.map(|(rule, _)| rule)
        );
        if let Some((rule, _)) = pending
            && next != last_slot
            && committed.height > 0
            && hostile.proposes(&set, next)
        {
            last_slot = next;
            let parent = net.block(0, committed.height).await;
            let mut block = pb::Block {
                height: next,
                time: now_ms(),
                proposer: hostile.public_key().to_vec(),
                last_app_hash: committed.root.clone(),
                txs: vec![],
            };
            match *rule {
                "frozen" => block.time = parent.time,
                "behind" => block.time = now_ms() - 6 * MAX_CLOCK_DRIFT_MS,
                "ahead" => block.time = now_ms() + 6 * MAX_CLOCK_DRIFT_MS,
                _ => {
                    let tx = vec![0x5A; 240 << 10];
                    let n = MAX_BLOCK_TX_BYTES / tx.len() + 1;
                    block.txs = vec![tx; n];
                }
            }
            hostile.propose(&block, Round::new(0)).unwrap();
            proposed += 1;
        }
        flood(&mut hostile, next, round);
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let top = start + BLOCKS_UNDER_FLOOD;
    net.assert_progress_and_agreement(top).await;

    // Each rule was applied, by name (the loop waited for every verdict), and the flood
    // was bounded, not absorbed.
    let logs: Vec<String> = net.running().map(|i| net.log(i)).collect();
    for (i, log) in logs.iter().enumerate() {
        for reason in ["too_far_ahead=", "bad_stream_id="] {
            assert!(log.contains(reason), "validator-{i} never dropped {reason}");
        }
    }
    // None of its blocks was committed, and block time always moved forward.
    let mut last_time = 0;
    for h in 1..=top {
        let b = net.block(1, h).await;
        assert_ne!(
            b.proposer,
            hostile.public_key().to_vec(),
            "height {h} is the Byzantine's"
        );
        assert!(
            b.time > last_time,
            "height {h}: time {} after {last_time}",
            b.time
        );
        last_time = b.time;
    }
    assert!(
        last_time + MAX_CLOCK_DRIFT_MS > now_ms() - 60_000,
        "block time lags the clock"
    );
}
