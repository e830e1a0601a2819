//! Partition and fault tests of the compose devnet: real containers from
//! `docker/build-images.sh` on a Docker network of their own, run by the top-level
//! `docker-compose.yml`, cut apart with routes to nowhere, `docker network disconnect`,
//! `docker kill`. Each test has its own compose project, directory and /24, and removes its
//! containers and network when it ends, failed or not.
//!
//! Built only with the `compose-tests` feature; `scripts/test-compose.sh` builds the images
//! and runs them (see the README: they are not part of the 15-minute suite).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use onionpost_devnet::compose::{self, Compose, ComposeOptions};
use onionpost_devnet::{Manifest, ValidatorEntry, status};
use onionpost_ledger::testkit::Signer;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;

const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
const VALIDATORS: [&str; 4] = ["validator-0", "validator-1", "validator-2", "validator-3"];
const TORS: [&str; 6] = ["auth0", "auth1", "auth2", "relay0", "relay1", "relay2"];
/// The mail nodes of the one-to-one mail test (alice's and bob's).
const MAIL_NODES: [&str; 2] = ["node-0", "node-1"];

/// A compose devnet of one test; dropping it removes its containers and network.
struct Devnet {
    c: Compose,
    m: Manifest,
    chain: String,
    _dir: tempfile::TempDir,
}

