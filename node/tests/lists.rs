//! Mailing lists end to end, with real processes: a 4-validator devnet (`onionpost-ledger
//! validator`), member nodes (`onionpost-node run`, direct transport on loopback) whose
//! identities are registered on the ledger with their own keys, the list administered with
//! the `onionpost` command line signing as a node identity, posts submitted with Python's
//! smtplib, and forged posts sent straight to a member's SMTP port.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::direct::{Node, submit};
use support::ledger::{Devnet, tx_as};
use support::{python, wait_for};

use onionpost_node::lists::post::Post;

/// Like [`Node::send_raw`], again while the node defers (4xx: it has not verified the post's
/// height yet), up to 30 s.
fn send_final(to: &Node, sender: &str, rcpt: &str, data: &[u8]) -> String {
    let start = std::time::Instant::now();
    loop {
        let r = to.send_raw(sender, rcpt, data);
        if !r.starts_with('4') || start.elapsed() > Duration::from_secs(30) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Submission that may be refused: "OK" or "CODE text".
const SUBMIT_RAW: &str = r#"
import smtplib, sys
port, user, pw, to = sys.argv[1:]
msg = 'From: <%s>\r\nTo: <%s>\r\nSubject: mallory tries\r\n\r\nx\r\n' % (user, to)
try:
    with smtplib.SMTP('127.0.0.1', int(port)) as s:
        s.login(user, pw)
        s.sendmail(user, [to], msg)
    print('OK')
except smtplib.SMTPRecipientsRefused as e:
    code, m = list(e.recipients.values())[0]
    print(code, m.decode())
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
"#;

fn onion_key(node: &Node) -> [u8; 32] {
    node.onion()
        .parse::<onionpost_proto::onion::OnionAddress>()
        .unwrap()
        .public_key()
}

/// A post as an author's node would send it, to `list` at `height`.
fn forge(author: &Node, list: &str, height: u64, subject: &str) -> Post {
    let msg = format!(
        "From: <{}>\r\nTo: <{list}@list.invalid>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@{}>\r\n\
         List-Id: <{list}.list.invalid>\r\n\r\nforged body\r\n",
        author.address,
        author.onion()
    );
    Post::sign(&author.signing_key(), list, height, msg.into_bytes()).unwrap()
}

fn member_rcpt(list: &str, node: &Node) -> String {
    format!("{list}+list@{}", node.onion())
}

/// Registers `node`'s identity (and binds its OpenPGP key) on the ledger of its
/// configuration file.
fn register(node: &Node) {
    let text = node.register();
    assert!(text.contains(&hex::encode(onion_key(node))), "{text}");
}

/// Starts `n` member nodes, registers them on the ledger, creates list `dev` (admin: the
/// first) with all of them, and a registered non-member, `mallory`.
fn setup(net: &Devnet, n: usize) -> (Vec<Node>, Node) {
    let names = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| match names.get(i) {
            Some(name) => Node::new(name),
            None => Node::new(&format!("member{i}")),
        })
        .collect();
    let mut mallory = Node::new("mallory");
    // Everyone routes to everyone.
    let routes: Vec<(String, u16)> = nodes
        .iter()
        .chain(std::iter::once(&mallory))
        .map(|x| (x.onion().to_string(), x.smtp))
        .collect();
    for node in nodes.iter_mut().chain(std::iter::once(&mut mallory)) {
        node.routes = routes.clone();
        node.extra = net.ledger_toml();
        std::fs::write(node.home.join("node.toml"), node.config()).unwrap();
    }
    // Registrations are signed by different identities, so they can go in at once: eight at
    // a time share blocks instead of waiting for one each.
    let all: Vec<&Node> = nodes.iter().chain(std::iter::once(&mallory)).collect();
    for batch in all.chunks(8) {
        std::thread::scope(|s| {
            for node in batch {
                s.spawn(|| register(node));
            }
        });
    }
    let url = net.url(1);
    tx_as(&nodes[0].home, "alice", &url, &["create-list", "dev"]);
    for m in &nodes[1..] {
        tx_as(
            &nodes[0].home,
            "alice",
            &url,
            &["add-member", "dev", &m.address],
        );
    }
    // The state after a block is certified by the next block's commit: a node's latest
    // verified height can trail the last membership change by one. Two blocks past it,
    // every node that starts sees the whole list.
    net.wait_past(net.height() + 1);
    (nodes, mallory)
}

/// Picks fresh ports (setup takes a while: ports picked at creation may have been taken by
/// another test meanwhile) and routes everyone to everyone.
fn fresh_ports(nodes: &mut [Node], mallory: &mut Node) {
    let mut all: Vec<&mut Node> = nodes.iter_mut().chain(std::iter::once(mallory)).collect();
    for node in all.iter_mut() {
        node.fresh_ports();
    }
    let routes: Vec<(String, u16)> = all
        .iter()
        .map(|x| (x.onion().to_string(), x.smtp))
        .collect();
    for node in all.iter_mut() {
        node.routes = routes.clone();
    }
}

fn start_all(nodes: &mut [Node], mallory: &mut Node) {
    for node in nodes.iter_mut().chain(std::iter::once(mallory)) {
        node.start();
    }
}

fn copies_queued(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| n.log().matches("post copy queued").count())
        .sum()
}

