//! Mailbox hosts end to end, with real processes: a 4-validator devnet, `onionpost-node run`
//! processes on the direct transport (loopback), identities registered with their keys bound,
//! the recipient naming its host with `onionpost-node identity hosts`, mail submitted with
//! Python's smtplib, and hand-made messages sent straight to the hosts' SMTP ports.
//!
//! alice sends to bob while bob's node is down; after `hosts_after_secs` alice's node hands
//! the encrypted copy to hal, bob's host; bob's node comes back and collects it. carol also
//! hosts mail but is not named by bob, and refuses; hal refuses cleartext and mail beyond
//! its quota.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use onionpost_e2e::{Protect, SecretCert};
use support::direct::{Node, submit};
use support::ledger::Devnet;
use support::{python, wait_for};

/// `m` as `from`'s node hands it to `host` for `to`: with the sender's Onionpost-Hold
/// signature.
fn held_copy(from: &Node, host: &Node, to: &Node, m: &[u8]) -> Vec<u8> {
    onionpost_node::hosting::sender::attach(
        &from.signing_key(),
        &host.identity_key(),
        &to.identity_key(),
        m,
    )
}

/// `identity hosts` on `node` with `args`; its stdout, failing the test on an error.
fn hosts_cli(node: &Node, args: &[&str]) -> String {
    std::fs::write(node.home.join("node.toml"), node.config()).unwrap();
    let n = node.name();
    let cfg = node.config_path();
    let mut all = vec!["identity", "hosts", n.as_str(), "--config", cfg.as_str()];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "identity hosts {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The files held for anyone on `node`.
fn held_files(node: &Node) -> Vec<std::path::PathBuf> {
    let dir = node.home.join("held");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "held"))
        .collect()
}

/// A message from `from` to `to`, signed by `signer` and encrypted to `to_cert` (or clear).
fn message(
    from: &Node,
    to: &Node,
    subject: &str,
    signer: &SecretCert,
    to_cert: Option<&SecretCert>,
) -> Vec<u8> {
    let clear = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@{}>\r\n\r\nbody of {subject}\r\n",
        from.address,
        to.address,
        from.onion()
    );
    match to_cert {
        None => clear.into_bytes(),
        Some(c) => onionpost_e2e::sign_and_encrypt(
            rand::rngs::OsRng,
            clear.as_bytes(),
            signer,
            &[c.public()],
            Protect::default(),
        )
        .unwrap(),
    }
}

fn log_has(node: &Node, needle: &str) -> bool {
    node.log().contains(needle)
}