impl Devnet {
    /// A fresh devnet with `services` up. The /24 is chosen at random among 10.89.1-254 and
    /// chosen again if Docker says another network has it.
    fn up(name: &str, services: &[&str]) -> Devnet {
        for image in [
            "onionpost-validator:dev",
            "onionpost-tor:dev",
            "onionpost-node:dev",
        ] {
            assert!(
                compose::docker(["image", "inspect", image]).is_ok(),
                "image {image} is missing: run docker/build-images.sh (scripts/test-compose.sh does)"
            );
        }
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let third = 1 + (rand_octet() % 254);
            let project = format!("optest-{name}-{}", std::process::id());
            let opts = ComposeOptions {
                project: project.clone(),
                subnet: [10, 89, third],
                chain_id: format!("compose-{name}"),
                ..Default::default()
            };
            compose::init(dir.path(), &opts).unwrap();
            let c = Compose::open(dir.path(), COMPOSE_FILE.as_ref()).unwrap();
            let m = onionpost_devnet::load(dir.path()).unwrap();
            let net = Devnet {
                c,
                m,
                chain: opts.chain_id.clone(),
                _dir: dir,
            };
            match net.c.up(services) {
                Ok(()) => return net,
                Err(e) if format!("{e:#}").contains("overlaps") => last = format!("{e:#}"),
                Err(e) => panic!("docker compose up: {e:#}{}", net.report(services)),
            }
        }
        panic!("no free /24 under 10.89: {last}");
    }

    fn validator(&self, i: usize) -> &ValidatorEntry {
        &self.m.validators[i]
    }

    async fn height(&self, i: usize) -> Option<u64> {
        status(self.validator(i))
            .await
            .ok()
            .and_then(|s| s.anchor)
            .map(|a| a.height)
    }

    /// Waits until validator `i` reaches `h`.
    async fn wait_height(&self, i: usize, h: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.height(i).await;
            if let Some(now) = now
                && now >= h
            {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "validator-{i} at {now:?}, wanted {h} within {timeout:?}; its log:\n{}",
                self.c.logs(VALIDATORS[i], 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the heights of `who` stop changing for `quiet`, and returns them.
    async fn wait_stalled(&self, who: &[usize], quiet: Duration, timeout: Duration) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        let mut since = Instant::now();
        loop {
            let mut now = Vec::new();
            for &i in who {
                now.push(self.height(i).await.expect("answers"));
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "heights of {who:?} still moving after {timeout:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The app hash of every height 1..=up_to on validator `i`.
    async fn hashes(&self, i: usize, up_to: u64) -> Vec<Vec<u8>> {
        let mut c = LedgerClient::connect(format!("http://{}", self.validator(i).grpc))
            .await
            .unwrap();
        let mut out = Vec::new();
        for h in 1..=up_to {
            let a = c
                .get_list(pb::ListQuery {
                    list: "govern".into(),
                    height: h,
                })
                .await
                .unwrap_or_else(|e| panic!("validator-{i} at height {h}: {e}"))
                .into_inner();
            out.push(a.anchor.unwrap().root);
        }
        out
    }

    /// Asserts that every validator in `who` has the same app hash at every height up to `h`.
    async fn assert_agree(&self, who: &[usize], h: u64) {
        let reference = self.hashes(who[0], h).await;
        for &i in &who[1..] {
            assert_eq!(
                self.hashes(i, h).await,
                reference,
                "validator-{i} diverged from validator-{} below height {h}",
                who[0]
            );
        }
    }

    /// Waits until Docker reports every one of `services` healthy.
    fn wait_healthy(&self, services: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<_> = services
                .iter()
                .map(|s| (*s, self.c.state(s).unwrap()))
                .collect();
            if states.iter().all(|(_, st)| st.health == "healthy") {
                return;
            }
            if Instant::now() >= deadline {
                let sick: Vec<&str> = states
                    .iter()
                    .filter(|(_, st)| st.health != "healthy")
                    .map(|(s, _)| *s)
                    .collect();
                panic!("not healthy within {timeout:?}:{}", self.report(&sick));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Devnet {
    /// What a failed test prints about `services`: Docker's state, the last health checks'
    /// output and the end of each log (CI keeps nothing else of a devnet).
    fn report(&self, services: &[&str]) -> String {
        let mut out = String::new();
        for s in services {
            let state = self
                .c
                .state(s)
                .map_or_else(|e| format!("{e:#}"), |st| format!("{st:?}"));
            out.push_str(&format!(
                "\n--- {s}: {state}\n{}{}",
                self.c.health_log(s),
                self.c.logs(s, 40)
            ));
            if s.starts_with("node-") {
                let status = self.c.exec(s, &["onionpost-node", "status"]);
                out.push_str(&status.unwrap_or_else(|e| format!("status: {e:#}")));
            }
        }
        out
    }

    /// Polls `f` every 500 ms until it gives a value; past `timeout` the test fails with
    /// [`Devnet::report`] of `services`.
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        services: &[&str],
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}{}",
                self.report(services)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "compose devnet {} left in {}",
                self.c.manifest.project,
                self.c.dir.display()
            );
        }
        if let Err(e) = self.c.down() {
            eprintln!("docker compose down: {e:#}");
        }
    }
}

fn rand_octet() -> u8 {
    let mut b = [0u8; 1];
    getrandom(&mut b);
    b[0]
}

fn getrandom(buf: &mut [u8]) {
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(buf);
}

/// Submits fresh registrations to the live validators until stopped; counts accepted ones.
fn load(
    chain: String,
    targets: Vec<ValidatorEntry>,
    alive: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut i = 0u64;
        let mut seed_base = [0u8; 8];
        getrandom(&mut seed_base);
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let target = (i as usize) % targets.len();
            if !alive[target].load(Ordering::Relaxed) {
                continue;
            }
            let mut seed = [0x42u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            seed[8..16].copy_from_slice(&seed_base);
            let tx = Signer::new(SigningKey::from(seed), &chain, 0)
                .sign(Action::RegisterIdentity(Default::default()));
            let tx = pb::SignedTx::decode(tx.as_slice()).unwrap();
            let submit = async {
                let mut c =
                    LedgerClient::connect(format!("http://{}", targets[target].grpc)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    c.submit_tx(tx).await?.into_inner(),
                )
            };
            if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), submit).await
                && a.code == 0
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, accepted)
}

/// Transactions in blocks 1..=top, read from validator `i`.
async fn txs_in_blocks(net: &Devnet, i: usize, top: u64) -> usize {
    let mut c = LedgerClient::connect(format!("http://{}", net.validator(i).grpc))
        .await
        .unwrap();
    let mut n = 0;
    for h in 1..=top {
        if let Ok(commit) = c.get_commit(pb::CommitQuery { height: h }).await {
            n += pb::Block::decode(commit.into_inner().block.as_slice())
                .unwrap()
                .txs
                .len();
        }
    }
    n
}

/// 2|2: neither half is a quorum, so no block is decided anywhere, and the halves agree on
/// what they had; after healing blocks resume and all four agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_2_partition_decides_nothing_and_resumes_after_healing() {
    let net = Devnet::up("split", &VALIDATORS);
    for i in 0..4 {
        net.wait_height(i, 5, Duration::from_secs(90)).await;
    }
    let (a, b) = (&VALIDATORS[..2], &VALIDATORS[2..]);
    for s in a {
        net.c.blackhole(s, b).unwrap();
    }
    for s in b {
        net.c.blackhole(s, a).unwrap();
    }
    // A height in flight when the cut came may still finish on one side; then nothing.
    let stalled = net
        .wait_stalled(
            &[0, 1, 2, 3],
            Duration::from_secs(8),
            Duration::from_secs(60),
        )
        .await;
    let low = *stalled.iter().min().unwrap();
    let high = *stalled.iter().max().unwrap();
    assert!(high - low <= 1, "the halves drifted apart: {stalled:?}");
    net.assert_agree(&[0, 1, 2, 3], low).await;
    // Within each half the validators still talk: a whole half is at one height.
    assert_eq!(stalled[0], stalled[1], "{stalled:?}");
    assert_eq!(stalled[2], stalled[3], "{stalled:?}");

    for s in a {
        net.c.heal(s, b).unwrap();
    }
    for s in b {
        net.c.heal(s, a).unwrap();
    }
    for i in 0..4 {
        net.wait_height(i, high + 10, Duration::from_secs(120))
            .await;
    }
    net.assert_agree(&[0, 1, 2, 3], high + 10).await;
}