#[test]
fn a_post_reaches_every_member_once_and_forgeries_are_refused_with_their_reason() {
    let net = Devnet::start(4, "lists-e2e");
    let n = 8;
    let (mut nodes, mut mallory) = setup(&net, n);
    fresh_ports(&mut nodes, &mut mallory);
    start_all(&mut nodes, &mut mallory);

    // A post from alice's mail client to the list address.
    submit(&nodes[0], "dev@list.invalid", "Hello list", "First post.");
    for m in &nodes[1..] {
        let got = support::wait_until(Duration::from_secs(60), || {
            m.count_in_maildir("Subject: Hello list") == 1
        });
        assert!(
            got,
            "{} never got the post; its log ends:\n{}\nthe author's log ends:\n{}",
            m.address,
            m.log_tail(15),
            nodes[0].log_tail(25)
        );
    }
    // Relays arrive after the fan-out; give them the relay timeout, then check nothing
    // was delivered twice and the traffic bound.
    wait_for(Duration::from_secs(30), "every relay copy taken", || {
        copies_queued(&nodes) >= 2 * n - 2
    });
    std::thread::sleep(Duration::from_secs(4));
    for m in &nodes[1..] {
        assert_eq!(
            m.count_in_maildir("Subject: Hello list"),
            1,
            "{}",
            m.address
        );
        let stored = m.count_in_maildir("List-Id: <dev.list.invalid>");
        assert_eq!(stored, 1, "List-Id for filters");
        assert_eq!(
            m.count_in_maildir("List-Post: <mailto:dev@list.invalid>"),
            1
        );
        assert_eq!(
            m.count_in_maildir(&format!(
                "Onionpost-List-Verified: list=dev; author={}",
                nodes[0].onion()
            )),
            1,
            "the verification result travels with the post"
        );
        // Every member has a key bound on the ledger, so the post was one ciphertext for
        // all: decrypted here, signed by the author's bound key, with the keywords.
        let files = support::files_in_mailboxes(
            &m.home.join("identities").join(m.name()),
            "Subject: Hello list",
        );
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.contains("pgp=pass")
                && text.contains("policy.encrypted=yes")
                && text.contains("First post."),
            "{text}"
        );
        let info = files[0]
            .to_string_lossy()
            .rsplit_once(":2,")
            .unwrap()
            .1
            .to_string();
        assert!(
            info.contains('a') && info.contains('c'),
            "$Verified and $Encrypted: {}",
            files[0].display()
        );
    }
    assert_eq!(nodes[0].count_in_maildir("Hello list"), 0);
    assert_eq!(mallory.count_in_maildir("Hello list"), 0, "not a member");
    // Over IMAP the post is in the list's own folder, which is subscribed; not in INBOX.
    let bob = &nodes[1];
    let folders = python(
        r#"
import imaplib, sys
port, user, pw = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port)); M.login(user, pw)
print('LSUB', [l.decode() for l in M.lsub()[1]])
for box in ['INBOX', '"Lists/dev"']:
    M.select(box, readonly=True)
    print(box, M.search(None, 'SUBJECT', '"Hello list"')[1][0].decode())
