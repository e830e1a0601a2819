//! End-to-end tests through real onion services: `onionpost-node` processes with the onion
//! transport (arti, in process) on a private Tor network on loopback (Debian's C `tor`,
//! started by `onionpost_devnet::tor`). Needs `tor`, `tor-gencert` and `python3`; a missing
//! program fails the test (the CI script installs them).
//!
//! All scenarios share one Tor network and run in one `#[test]`, so the network is started
//! once per test binary even under nextest's process-per-test model. First connections are
//! retried for up to ~90 s (see shared/tor-testnet.md: an arti service can be unreachable for
//! about a minute after a hidden-service time-period rotation); the node's queue does that.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onionpost_devnet::tor::TorNetwork;

#[path = "support/mod.rs"]
mod support;
use support::{free_port, python, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_onionpost-node");

/// One node with one identity, using the onion transport on the shared network.
struct Node {
    _dir: tempfile::TempDir,
    home: PathBuf,
    name: String,
    address: String,
    password: String,
    submission: u16,
    imap: u16,
    queue: String,
    /// More configuration (a `[ledger]` table for list mail).
    extra: String,
    child: Option<Child>,
}

impl Node {
    fn new(name: &str, queue: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (address, password) = new_identity(&home, name);
        Node {
            _dir: dir,
            home,
            name: name.into(),
            address,
            password,
            submission: free_port(),
            imap: free_port(),
            queue: queue.into(),
            extra: String::new(),
            child: None,
        }
    }

    /// Writes the node's configuration; returns its path.
    fn write_config(&self, net: &TorNetwork) -> PathBuf {
        let cfg = format!(
            "[submission]\nlisten = \"127.0.0.1:{}\"\n[imap]\nlisten = \"127.0.0.1:{}\"\n\
             [queue]\n{}\n{}\n[transport]\nkind = \"onion\"\n{}",
            self.submission,
            self.imap,
            self.queue,
            self.extra,
            net.node_config_toml()
        );
        let cfg_path = self.home.join("node.toml");
        fs::write(&cfg_path, cfg).unwrap();
        cfg_path
    }

    fn start(&mut self, net: &TorNetwork) -> Instant {
        let cfg_path = self.write_config(net);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("node.log"))
            .unwrap();
        let started = Instant::now();
        let child = Command::new(BIN)
            .args(["--home", self.home.to_str().unwrap(), "run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "info,onionpost_node=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(Duration::from_secs(20), "node listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.imap)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.submission)).is_ok()
        });
        started
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn status(&self) -> String {
        let out = Command::new(BIN)
            .args(["--home", self.home.to_str().unwrap(), "status"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Messages in any of the identity's mailboxes (INBOX and the folders, where list posts
    /// are filed) whose text contains `needle`.
    fn count_in_maildir(&self, needle: &str) -> usize {
        support::count_in_mailboxes(&self.home.join("identities").join(&self.name), needle)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.home.join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The node's own lines (arti's are many and mostly expected warnings).
            let log = self.log();
            let ours: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("onionpost_node") || l.contains("tor_hs"))
                .collect();
            eprintln!("--- last lines of {}'s log ---", self.name);
            for l in &ours[ours.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
            let keep = std::env::temp_dir().join(format!("onion_e2e-{}.log", self.name));
            if fs::write(&keep, &log).is_ok() {
                eprintln!("--- whole log kept in {} ---", keep.display());
            }
        }
    }
}

/// Creates an identity in `home`; returns its address and password.
fn new_identity(home: &std::path::Path, name: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["--home", home.to_str().unwrap(), "identity", "new", name])
        .output()
        .expect("run onionpost-node");
    assert!(out.status.success(), "identity new: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    (field("address:"), field("password:"))
}

fn submit(node: &Node, to: &str, subject: &str, body: &str) {
    support::submit(
        node.submission,
        &node.address,
        &node.password,
        to,
        subject,
        body,
    );
}

fn imap_read(node: &Node) -> String {
    support::imap_read(node.imap, &node.address, &node.password)
}

/// alice@A -> bob@B over onion services, read at B over IMAP; B killed, mail queued, B
/// restarted, mail delivered; carol@C -> an onion that was never published bounces with a
/// readable DSN after C's short retry window.
#[test]
fn mail_travels_between_onion_services() {
    let net = TorNetwork::shared();
    eprintln!(
        "private Tor network ready in {:.1} s",
        net.info().bootstrap_secs
    );
    // Long window for alice (B's downtime must not bounce); short retries so B's return is
    // noticed quickly. Carol's window is short: her mail to nowhere bounces within the test.
    let fast = "retry_base_secs = 1.0\nretry_max_secs = 4.0\nretry_window_secs = 600.0";
    let mut a = Node::new("alice", fast);
    // A second identity on alice's node, to show its service does not reveal her.
    let (dave, _) = new_identity(&a.home, "dave");
    let mut b = Node::new("bob", fast);
    let mut c = Node::new(
        "carol",
        "retry_base_secs = 1.0\nretry_max_secs = 4.0\nretry_window_secs = 20.0",
    );
    let nowhere_home = tempfile::tempdir().unwrap();
    let (nobody, _) = new_identity(&nowhere_home.path().join("home"), "nobody");

    a.start(net);
    let b_started = b.start(net);
    c.start(net);

    // Bounce scenario runs in the background of the others.
    submit(&c, &nobody, "Into the void", "nobody is there");

    // 1. alice -> bob, first circuit (includes B's service publication).
    let t0 = Instant::now();
    submit(&a, &b.address, "Hello over Tor", "onion to onion");
    let first = wait_for(Duration::from_secs(120), "first delivery to bob", || {
        b.count_in_maildir("Hello over Tor") == 1
    });
    eprintln!(
        "first delivery: {:.2} s after submission, {:.2} s after B started",
        first.as_secs_f64(),
        b_started.elapsed().as_secs_f64() - (t0.elapsed() - first).as_secs_f64()
    );
    let read = imap_read(&b);
    assert!(read.contains("SUBJECT=Hello over Tor"), "{read}");
    assert!(read.contains("BODY=onion to onion"), "{read}");
    assert!(read.contains(&format!("FROM={}", a.address)), "{read}");
    // The status is live: it already counts the connection that carried the message.
    let status = a.status();
    assert!(status.contains("tor: private network"), "{status}");
    assert!(
        status.contains(&format!(
            "{}: service",
            a.address.split('@').nth(1).unwrap()
        )),
        "{status}"
    );
    assert!(
        !status.contains("outbound onion connections: 0 ok"),
        "{status}"
    );

    // Warm circuit.
    submit(&a, &b.address, "Second hello", "warm circuit");
    let warm = wait_for(Duration::from_secs(60), "warm delivery", || {
        b.count_in_maildir("Second hello") == 1
    });
    eprintln!(
        "warm delivery: {:.2} s after submission",
        warm.as_secs_f64()
    );

    // Each identity has its own Tor client state (guards, circuits, caches).
    for addr in [&a.address, &dave] {
        let label = &addr.split('@').nth(1).unwrap()[..16];
        assert!(
            a.home.join("arti").join(label).join("state").is_dir(),
            "{label}"
        );
    }
    // alice's service, asked for dave (hosted on the same node), answers exactly as for an
    // address nobody has; both services offer the same capabilities.
    let probe = probe_services(net, &a.address, &dave);
    assert_eq!(probe.other_identity, probe.unknown, "{probe:?}");
    assert!(probe.unknown.starts_with("550 5.1.1"), "{probe:?}");
    assert_eq!(probe.capabilities.0, probe.capabilities.1, "{probe:?}");

    // 2. B down: the message waits in A's queue; B back: it arrives.
    b.kill9();
    let failures = || a.log().matches("temporary failure").count();
    let before = failures();
    submit(&a, &b.address, "While you were away", "queued at alice");
    wait_for(
        Duration::from_secs(120),
        "a failed attempt while B is down",
        || failures() > before,
    );
    assert_eq!(b.count_in_maildir("While you were away"), 0);
    assert!(a.status().contains("queue: 1 message(s)"));
    let b_back = b.start(net);
    let back = wait_for(
        Duration::from_secs(150),
        "delivery after B returned",
        || b.count_in_maildir("While you were away") == 1,
    );
    eprintln!(
        "delivered {:.2} s after B restarted",
        b_back.elapsed().as_secs_f64().min(back.as_secs_f64())
    );
    let read = imap_read(&b);
    assert!(read.contains("SUBJECT=While you were away"), "{read}");

    // 3. The mail to an onion that does not exist came back to carol as a DSN.
    wait_for(Duration::from_secs(120), "bounce at carol", || {
        c.count_in_maildir("delivery-status") == 1
    });
    let read = imap_read(&c);
    assert!(
        read.contains("SUBJECT=Undelivered Mail Returned to Sender"),
        "{read}"
    );
    let dsn = fs::read_dir(c.home.join("identities/carol/Maildir/cur"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|t| t.contains("delivery-status"))
        .unwrap();
    assert!(
        dsn.contains(&format!("Final-Recipient: rfc822; {nobody}")),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Subject: Into the void"), "{dsn}");
    wait_for(Duration::from_secs(20), "queues drained", || {
        a.status().contains("queue: 0 message(s)") && c.status().contains("queue: 0 message(s)")
    });
}

/// `n` member nodes on the private Tor network, their identities registered on a fresh
/// 4-validator ledger, all members of list `onion` (administered by the first), started.
fn onion_list(n: usize) -> (support::ledger::Devnet, Vec<Node>) {
    use support::ledger::{Devnet, tx_as};
    let ledger = Devnet::start(4, "lists-onion");
    let net = TorNetwork::shared();
    let fast = "retry_base_secs = 1.0\nretry_max_secs = 4.0\nretry_window_secs = 600.0";
    let names = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| match names.get(i) {
            Some(name) => Node::new(name, fast),
            None => Node::new(&format!("member{i}"), fast),
        })
        .collect();
    for node in &mut nodes {
        node.extra = ledger.ledger_toml();
        let cfg = node.write_config(net);
        let out = Command::new(BIN)
            .args([
                "--home",
                node.home.to_str().unwrap(),
                "identity",
                "register",
            ])
            .arg(&node.name)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("registered:"),
            "register {}: {out:?}",
            node.name
        );
    }
    let url = ledger.url(1);
    tx_as(&nodes[0].home, "alice", &url, &["create-list", "onion"]);
    for m in 1..nodes.len() {
        let member = nodes[m].address.clone();
        tx_as(
            &nodes[0].home,
            "alice",
            &url,
            &["add-member", "onion", &member],
        );
    }
    // A node's latest certified height can trail the last membership change by one block.
    ledger.wait_past(ledger.height() + 1);
    for node in &mut nodes {
        node.start(net);
    }
    (ledger, nodes)
}

/// Posts `subject` from the first member; the time from the submission's 250 until every
/// other member has stored it.
fn post_to_onion_list(nodes: &[Node], subject: &str) -> Duration {
    let t = Instant::now();
    submit(&nodes[0], "onion@list.invalid", subject, "to every onion");
    let mut pending: Vec<&Node> = nodes[1..].iter().collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let needle = format!("Subject: {subject}");
    while !pending.is_empty() {
        // The first delivery to each onion may wait out its descriptor's publication.
        pending.retain(|m| m.count_in_maildir(&needle) == 0);
        assert!(
            Instant::now() < deadline,
            "{} members never got {subject:?}",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

fn copies_queued(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| n.log().matches("post copy queued").count())
        .sum()
}

/// A list of four members whose nodes reach each other only through onion services: alice
/// posts from her mail client, her node sends the signed post to bob's, carol's and dave's
/// onions, and each delivers it once, after checking it on a 4-validator ledger.
#[test]
fn list_posts_travel_between_onion_services() {
    let (_ledger, nodes) = onion_list(4);
    post_to_onion_list(&nodes, "List over Tor");
    // Relay copies cross the onions too (relay timeout 3 s): none is stored twice.
    wait_for(Duration::from_secs(60), "every relay copy queued", || {
        copies_queued(&nodes) >= 2 * nodes.len() - 2
    });
    std::thread::sleep(Duration::from_secs(4));
    for m in &nodes[1..] {
        assert_eq!(
            m.count_in_maildir("Subject: List over Tor"),
            1,
            "{}",
            m.name
        );
        assert_eq!(
            m.count_in_maildir(&format!(
                "Onionpost-List-Verified: list=onion; author={}",
                nodes[0].address.split('@').nth(1).unwrap()
            )),
            1,
            "{}",
            m.name
        );
    }
    assert_eq!(nodes[0].count_in_maildir("List over Tor"), 0, "the author");
}

/// Registers the node's identity (and binds its key) on the ledger of its `[ledger]`.
fn register_on_ledger(node: &Node, net: &TorNetwork) {
    let cfg = node.write_config(net);
    let out = Command::new(BIN)
        .args([
            "--home",
            node.home.to_str().unwrap(),
            "identity",
            "register",
        ])
        .arg(&node.name)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("registered:"),
        "register {}: {out:?}",
        node.name
    );
}

/// The files a node holds for others.
fn held(node: &Node) -> usize {
    fs::read_dir(node.home.join("held"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "held"))
        .count()
}

#[test]
fn mail_for_an_offline_recipient_is_held_and_collected_over_onion_services() {
    let ledger = support::ledger::Devnet::start(4, "hosts-onion");
    let net = TorNetwork::shared();
    let fast = "retry_base_secs = 1.0\nretry_max_secs = 4.0\nretry_window_secs = 600.0\nhosts_after_secs = 0";
    let mut alice = Node::new("alice", fast);
    let mut bob = Node::new("bob", fast);
    let mut hal = Node::new("hal", fast);
    alice.extra = ledger.ledger_toml();
    bob.extra = format!(
        "{}[hosting]\ncollect_every_secs = 2\n",
        ledger.ledger_toml()
    );
    hal.extra = format!("{}[hosting]\nenabled = true\n", ledger.ledger_toml());
    for node in [&alice, &bob, &hal] {
        register_on_ledger(node, net);
    }
    let hal_onion = hal.address.split('@').nth(1).unwrap().to_string();
    let cfg = bob.write_config(net);
    let out = Command::new(BIN)
        .args([
            "--home",
            bob.home.to_str().unwrap(),
            "identity",
            "hosts",
            "bob",
        ])
        .arg("--config")
        .arg(&cfg)
        .args(["--set", &hal_onion])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hosts set:"),
        "{out:?}"
    );
    hal.start(net);
    alice.start(net);
    // bob's onion service has never been published: alice's node hands the copy to hal.
    submit(
        &alice,
        &bob.address,
        "Held over Tor",
        "Waiting for bob at his host",
    );
    wait_for(
        Duration::from_secs(240),
        "alice's node to use bob's host",
        || alice.log().contains("delivered to mailbox host"),
    );
    assert_eq!(held(&hal), 1);
    bob.start(net);
    wait_for(Duration::from_secs(240), "bob to collect over Tor", || {
        bob.count_in_maildir("Waiting for bob at his host") == 1
    });
    wait_for(Duration::from_secs(60), "hal to delete it", || {
        held(&hal) == 0
    });
    assert!(hal.log().contains("collector authenticated"));
    assert_eq!(bob.count_in_maildir("Waiting for bob at his host"), 1);
}

/// List figures over onion services for BENCHMARKS.md (`ONIONPOST_BENCH=lists cargo bench
/// -p onionpost-node --bench onion`): a post to 8 members, first (every onion service's
/// first publication and circuit included) and warm, with the transmissions each took.
#[allow(dead_code)]
pub fn onion_list_figures() {
    let n = 8;
    let (_ledger, nodes) = onion_list(n);
    let first = post_to_onion_list(&nodes, "first post");
    wait_for(Duration::from_secs(60), "the first post's relays", || {
        copies_queued(&nodes) >= 2 * n - 2
    });
    std::thread::sleep(Duration::from_secs(4));
    let after_first = copies_queued(&nodes);
    let warm = post_to_onion_list(&nodes, "warm post");
    wait_for(Duration::from_secs(60), "the warm post's relays", || {
        copies_queued(&nodes) >= after_first + 2 * n - 2
    });
    std::thread::sleep(Duration::from_secs(4));
    let warm_sent = copies_queued(&nodes) - after_first;
    for m in &nodes[1..] {
        assert_eq!(m.count_in_maildir("Subject: warm post"), 1, "{}", m.name);
    }
    println!("| measurement | figure |");
    println!("| --- | ---: |");
    println!(
        "| post to {n} members over onion services, first (publication included): 250 -> all stored | {:.0} ms ({after_first} transmissions) |",
        first.as_secs_f64() * 1e3
    );
    println!(
        "| post to {n} members over onion services, warm: 250 -> all stored | {:.0} ms ({warm_sent} transmissions) |",
        warm.as_secs_f64() * 1e3
    );
}

/// What a Tor client outside the nodes saw at two onion services of one node.
#[derive(Debug)]
struct Probe {
    /// alice's service's reply to RCPT for dave (hosted on the same node).
    other_identity: String,
    /// alice's service's reply to RCPT for an address nobody has.
    unknown: String,
    /// The EHLO capability lines of alice's and dave's services, host names blanked.
    capabilities: (Vec<String>, Vec<String>),
}

/// A bootstrapped Tor client of the test's own on the private network, with its runtime and
/// state directory.
fn test_tor_client(
    net: &TorNetwork,
) -> (
    tokio::runtime::Runtime,
    std::sync::Arc<arti_client::TorClient<tor_rtcompat::PreferredRuntime>>,
    tempfile::TempDir,
) {
    let cfg = onionpost_node::config::Config::parse(&format!(
        "[transport]\nkind = \"onion\"\n{}",
        net.node_config_toml()
    ))
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let arti = onionpost_node::onion::arti::arti_config(
        state.path(),
        cfg.transport.onion.private.as_ref(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(arti_client::TorClient::create_bootstrapped(arti))
        .unwrap();
    (rt, client, state)
}

/// Talks SMTP to alice's and dave's onion services through a Tor client of the test's own.
fn probe_services(net: &TorNetwork, alice: &str, dave: &str) -> Probe {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let cfg = onionpost_node::config::Config::parse(&format!(
        "[transport]\nkind = \"onion\"\n{}",
        net.node_config_toml()
    ))
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let arti = onionpost_node::onion::arti::arti_config(
        state.path(),
        cfg.transport.onion.private.as_ref(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = arti_client::TorClient::create_bootstrapped(arti)
            .await
            .unwrap();
        // Returns (EHLO capability lines, replies to each RCPT).
        let talk = async |onion: &str, rcpts: &[&str]| -> (Vec<String>, Vec<String>) {
            let started = Instant::now();
            let stream = loop {
                match client.connect((onion, 25)).await {
                    Ok(s) => break s,
                    Err(e) if started.elapsed() < Duration::from_secs(120) => {
                        eprintln!("probe: {onion}: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => panic!("probe: {onion} unreachable: {e}"),
                }
            };
            let mut s = BufReader::new(stream);
            let reply = async |s: &mut BufReader<arti_client::DataStream>| {
                let mut lines = Vec::new();
                loop {
                    let mut l = String::new();
                    s.read_line(&mut l).await.unwrap();
                    let last = l.as_bytes().get(3) != Some(&b'-');
                    lines.push(l.trim_end().replace(onion, "HOST"));
                    if last {
                        return lines;
                    }
                }
            };
            reply(&mut s).await;
            s.get_mut().write_all(b"EHLO localhost\r\n").await.unwrap();
            s.get_mut().flush().await.unwrap();
            let caps = reply(&mut s).await;
            s.get_mut()
                .write_all(b"MAIL FROM:<probe@example.onion>\r\n")
                .await
                .unwrap();
            s.get_mut().flush().await.unwrap();
            reply(&mut s).await;
            let mut answers = Vec::new();
            for r in rcpts {
                s.get_mut()
                    .write_all(format!("RCPT TO:<{r}>\r\n").as_bytes())
                    .await
                    .unwrap();
                s.get_mut().flush().await.unwrap();
                answers.push(reply(&mut s).await.join("\n"));
            }
            (caps, answers)
        };
        let alice_onion = alice.split('@').nth(1).unwrap();
        let dave_onion = dave.split('@').nth(1).unwrap();
        let dave_here = format!("dave@{alice_onion}");
        let nobody_here = format!("nobody@{alice_onion}");
        let (caps_a, answers) = talk(alice_onion, &[dave, &dave_here, &nobody_here]).await;
        let (caps_d, _) = talk(dave_onion, &[]).await;
        assert_eq!(
            answers[0], answers[2],
            "dave's own address at alice's service"
        );
        Probe {
            other_identity: answers[1].clone(),
            unknown: answers[2].clone(),
            capabilities: (caps_a, caps_d),
        }
    })
}

/// Figures for BENCHMARKS.md (not part of the suite): node start to onion reachable, first and
/// warm delivery latency, and messages per second with several senders delivering at once.
/// `cargo bench -p onionpost-node --bench onion` runs it (`benches/onion.rs` includes this file).
#[allow(dead_code)]
pub fn onion_figures() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 25;
    let t_net = Instant::now();
    let net = TorNetwork::shared();
    eprintln!(
        "FIGURE network bootstrap: {:.1} s (call: {:.1} s)",
        net.info().bootstrap_secs,
        t_net.elapsed().as_secs_f64()
    );
    let fast = "retry_base_secs = 0.5\nretry_max_secs = 2.0\nretry_window_secs = 600.0";
    let mut a = Node::new("s0", fast);
    let mut extra = Vec::new();
    for i in 1..SENDERS {
        extra.push(new_identity(&a.home, &format!("s{i}")));
    }
    let mut b = Node::new("bob", fast);
    a.start(net);
    let b_started = b.start(net);
    // Reachability: the first message's delivery after B started.
    submit(&a, &b.address, "probe-1", "first");
    wait_for(Duration::from_secs(120), "first delivery", || {
        b.count_in_maildir("probe-1") == 1
    });
    eprintln!(
        "FIGURE node start to onion reachable (first delivery): {:.2} s",
        b_started.elapsed().as_secs_f64()
    );
    for i in 2..=6 {
        let subject = format!("probe-{i}");
        submit(&a, &b.address, &subject, "warm");
        let d = wait_for(Duration::from_secs(60), "warm delivery", || {
            b.count_in_maildir(&subject) == 1
        });
        eprintln!("FIGURE warm delivery {i}: {:.3} s", d.as_secs_f64());
    }
    // Throughput: SENDERS identities, PER_SENDER messages each, submitted up front.
    let mut senders = vec![(a.address.clone(), a.password.clone())];
    senders.extend(extra);
    let submit_many = r#"
import smtplib, sys
from email.message import EmailMessage
port, user, pw, to, n = sys.argv[1:]
with smtplib.SMTP('127.0.0.1', int(port)) as s:
    s.login(user, pw)
    for i in range(int(n)):
        m = EmailMessage()
        m['From'] = user
        m['To'] = to
        m['Subject'] = 'bulk %s %d' % (user.split('@')[0], i)
        m.set_content('x' * 2000)
        s.send_message(m)
"#;
    let rtt = smtp_round_trips(net, &b.address, 20);
    eprintln!(
        "FIGURE SMTP round trip over a warm onion stream (NOOP, test client -> B): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        rtt[rtt.len() / 2].as_secs_f64() * 1e3,
        rtt[0].as_secs_f64() * 1e3,
        rtt[rtt.len() - 1].as_secs_f64() * 1e3
    );
    let connections = |status: &str| -> u64 {
        status
            .split("outbound onion connections: ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = connections(&a.status());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (addr, pw) in &senders {
            let port = a.submission.to_string();
            let to = b.address.clone();
            let n = PER_SENDER.to_string();
            s.spawn(move || python(submit_many, &[&port, addr, pw, &to, &n]));
        }
    });
    let submitted = t0.elapsed();
    let total = SENDERS * PER_SENDER;
    let d = wait_for(Duration::from_secs(300), "bulk delivery", || {
        b.count_in_maildir("Subject: bulk") == total
    });
    let all = t0.elapsed();
    eprintln!(
        "FIGURE {total} messages from {SENDERS} identities: submitted in {:.2} s, all delivered \
         {:.2} s after the last submission ({:.1} msg/s), {:.2} s after the first ({:.1} msg/s), \
         over {} onion connections",
        submitted.as_secs_f64(),
        d.as_secs_f64(),
        total as f64 / d.as_secs_f64(),
        all.as_secs_f64(),
        total as f64 / all.as_secs_f64(),
        connections(&a.status()) - before
    );
    eprintln!("{}", a.status());
}

/// Round-trip times of `n` SMTP NOOPs over one warm stream to `address`'s onion service,
/// sorted, from a Tor client of the test's own.
fn smtp_round_trips(net: &TorNetwork, address: &str, n: usize) -> Vec<Duration> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let onion = address.split('@').nth(1).unwrap().to_string();
    let (rt, client, _state) = test_tor_client(net);
    rt.block_on(async {
        let stream = client.connect((onion.as_str(), 25)).await.unwrap();
        let mut s = BufReader::new(stream);
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..n + 2 {
            let t = Instant::now();
            s.get_mut().write_all(b"NOOP\r\n").await.unwrap();
            s.get_mut().flush().await.unwrap();
            line.clear();
            s.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("250"), "{line}");
            out.push(t.elapsed());
        }
        out.drain(..2); // the first ones warm up the stream
        out.sort();
        out
    })
}