#[test]
fn mail_for_an_offline_recipient_is_held_by_its_host_and_collected_when_it_returns() {
    let net = Devnet::start(4, "hosts-e2e");
    let mut alice = Node::new("alice");
    let mut bob = Node::new("bob");
    let mut hal = Node::new("hal");
    let mut carol = Node::new("carol");
    alice.queue_extra = "hosts_after_secs = 1\n".into();
    let ledger = net.ledger_toml();
    alice.extra = ledger.clone();
    bob.extra = format!("{ledger}[hosting]\ncollect_every_secs = 0.5\n");
    let hosting =
        "[hosting]\nenabled = true\nmax_messages_per_recipient = 2\ncollect_every_secs = 0\n";
    hal.extra = format!("{ledger}{hosting}");
    carol.extra = format!("{ledger}{hosting}");
    for n in [&alice, &bob, &hal, &carol] {
        n.register();
    }

    // (a) bob names hal as its mailbox host, signed with bob's key; reading it back.
    assert!(hosts_cli(&bob, &[]).contains("hosts: none"));
    let set = hosts_cli(&bob, &["--set", hal.onion()]);
    assert!(
        set.contains("hosts set:") && set.contains(hal.onion()),
        "{set}"
    );
    let shown = hosts_cli(&bob, &[]);
    assert!(shown.contains(&format!("host: {}", hal.onion())), "{shown}");
    assert!(hosts_cli(&bob, &["--set", hal.onion()]).contains("already"));

    for n in [&mut alice, &mut bob, &mut hal, &mut carol] {
        n.fresh_ports();
    }
    alice.routes = vec![
        (bob.onion().to_string(), bob.smtp),
        (hal.onion().to_string(), hal.smtp),
    ];
    bob.routes = vec![(hal.onion().to_string(), hal.smtp)];
    hal.start();
    carol.start();
    alice.start();

    // (c) bob's node is down: after hosts_after_secs alice's node hands the encrypted copy
    // to hal, read from the ledger as bob's host.
    submit(
        &alice,
        &bob.address,
        "Held hello",
        "Kept safe while bob is away",
    );
    wait_for(
        Duration::from_secs(60),
        "alice's node to use bob's host",
        || log_has(&alice, "delivered to mailbox host"),
    );
    let held = held_files(&hal);
    assert_eq!(held.len(), 1, "{}", hal.log());
    let bytes = std::fs::read_to_string(&held[0]).unwrap();
    assert!(bytes.contains("-----BEGIN PGP MESSAGE-----"), "{bytes}");
    assert!(
        !bytes.contains("Kept safe"),
        "the host holds ciphertext only"
    );
    assert_eq!(bob.count_in_maildir("Kept safe"), 0);

    // (b) refusals, said as they are: a host bob does not name; cleartext; a full quota.
    let a_key = alice.openpgp_secret();
    let b_key = bob.openpgp_secret();
    let enc = message(&alice, &bob, "to-carol", &a_key, Some(&b_key));
    let r = carol.send_raw(
        &alice.address,
        &bob.address,
        &held_copy(&alice, &carol, &bob, &enc),
    );
    assert!(
        r.starts_with("550") && r.contains("not a mailbox host"),
        "{r}"
    );
    let clear = message(&alice, &bob, "clear", &a_key, None);
    let r = hal.send_raw(
        &alice.address,
        &bob.address,
        &held_copy(&alice, &hal, &bob, &clear),
    );
    assert!(
        r.starts_with("550") && r.contains("cleartext refused"),
        "{r}"
    );
    // The sending identity must sign what it hands to the host: unsigned, or signed by
    // another identity than MAIL FROM's, is refused.
    let unsigned = message(&alice, &bob, "unsigned", &a_key, Some(&b_key));
    let r = hal.send_raw(&alice.address, &bob.address, &unsigned);
    assert!(r.starts_with("550") && r.contains("Onionpost-Hold"), "{r}");
    let forged = held_copy(&carol, &hal, &bob, &unsigned);
    let r = hal.send_raw(&alice.address, &bob.address, &forged);
    assert!(
        r.starts_with("550") && r.contains("not the envelope sender"),
        "{r}"
    );
    let r = hal.send_raw(
        &alice.address,
        &bob.address,
        &held_copy(
            &alice,
            &hal,
            &bob,
            &message(&alice, &bob, "second", &a_key, Some(&b_key)),
        ),
    );
    assert_eq!(r, "OK");
    let r = hal.send_raw(
        &alice.address,
        &bob.address,
        &held_copy(
            &alice,
            &hal,
            &bob,
            &message(&alice, &bob, "third", &a_key, Some(&b_key)),
        ),
    );
    assert!(r.starts_with("452") && r.contains("quota"), "{r}");
    assert_eq!(held_files(&hal).len(), 2);
    // The host's operator sees what it holds, in numbers only.
    let status = hal.status();
    assert!(
        status.contains("mailbox host: 2 message(s),") && status.contains("held for 1 identity"),
        "{status}"
    );
    assert!(!status.contains(&bob.address), "{status}");
    // A node that hosts nobody's mail refuses as ever.
    let r = alice.send_raw(&alice.address, &bob.address, &enc);
    assert!(r.starts_with("550"), "{r}");

    // (d) bob's node returns and collects both, authenticated by its identity key; hal
    // deletes them once bob has stored them.
    bob.start();
    wait_for(
        Duration::from_secs(60),
        "bob to collect the held mail",
        || {
            bob.count_in_maildir("Kept safe while bob is away") == 1
                && bob.count_in_maildir("body of second") == 1
        },
    );
    wait_for(
        Duration::from_secs(30),
        "hal to delete what bob stored",
        || held_files(&hal).is_empty(),
    );
    let status = hal.status();
    assert!(
        status.contains("mailbox host: 0 message(s), 0 bytes, held for 0 identities"),
        "{status}"
    );
    assert!(alice.status().contains("mailbox host: off"));
    assert!(log_has(&hal, "collector authenticated"), "{}", hal.log());
    // More collection rounds bring no second copy.
    wait_for(Duration::from_secs(30), "another collection round", || {
        bob.log().matches("nothing held").count() >= 2
    });
    assert_eq!(bob.count_in_maildir("Kept safe while bob is away"), 1);
    assert_eq!(bob.count_in_maildir("body of second"), 1);
    let stored = std::fs::read_dir(bob.home.join("identities/bob/Maildir/cur"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .find(|t| t.contains("Kept safe"))
        .unwrap();
    assert!(
        stored.contains("pgp=pass") && stored.contains("policy.encrypted=yes"),
        "{stored}"
    );
}

/// Sends each file as one message from `sender` to `rcpt`, all in one SMTP session; prints
/// one line per message: "OK" or the refusal.
const RAW_MANY: &str = r#"
import smtplib, sys
port, sender, rcpt = sys.argv[1:4]
with smtplib.SMTP('127.0.0.1', int(port)) as s:
    for path in sys.argv[4:]:
        try:
            s.sendmail(sender, [rcpt], open(path, 'rb').read())
            print('OK')
        except smtplib.SMTPException as e:
            print('ERR', e)
"#;

#[test]
fn collection_is_exactly_once_when_the_collector_and_then_the_host_are_killed_midway() {
    let net = Devnet::start(4, "hosts-kill");
    let mut alice = Node::new("alice");
    let mut bob = Node::new("bob");
    let mut hal = Node::new("hal");
    let ledger = net.ledger_toml();
    alice.extra = ledger.clone();
    bob.extra = format!("{ledger}[hosting]\ncollect_every_secs = 0.5\n");
    hal.extra = format!("{ledger}[hosting]\nenabled = true\ncollect_every_secs = 0\n");
    for n in [&alice, &bob, &hal] {
        n.register();
    }
    hosts_cli(&bob, &["--set", hal.onion()]);
    for n in [&mut bob, &mut hal] {
        n.fresh_ports();
    }
    bob.routes = vec![(hal.onion().to_string(), hal.smtp)];
    hal.start();

    // Mail for bob, held by hal while bob's node is down.
    let n = 40;
    let (a_key, b_key) = (alice.openpgp_secret(), bob.openpgp_secret());
    let files: Vec<String> = (0..n)
        .map(|i| {
            let p = hal.home.join(format!("kill{i:02}.eml"));
            let m = message(&alice, &bob, &format!("kill{i:02}"), &a_key, Some(&b_key));
            std::fs::write(&p, held_copy(&alice, &hal, &bob, &m)).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec![
        hal.smtp.to_string(),
        alice.address.clone(),
        bob.address.clone(),
    ];
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python(RAW_MANY, &args);
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), n, "{out}");
    assert_eq!(held_files(&hal).len(), n);
    let collected = |bob: &Node| bob.count_in_maildir("body of kill");

    // The collector is killed in the middle of a collection, then returns.
    bob.start();
    wait_for(Duration::from_secs(60), "bob to collect some", || {
        collected(&bob) >= 3
    });
    bob.kill9();
    let (got, left) = (collected(&bob), held_files(&hal).len());
    assert!(
        left > 0,
        "collection finished before the kill ({got} stored)"
    );
    bob.start();
    // The host is killed in the middle of a later part, then returns.
    wait_for(Duration::from_secs(60), "bob to collect more", || {
        collected(&bob) >= got + 3
    });
    hal.kill9();
    let left = held_files(&hal).len();
    assert!(left > 0, "collection finished before the host was killed");
    hal.start();
    wait_for(
        Duration::from_secs(120),
        "every held message collected",
        || held_files(&hal).is_empty(),
    );
    for i in 0..n {
        assert_eq!(
            bob.count_in_maildir(&format!("body of kill{i:02}\r")),
            1,
            "message {i} stored exactly once"
        );
    }
    assert_eq!(collected(&bob), n);
}

#[test]
fn held_mail_not_collected_in_time_bounces_to_its_sender_from_the_host() {
    let net = Devnet::start(4, "hosts-expiry");
    let mut alice = Node::new("alice");
    let mut bob = Node::new("bob");
    let mut hal = Node::new("hal");
    let ledger = net.ledger_toml();
    alice.queue_extra = "hosts_after_secs = 0\n".into();
    alice.extra = ledger.clone();
    bob.extra = ledger.clone();
    hal.extra = format!("{ledger}[hosting]\nenabled = true\nkeep_secs = 2\n");
    for n in [&alice, &bob, &hal] {
        n.register();
    }
    hosts_cli(&bob, &["--set", hal.onion()]);
    for n in [&mut alice, &mut hal] {
        n.fresh_ports();
    }
    // bob's node never runs: nothing listens on its port.
    alice.routes = vec![
        (bob.onion().to_string(), support::free_port()),
        (hal.onion().to_string(), hal.smtp),
    ];
    hal.routes = vec![(alice.onion().to_string(), alice.smtp)];
    hal.start();
    alice.start();
    submit(
        &alice,
        &bob.address,
        "Never collected",
        "bob never comes back",
    );
    wait_for(Duration::from_secs(60), "the copy at bob's host", || {
        log_has(&alice, "delivered to mailbox host")
    });
    wait_for(Duration::from_secs(60), "the bounce at alice", || {
        alice.count_in_maildir("not collected by the recipient") == 1
    });
    assert!(held_files(&hal).is_empty());
    let bounce = std::fs::read_dir(alice.home.join("identities/alice/Maildir/cur"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .find(|t| t.contains("not collected by the recipient"))
        .unwrap();
    assert!(
        bounce.contains("Undelivered Mail Returned to Sender"),
        "{bounce}"
    );
    assert!(
        bounce.contains(&format!("Final-Recipient: rfc822; {}", bob.address)),
        "{bounce}"
    );
    assert!(bounce.contains("Status: 4.4.7"), "{bounce}");
    // From the host identity, signed by its key bound on the ledger.
    assert!(bounce.contains(&format!("<{}>", hal.address)), "{bounce}");
    assert!(bounce.contains("pgp=pass"), "{bounce}");
    assert_eq!(alice.count_in_maildir("not collected by the recipient"), 1);
}

/// Held-mail figures for BENCHMARKS.md (`cargo bench --bench hosts`): `ONIONPOST_HELD`
/// (default 100) encrypted messages held by a host for an offline recipient; the time from
/// starting the recipient's node until every one is stored in its mailbox and the host holds
/// none, and the part of it until the node listens.
#[allow(dead_code)]
pub fn collection_figures() {
    use std::time::Instant;
    let n: usize = std::env::var("ONIONPOST_HELD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let net = Devnet::start(4, "hosts-bench");
    let mut alice = Node::new("alice");
    let mut bob = Node::new("bob");
    let mut hal = Node::new("hal");
    let ledger = net.ledger_toml();
    alice.extra = ledger.clone();
    bob.extra = format!("{ledger}[hosting]\ncollect_every_secs = 300\n");
    hal.extra = format!("{ledger}[hosting]\nenabled = true\ncollect_every_secs = 0\n");
    for x in [&alice, &bob, &hal] {
        x.register();
    }
    hosts_cli(&bob, &["--set", hal.onion()]);
    for n in [&mut bob, &mut hal] {
        n.fresh_ports();
    }
    bob.routes = vec![(hal.onion().to_string(), hal.smtp)];
    hal.start();
    let (a_key, b_key) = (alice.openpgp_secret(), bob.openpgp_secret());
    let body = "x".repeat(1000);
    let files: Vec<String> = (0..n)
        .map(|i| {
            let p = hal.home.join(format!("bench{i:03}.eml"));
            let clear = format!(
                "From: <{}>\r\nTo: <{}>\r\nSubject: bench{i:03}\r\nMessage-ID: <bench{i:03}@{}>\r\n\r\nbench body {i:03}\r\n{body}\r\n",
                alice.address,
                bob.address,
                alice.onion()
            );
            let m = onionpost_e2e::sign_and_encrypt(
                rand::rngs::OsRng,
                clear.as_bytes(),
                &a_key,
                &[b_key.public()],
                Protect::default(),
            )
            .unwrap();
            std::fs::write(&p, held_copy(&alice, &hal, &bob, &m)).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec![
        hal.smtp.to_string(),
        alice.address.clone(),
        bob.address.clone(),
    ];
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = python(RAW_MANY, &args);
    let held_in = t.elapsed();
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), n, "{out}");
    assert_eq!(held_files(&hal).len(), n);

    let t = Instant::now();
    bob.spawn();
    wait_for(Duration::from_secs(120), "bob listening", || {
        std::net::TcpStream::connect(("127.0.0.1", bob.imap)).is_ok()
    });
    let listening = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while bob.count_in_maildir("bench body ") < n || !held_files(&hal).is_empty() {
        assert!(Instant::now() < deadline, "not all collected");
        std::thread::sleep(Duration::from_millis(10));
    }
    let all = t.elapsed();
    for i in 0..n {
        assert_eq!(bob.count_in_maildir(&format!("bench body {i:03}\r")), 1);
    }
    eprintln!(
        "held {n} messages at the host in {:.0} ms (one SMTP session); recipient start -> listening {:.0} ms; start -> all {n} stored and none held {:.0} ms ({:.1} ms per message after listening)",
        held_in.as_secs_f64() * 1000.0,
        listening.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0,
        (all - listening).as_secs_f64() * 1000.0 / n as f64
    );
}