M.logout()
"#,
        &[&bob.imap.to_string(), &bob.address, &bob.password],
    );
    assert!(
        folders
            .lines()
            .any(|l| l.starts_with("LSUB") && l.contains("Lists/dev")),
        "{folders}"
    );
    assert!(folders.contains("INBOX \n"), "{folders}");
    assert!(folders.contains("\"Lists/dev\" 1\n"), "{folders}");
    let sent = copies_queued(&nodes);
    println!(
        "transmissions for one post to {n} members: {sent} (bound 3N = {})",
        3 * n
    );
    assert!(sent < 3 * n, "{sent} transmissions for {n} members");

    let bob = &nodes[1];
    let h = net.height();

    // A non-member's post (a correct signature by a registered identity).
    let p = forge(&mallory, "dev", h, "from-mallory");
    let r = send_final(
        bob,
        &mallory.address,
        &member_rcpt("dev", bob),
        &p.to_wire(),
    );
    assert!(
        r.starts_with("550") && r.contains("author membership"),
        "{r}"
    );

    // A forged signature: alice's post with one byte changed.
    let p = forge(&nodes[0], "dev", h, "forged");
    let wire = String::from_utf8(p.to_wire())
        .unwrap()
        .replace("forged body", "forged bodY");
    let r = send_final(
        bob,
        &nodes[0].address,
        &member_rcpt("dev", bob),
        wire.as_bytes(),
    );
    assert!(r.starts_with("550") && r.contains("signature"), "{r}");

    // A post to a list that does not exist.
    let p = forge(&nodes[0], "nope", h, "to-nope");
    let r = send_final(
        bob,
        &nodes[0].address,
        &member_rcpt("nope", bob),
        &p.to_wire(),
    );
    assert!(r.starts_with("550") && r.contains("unknown list"), "{r}");

    // A post naming an old height by a member removed since.
    let carol = &nodes[2];
    let before = net.height();
    let old = forge(carol, "dev", before, "from-removed-carol");
    tx_as(
        &nodes[0].home,
        "alice",
        &net.url(0),
        &["remove-member", "dev", &carol.address],
    );
    net.wait_past(net.height() + 2);
    // The node asks for newer blocks at most once a second.
    std::thread::sleep(Duration::from_secs(2));
    let rcpt = member_rcpt("dev", bob);
    let r = loop {
        // Until bob's node has verified the removal, it may still defer or accept.
        let r = bob.send_raw(&carol.address, &rcpt, &old.to_wire());
        if r.starts_with("550") {
            break r;
        }
        assert!(
            !r.starts_with("OK"),
            "accepted a post by a removed member: {r}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(r.contains("author still a member"), "{r}");

    // Mallory's own node refuses to post for her at submission.
    let r = python(
        SUBMIT_RAW,
        &[
            &mallory.submission.to_string(),
            &mallory.address,
            &mallory.password,
            "dev@list.invalid",
        ],
    );
    assert!(
        r.starts_with("550") && r.contains("author membership"),
        "{r}"
    );

    std::thread::sleep(Duration::from_secs(1));
    for m in &nodes {
        for s in [
            "from-mallory",
            "forged",
            "to-nope",
            "from-removed-carol",
            "mallory tries",
        ] {
            assert_eq!(m.count_in_maildir(s), 0, "{s} delivered to {}", m.address);
        }
    }

    // Dave revokes his key: a member without one gets no ciphertext it cannot read, so the
    // next post goes signed only (still verified), to every member still on the list.
    let dave = &nodes[3];
    let out = dave.cli(&[
        "identity",
        "revoke-key",
        "dave",
        "--config",
        &dave.config_path(),
        "--reason",
        "test",
    ]);
    assert!(out.status.success(), "{out:?}");
    // And alice rotates hers: members see the change marked on her next post.
    let alice = &nodes[0];
    let out = alice.cli(&[
        "identity",
        "rotate-key",
        "alice",
        "--config",
        &alice.config_path(),
    ]);
    assert!(out.status.success(), "{out:?}");
    net.wait_past(net.height() + 1);
    submit(
        &nodes[0],
        "dev@list.invalid",
        "Signed only",
        "Dave has no key.",
    );
    for m in nodes[1..].iter().filter(|m| m.name() != "carol") {
        wait_for(Duration::from_secs(60), "the signed-only post", || {
            m.count_in_maildir("Subject: Signed only") == 1
        });
        let files = support::files_in_mailboxes(
            &m.home.join("identities").join(m.name()),
            "Subject: Signed only",
        );
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.contains("pgp=pass") && text.contains("policy.encrypted=no"),
            "{text}"
        );
        let info = files[0]
            .to_string_lossy()
            .rsplit_once(":2,")
            .unwrap()
            .1
            .to_string();
        assert!(
            info.contains('a') && !info.contains('c') && info.contains('d'),
            "$Verified $KeyChanged, not $Encrypted: {}",
            files[0].display()
        );
        assert!(
            text.contains("Onionpost-Key-Change:")
                && text.contains(&alice.openpgp_secret().fingerprint().to_string()),
            "{text}"
        );
    }
}