/// One validator off the network: the other three go on; back on, it catches up and its app
/// hash equals theirs at every height. Docker's health checks see both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_cut_off_catches_up_with_equal_app_hashes() {
    let net = Devnet::up("cutoff", &VALIDATORS);
    net.wait_healthy(&VALIDATORS, Duration::from_secs(120));
    let h = net.wait_height(3, 3, Duration::from_secs(60)).await;

    net.c.disconnect("validator-3").unwrap();
    assert!(!net.c.state("validator-3").unwrap().connected);
    assert!(net.height(3).await.is_none(), "validator-3 still answers");
    for i in 0..3 {
        net.wait_height(i, h + 20, Duration::from_secs(90)).await;
    }

    net.c.connect("validator-3").unwrap();
    let target = net.height(0).await.unwrap();
    net.wait_height(3, target + 5, Duration::from_secs(120))
        .await;
    net.assert_agree(&[0, 1, 2, 3], target + 5).await;
    net.wait_healthy(&VALIDATORS, Duration::from_secs(60));
}

/// A validator killed and restarted over and over under a steady transaction load: the
/// chain never stops for long, every restart catches up, and no two validators ever
/// disagree on an app hash. `ONIONPOST_COMPOSE_SOAK_SECS` sets how long (default 180 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_killed_and_restarted_in_a_loop_under_load_never_diverge() {
    let soak = Duration::from_secs(
        std::env::var("ONIONPOST_COMPOSE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let net = Devnet::up("killloop", &VALIDATORS);
    for i in 0..4 {
        net.wait_height(i, 3, Duration::from_secs(90)).await;
    }
    let alive = Arc::new((0..4).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let stop = Arc::new(AtomicBool::new(false));
    let (loader, accepted) = load(
        net.chain.clone(),
        net.m.validators.clone(),
        alive.clone(),
        stop.clone(),
    );
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() < soak {
        let victim = round % 4;
        let others: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
        alive[victim].store(false, Ordering::Relaxed);
        net.c.kill(VALIDATORS[victim]).unwrap();
        let h = net.height(others[0]).await.unwrap();
        for &i in &others {
            net.wait_height(i, h + 5, Duration::from_secs(60)).await;
        }
        net.c.start(VALIDATORS[victim]).unwrap();
        let target = net.height(others[0]).await.unwrap();
        net.wait_height(victim, target, Duration::from_secs(90))
            .await;
        alive[victim].store(true, Ordering::Relaxed);
        net.assert_agree(&[victim, others[0]], target).await;
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    let top = net.height(0).await.unwrap();
    for i in 1..4 {
        net.wait_height(i, top, Duration::from_secs(60)).await;
    }
    net.assert_agree(&[0, 1, 2, 3], top).await;
    let accepted = accepted.load(Ordering::Relaxed);
    let included = txs_in_blocks(&net, 1, top).await as u64;
    eprintln!(
        "{round} kill/restart rounds in {:?}; {accepted} transactions accepted, {included} in blocks up to height {top}",
        started.elapsed()
    );
    assert!(
        round >= 4,
        "only {round} rounds: every validator should die once"
    );
    assert!(accepted > 50, "only {accepted} transactions accepted");
    assert!(
        included >= accepted / 2,
        "{included} transactions in blocks, {accepted} accepted"
    );
}

/// Runs `curl` against a node's IMAP server inside its container.
fn imap(net: &Devnet, node: usize, url_path: &str, request: Option<&str>) -> String {
    try_imap(net, node, url_path, request).unwrap()
}

/// [`imap`], with curl's failure (a mailbox that does not exist yet) as an error.
fn try_imap(
    net: &Devnet,
    node: usize,
    url_path: &str,
    request: Option<&str>,
) -> anyhow::Result<String> {
    let n = &net.c.manifest.nodes[node];
    let id = &n.identities[0];
    let user = format!("{}:{}", id.address, id.password);
    let url = format!("imap://127.0.0.1:{}/{url_path}", compose::IMAP_PORT);
    let mut args = vec![
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--user",
        &user,
        &url,
    ];
    if let Some(r) = request {
        args.extend(["--request", r]);
    }
    net.c.exec(&n.service.service, &args)
}

/// The sequence numbers of INBOX messages whose subject contains `token`.
fn search(net: &Devnet, node: usize, token: &str) -> Vec<u32> {
    search_in(net, node, "INBOX", token)
}

/// The sequence numbers of messages in `mailbox` (URL-encoded) whose subject contains
/// `token`.
/// A mailbox that does not exist (yet) has none.
fn search_in(net: &Devnet, node: usize, mailbox: &str, token: &str) -> Vec<u32> {
    let Ok(out) = try_imap(
        net,
        node,
        mailbox,
        Some(&format!("SEARCH SUBJECT \"{token}\"")),
    ) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("* SEARCH"))
        .flat_map(|l| {
            l.split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `onionpost-node status` inside a node's container.
fn node_status(net: &Devnet, node: usize) -> String {
    let s = &net.c.manifest.nodes[node].service.service;
    net.c.exec(s, &["onionpost-node", "status"]).unwrap()
}

fn queued(status: &str) -> usize {
    status
        .lines()
        .find_map(|l| l.strip_prefix("queue: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no queue line in:\n{status}"))
}

fn failed_connections(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.split("onion connections: ").nth(1))
        .and_then(|l| l.split(" ok, ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tor line in:\n{status}"))
}

/// alice submits with swaks inside node-0's container, to the first identity of node `to`.
fn send(net: &Devnet, to: usize, subject: &str) {
    let bob = net.c.manifest.nodes[to].identities[0].address.clone();
    submit_as_alice(net, &bob, subject, "from the compose devnet");
}

/// alice submits a message to `to` with swaks inside node-0's container.
fn submit_as_alice(net: &Devnet, to: &str, subject: &str, body: &str) {
    let alice = &net.c.manifest.nodes[0].identities[0];
    let server = format!("127.0.0.1:{}", compose::SUBMISSION_PORT);
    net.c
        .exec(
            "node-0",
            &[
                "swaks",
                "--silent",
                "1",
                "--server",
                &server,
                "--auth",
                "PLAIN",
                "--auth-user",
                &alice.address,
                "--auth-password",
                &alice.password,
                "--from",
                &alice.address,
                "--to",
                to,
                "--header",
                &format!("Subject: {subject}"),
                "--body",
                body,
            ],
        )
        .unwrap();
}

/// Mail over the private Tor network between containers; then bob's node is cut off the
/// network while alice's node holds mail for him: once it is back the mail arrives, exactly
/// once. The validators run too: the nodes' `[ledger]` names them, and a node that cannot ask
/// the ledger whether the recipient has a bound key holds the mail rather than risk sending
/// it in clear.
#[test]
fn mail_queued_for_a_cut_off_node_arrives_exactly_once_after_healing() {
    let mut services: Vec<&str> = VALIDATORS.to_vec();
    services.extend(TORS);
    services.extend(["node-0", "node-1"]);
    let net = Devnet::up("mail", &services);
    net.wait_healthy(&services, Duration::from_secs(300));

    // First, mail goes through at all (the first connection may wait out a descriptor).
    send(&net, 1, "hello-first");
    net.wait_until(
        "the first message in bob's INBOX",
        Duration::from_secs(180),
        &MAIL_NODES,
        || (search(&net, 1, "hello-first").len() == 1).then_some(()),
    );
    let body = imap(&net, 1, "INBOX;UID=1", None);
    assert!(body.contains("from the compose devnet"), "{body}");

    // bob's node off the network; alice's node keeps the mail and fails to deliver it.
    net.c.disconnect("node-1").unwrap();
    let failed_before = failed_connections(&node_status(&net, 0));
    send(&net, 1, "while-cut-off");
    assert_eq!(
        queued(&node_status(&net, 0)),
        1,
        "the message waits in alice's queue"
    );
    net.wait_until(
        "a failed delivery attempt",
        Duration::from_secs(180),
        &MAIL_NODES,
        || {
            let s = node_status(&net, 0);
            (failed_connections(&s) > failed_before && queued(&s) == 1).then_some(())
        },
    );
    assert!(search(&net, 1, "while-cut-off").is_empty());

    // Back on the network: delivered, and only once.
    net.c.connect("node-1").unwrap();
    net.wait_until(
        "the queued message in bob's INBOX",
        Duration::from_secs(300),
        &MAIL_NODES,
        || (!search(&net, 1, "while-cut-off").is_empty()).then_some(()),
    );
    net.wait_until(
        "alice's queue to empty",
        Duration::from_secs(60),
        &MAIL_NODES,
        || (queued(&node_status(&net, 0)) == 0).then_some(()),
    );
    assert_eq!(
        search(&net, 1, "while-cut-off").len(),
        1,
        "delivered more than once"
    );
    assert_eq!(search(&net, 1, "hello-first").len(), 1);
}

/// The folder a member's node files the list's posts in (`Lists/friends`), URL-encoded.
const LIST_FOLDER: &str = "Lists%2Ffriends";

/// A list post across containers: each node registers its identity on the validators'
/// ledger, alice (as her node identity) creates a list with bob and carol, posts to it with
/// swaks, and both members' nodes deliver the post only after checking it on the ledger.
#[test]
fn a_list_post_reaches_every_member_across_containers() {
    let mut services: Vec<&str> = VALIDATORS.to_vec();
    services.extend(TORS);
    services.extend(["node-0", "node-1", "node-2"]);
    let net = Devnet::up("lists", &services);
    net.wait_healthy(&services, Duration::from_secs(300));

    let nodes = &net.c.manifest.nodes;
    for (i, n) in nodes.iter().enumerate() {
        let name = &n.identities[0].name;
        let out = net
            .c
            .exec(
                &n.service.service,
                &[
                    "onionpost-node",
                    "identity",
                    "register",
                    name,
                    "--config",
                    "/home/node/node.toml",
                ],
            )
            .unwrap_or_else(|e| panic!("register {name} on node-{i}: {e:#}"));
        assert!(out.contains("registered"), "{out}");
    }
    let ledger = format!(
        "http://{}:{}",
        net.c.manifest.validators[1].ip,
        compose::VALIDATOR_PORT + 1
    );
    let admin = |args: &[&str]| {
        let mut all = vec![
            "onionpost",
            "--home",
            "/home/node",
            "--identity",
            "alice",
            "tx",
            "--ledger",
            &ledger,
        ];
        all.extend_from_slice(args);
        let out = net.c.exec("node-0", &all).unwrap();
        assert!(out.contains("applied"), "{out}");
        out
    };
    admin(&["create-list", "friends"]);
    let mut last = String::new();
    for n in &nodes[1..] {
        last = admin(&["add-member", "friends", &n.identities[0].address]);
    }
    // The state after block h is certified by block h + 1: past it, every node's verified
    // view of the list has its last member.
    let h: u64 = last
        .lines()
        .find_map(|l| l.strip_prefix("committed at height "))
        .and_then(|h| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("no height in {last}"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            for i in 0..VALIDATORS.len() {
                net.wait_height(i, h + 2, Duration::from_secs(60)).await;
            }
        });

    submit_as_alice(
        &net,
        "friends@list.invalid",
        "list-post-across-containers",
        "to every member",
    );
    for member in 1..nodes.len() {
        let seq = net.wait_until(
            "the post in the member's folder of the list",
            Duration::from_secs(300),
            &["node-0", "node-1", "node-2"],
            || {
                search_in(&net, member, LIST_FOLDER, "list-post-across-containers")
                    .first()
                    .copied()
            },
        );
        let body = imap(
            &net,
            member,
            &format!("{LIST_FOLDER};MAILINDEX={seq}"),
            None,
        );
        assert!(body.contains("List-Id: <friends.list.invalid>"), "{body}");
        assert!(
            body.contains("Onionpost-List-Verified: list=friends; author="),
            "{body}"
        );
        assert!(body.contains("to every member"), "{body}");
    }
}