#[test]
fn without_a_ledger_list_mail_is_refused_and_personal_mail_flows() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    b.start();
    a.start();
    let r = b.send_raw(
        &a.address,
        &member_rcpt("dev", &b),
        b"Onionpost-Post: v=1\r\n\r\n",
    );
    assert!(r.starts_with("554") && r.contains("[ledger]"), "{r}");
    submit(&a, &b.address, "personal", "still works");
    wait_for(Duration::from_secs(30), "personal mail", || {
        b.count_in_maildir("Subject: personal") == 1
    });
}

#[test]
fn members_relay_when_the_author_dies_and_an_offline_member_gets_it_on_return() {
    let net = Devnet::start(4, "lists-relay");
    let n = 5;
    let (mut nodes, mut mallory) = setup(&net, n);
    fresh_ports(&mut nodes, &mut mallory);
    // Alice's node reaches only bob: its other copies fail until it dies.
    let bob_route = (nodes[1].onion().to_string(), nodes[1].smtp);
    nodes[0].routes = vec![bob_route];
    start_all(&mut nodes, &mut mallory);
    // Erin is offline during the post.
    nodes[4].terminate();

    submit(
        &nodes[0],
        "dev@list.invalid",
        "Relayed post",
        "The author dies.",
    );
    // 120 s: once, with the machine at load 18 (four devnets at once), the first copy took
    // more than 60 s; alone it arrives within seconds.
    wait_for(Duration::from_secs(120), "the post at bob", || {
        nodes[1].count_in_maildir("Subject: Relayed post") == 1
    });
    nodes[0].kill9();
    // What waits in the dead author's spool for the others is the ciphertext only.
    let spooled: Vec<String> = support::texts_under(&nodes[0].home.join("spool"))
        .into_iter()
        .filter(|t| t.contains("Onionpost-Post:"))
        .collect();
    assert!(!spooled.is_empty(), "the author's undelivered copies");
    for t in &spooled {
        assert!(
            t.contains("-----BEGIN PGP MESSAGE-----") && !t.contains("The author dies."),
            "a list copy in clear: {t}"
        );
    }
    for m in &nodes[2..4] {
        wait_for(
            Duration::from_secs(60),
            "the relayed post at every online member",
            || m.count_in_maildir("Subject: Relayed post") == 1,
        );
    }
    // Erin returns and gets it from the relay copy waiting for her.
    nodes[4].start();
    wait_for(
        Duration::from_secs(60),
        "the post at erin after her return",
        || nodes[4].count_in_maildir("Subject: Relayed post") == 1,
    );
    std::thread::sleep(Duration::from_secs(4));
    for m in &nodes[1..] {
        assert_eq!(
            m.count_in_maildir("Subject: Relayed post"),
            1,
            "exactly once at {}",
            m.address
        );
    }
    let sent = copies_queued(&nodes);
    println!("transmissions with the author dead and one member offline: {sent} for {n} members");
    assert!(sent < 3 * n, "{sent}");
}

/// Forwards TCP connections from `listener` to `upstream`, both ways, until the test ends.
fn forward(listener: std::net::TcpListener, upstream: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { continue };
            let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[test]
fn a_member_that_cannot_reach_the_ledger_defers_and_delivers_once_it_can() {
    let net = Devnet::start(4, "lists-defer");
    let (mut nodes, mut mallory) = setup(&net, 3);
    fresh_ports(&mut nodes, &mut mallory);
    // Bob's node reaches the ledger only through a port where nothing listens yet.
    let gate = support::free_port();
    let endpoints = net.ledger_toml();
    let line = endpoints
        .lines()
        .find(|l| l.starts_with("endpoints"))
        .unwrap()
        .to_string();
    nodes[1].extra =
        endpoints.replace(&line, &format!("endpoints = [\"http://127.0.0.1:{gate}\"]"));
    start_all(&mut nodes, &mut mallory);

    submit(
        &nodes[0],
        "dev@list.invalid",
        "Deferred post",
        "Held back until bob's ledger answers.",
    );
    wait_for(Duration::from_secs(60), "the post at carol", || {
        nodes[2].count_in_maildir("Subject: Deferred post") == 1
    });
    wait_for(Duration::from_secs(60), "bob's node deferring it", || {
        nodes[1].log().contains("deferring a post")
    });
    assert_eq!(
        nodes[1].count_in_maildir("Deferred post"),
        0,
        "delivered without a verified answer"
    );

    // The ledger answers again: the retried copy is verified and delivered, once.
    let listener = std::net::TcpListener::bind(("127.0.0.1", gate)).unwrap();
    let upstream = net.url(2).trim_start_matches("http://").to_string();
    forward(listener, upstream);
    wait_for(
        Duration::from_secs(60),
        "the post at bob once his ledger answers",
        || nodes[1].count_in_maildir("Subject: Deferred post") == 1,
    );
    assert!(
        nodes[1].log().contains("list post verified"),
        "{}",
        nodes[1].log()
    );
    // Copies from alice's retries and from carol's relay may still arrive (the relay timeout
    // is 3 s): none is stored twice.
    std::thread::sleep(Duration::from_secs(4));
    for m in &nodes[1..] {
        assert_eq!(
            m.count_in_maildir("Subject: Deferred post"),
            1,
            "{}",
            m.address
        );
    }
}

/// Posts `subject` from the first member and waits until every other member has it;
/// returns the time to the submission's 250, the time from there until all stored it, and
/// the copies this post queued (`before`: the copies queued by earlier posts).
fn bench_post(nodes: &[Node], subject: &str, before: usize) -> (Duration, Duration, usize) {
    use std::time::Instant;
    let n = nodes.len();
    let needle = format!("Subject: {subject}");
    let t = Instant::now();
    submit(&nodes[0], "dev@list.invalid", subject, "To every member.");
    let accepted = t.elapsed();
    let mut pending: Vec<usize> = (1..n).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        pending.retain(|&i| nodes[i].count_in_maildir(&needle) == 0);
        assert!(
            Instant::now() < deadline,
            "{} members never got {subject:?}",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = t.elapsed();
    wait_for(Duration::from_secs(60), "every relay copy taken", || {
        copies_queued(nodes) >= before + 2 * n - 2
    });
    // Escalations (a relay not acknowledged in time) come later, if at all: give them a
    // relay timeout (3 s here) to show up in the count.
    std::thread::sleep(Duration::from_secs(4));
    let sent = copies_queued(nodes) - before;
    for m in &nodes[1..] {
        assert_eq!(m.count_in_maildir(&needle), 1, "{}", m.address);
    }
    (accepted, all, sent)
}

/// List figures for BENCHMARKS.md (`cargo bench -p onionpost-node --bench lists`): a post to
/// `ONIONPOST_LIST_MEMBERS` (default 50) member nodes on one machine (direct transport), the
/// time from the submission's 250 until every other member has stored it and the SMTP
/// transmissions it took; then the cost of a receiving node's ledger checks for one post (the
/// latest verified height and the list at the post's height and at the latest), through the
/// ledger client with its cache and with a cache of one entry.
#[allow(dead_code)]
pub fn list_figures() {
    use onionpost_ledger_client::{At, Config, Genesis, GrpcLedger, Ledger, RootPolicy};
    use std::time::Instant;

    let n: usize = std::env::var("ONIONPOST_LIST_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let net = Devnet::start(4, "lists-bench");
    let t = Instant::now();
    let (mut nodes, mut mallory) = setup(&net, n);
    eprintln!(
        "registered {} identities and built a list of {n} in {:.1} s",
        n + 1,
        t.elapsed().as_secs_f64()
    );
    fresh_ports(&mut nodes, &mut mallory);
    // All at once, then wait for each: one by one, 51 nodes each verifying the chain from
    // genesis at start would take minutes on 2 cores.
    let t = Instant::now();
    for node in nodes.iter_mut().chain(std::iter::once(&mut mallory)) {
        node.spawn();
    }
    for node in nodes.iter_mut().chain(std::iter::once(&mut mallory)) {
        node.wait_listening(Duration::from_secs(300));
    }
    eprintln!(
        "{} nodes listening after {:.1} s",
        n + 1,
        t.elapsed().as_secs_f64()
    );

    // The first post: every member's ledger client makes its first verified walk of the
    // chain on it. The second: warm clients.
    let (accepted, all, sent) = bench_post(&nodes, "Bench post", 0);
    let (accepted2, all2, sent2) = bench_post(&nodes, "Second bench post", sent);

    let genesis = Genesis::load(&net.genesis()).unwrap();
    let endpoints: Vec<String> = (0..4).map(|i| net.url(i)).collect();
    let checks = |cache_capacity: usize| -> (f64, f64) {
        support::ledger::rt().block_on(async {
            let mut config = Config::new(endpoints.clone(), RootPolicy::Certified(genesis.clone()));
            config.cache_capacity = cache_capacity;
            let client = GrpcLedger::new(config).unwrap();
            let h = client.latest_height().await.unwrap();
            let rounds = 200;
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                let latest = client.latest_height().await.unwrap();
                let at_h = client.list("dev", At::Height(h)).await.unwrap();
                let now = client.list("dev", At::Height(latest)).await.unwrap();
                assert!(at_h.value.is_some() && now.value.is_some());
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            (times[rounds / 2], times[rounds * 99 / 100])
        })
    };
    let (cached_p50, cached_p99) = checks(1024);
    let (uncached_p50, uncached_p99) = checks(0);
    println!("| measurement | figure |");
    println!("| --- | ---: |");
    for (which, accepted, all, sent) in [
        ("first", accepted, all, sent),
        ("second", accepted2, all2, sent2),
    ] {
        println!(
            "| {which} post to {n} members: submission 250 | {:.0} ms |",
            accepted.as_secs_f64() * 1e3
        );
        println!(
            "| {which} post to {n} members: 250 -> stored at all {} others | {:.0} ms |",
            n - 1,
            all.as_secs_f64() * 1e3
        );
        println!(
            "| SMTP transmissions for the {which} post (bound 3N = {}) | {sent} |",
            3 * n
        );
    }
    println!(
        "| receiver's ledger checks per post, cached: p50 / p99 | {cached_p50:.0} / {cached_p99:.0} us |"
    );
    println!(
        "| receiver's ledger checks per post, no cache (every read fetched and its proofs checked): p50 / p99 | {uncached_p50:.0} / {uncached_p99:.0} us |"
    );
}
