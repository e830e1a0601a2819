//! The gateway to ordinary e-mail with real processes: `onionpost-gateway run` and
//! `onionpost-node run` on the direct transport (loopback) and, in one test, on onion
//! services of the private Tor network; clients in Python's smtplib; the outside world of
//! `support/outside.rs` (Postfix, dnsmasq, dkimpy).
//!
//! Every way of getting the gateway to relay for someone it does not serve is tried and
//! must be refused: outside to outside, a participant it does not serve (valid signature),
//! loopback and "onion" connections with no signature (connections are never trusted),
//! header From / envelope sender mismatch, a forged, a redirected and a replayed signature,
//! oversized mail and the rate limit.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "support/mod.rs"]
mod support;
use onionpost_proto::onion::OnionAddress;
use support::direct::Node;
use support::{free_port, python};

/// The binary under test.
const GATEWAY: &str = env!("CARGO_BIN_EXE_onionpost-gateway");

/// A gateway process with its home, key and ports.
struct Gateway {
    _dir: tempfile::TempDir,
    home: PathBuf,
    onion: String,
    participants: u16,
    public: u16,
    /// Configuration appended verbatim (tables of its own: `[limits]`, `[relay]`, ...).
    extra: String,
    /// The `[[participant]]` entries: (name, identity address).
    served: Vec<(String, String)>,
    /// Participants' onion -> their node's loopback SMTP port.
    routes: Vec<(String, u16)>,
    /// The onion transport's `[transport.onion.private]` table instead of the direct
    /// transport: participants reach the gateway's onion service, and it theirs.
    tor: Option<String>,
    /// `[public]` lines besides `listen` (its STARTTLS certificate).
    public_extra: String,
    child: Option<Child>,
}

impl Gateway {
    fn new() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("gw");
        let out = Command::new(GATEWAY)
            .args(["--home", home.to_str().unwrap(), "init"])
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let onion = text
            .lines()
            .find_map(|l| l.strip_prefix("onion: "))
            .unwrap_or_else(|| panic!("no onion in {text}"))
            .trim()
            .to_string();
        Gateway {
            _dir: dir,
            home,
            onion,
            participants: free_port(),
            public: free_port(),
            extra: String::new(),
            served: Vec::new(),
            routes: Vec::new(),
            tor: None,
            public_extra: String::new(),
            child: None,
        }
    }

    fn serve(&mut self, name: &str, node: &Node) {
        self.served.push((name.into(), node.address.clone()));
        self.routes.push((node.onion().into(), node.smtp));
    }

    fn config(&self) -> String {
        let mut c = format!(
            "domain = \"gw.test\"\nhostname = \"mx.gw.test\"\n\
             [public]\nlisten = \"127.0.0.1:{}\"\n{}[participants]\nlisten = \"127.0.0.1:{}\"\nonion = {}\n",
            self.public,
            self.public_extra,
            self.participants,
            self.tor.is_some()
        );
        for (name, address) in &self.served {
            c += &format!("[[participant]]\nname = \"{name}\"\naddress = \"{address}\"\n");
        }
        c += "[queue]\nretry_base_secs = 0.2\nretry_max_secs = 0.5\n";
        c += &self.extra;
        if let Some(tor) = &self.tor {
            return c + "\n[transport]\nkind = \"onion\"\n" + tor;
        }
        c += "\n[transport]\nkind = \"direct\"\n[transport.direct]\n";
        for (onion, port) in &self.routes {
            c += &format!("\"{onion}\" = \"127.0.0.1:{port}\"\n");
        }
        c
    }

    fn start(&mut self) {
        let cfg = self.home.join("gateway.toml");
        fs::write(&cfg, self.config()).unwrap();
        let log = fs::File::create(self.home.join("gateway.log")).unwrap();
        self.child = Some(
            Command::new(GATEWAY)
                .args(["--home", self.home.to_str().unwrap(), "run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.participants)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.public)).is_err()
        {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "gateway not listening ({exited:?}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.home.join("gateway.log")).unwrap_or_default()
    }

    fn queued(&self) -> usize {
        fs::read_dir(self.home.join("spool"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn key(&self) -> [u8; 32] {
        self.onion.parse::<OnionAddress>().unwrap().public_key()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One SMTP transaction with smtplib, replies of each step: `MAIL <code>`, `RCPT <code>`
/// per recipient, `DATA <code> <text>` (or `DATA skipped`).
const TRANSACTION: &str = r#"
import smtplib, sys
port, sender, rcpts, path = sys.argv[1:]
data = open(path, 'rb').read()
s = smtplib.SMTP('127.0.0.1', int(port))
s.ehlo('client.example')
code, msg = s.mail(sender)
print('MAIL', code, msg.decode())
ok = False
for r in rcpts.split(','):
    code, msg = s.rcpt(r)
    print('RCPT', code, msg.decode())
    ok = ok or code == 250
if ok:
    try:
        code, msg = s.data(data)
        print('DATA', code, msg.decode())
    except smtplib.SMTPDataError as e:
        print('DATA', e.smtp_code, e.smtp_error.decode())
else:
    print('DATA skipped')
s.quit()
"#;

fn transaction(port: u16, sender: &str, rcpts: &[&str], data: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), data).unwrap();
    python(
        TRANSACTION,
        &[
            &port.to_string(),
            sender,
            &rcpts.join(","),
            file.path().to_str().unwrap(),
        ],
    )
}

/// The identity's ed25519 key, from its directory.
fn signing_key(node: &Node) -> ed25519_consensus::SigningKey {
    let hexkey = fs::read_to_string(
        node.home
            .join("identities")
            .join(node.name())
            .join("secret.key"),
    )
    .unwrap();
    let seed: [u8; 32] = hex::decode(hexkey.trim()).unwrap().try_into().unwrap();
    ed25519_consensus::SigningKey::from(seed)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn letter(from: &str, to: &str, id: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: test {id}\r\nMessage-ID: <{id}@x.onion>\r\n\r\nbody {id}\r\n"
    )
    .into_bytes()
}

fn signed(node: &Node, gw: &Gateway, rcpts: &[&str], t: u64, m: &[u8]) -> Vec<u8> {
    let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
    onionpost_node::gateway::auth::attach(&signing_key(node), &gw.key(), &rcpts, t, m)
}

#[test]
fn the_participants_listener_relays_for_nobody_it_cannot_verify() {
    let alice = Node::new("alice");
    let carol = Node::new("carol"); // an identity the gateway does not serve
    let mut gw = Gateway::new();
    gw.serve("alice", &alice);
    gw.extra = "[limits]\nburst = 2\nmessages_per_hour = 1\nmax_message_size = 20000\n\
                [relay]\nsmarthost = \"127.0.0.1:9\"\n"
        .into();
    gw.start();
    let p = gw.participants;
    let bob = "bob@example.com";
    let m = letter(&alice.address, bob, "m1");
    let data_reply = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("DATA"))
            .unwrap_or_default()
            .to_string()
    };

    // Outside to outside, from loopback: an open relay would take it.
    let out = transaction(
        p,
        "spammer@example.net",
        &[bob],
        b"From: spammer@example.net\r\n\r\nbuy\r\n",
    );
    assert!(data_reply(&out).starts_with("DATA 550 5.7.1"), "{out}");
    // The participant's own address, unsigned, from 127.0.0.1: loopback proves nothing.
    let out = transaction(p, &alice.address, &[bob], &m);
    assert!(data_reply(&out).starts_with("DATA 530 5.7.0"), "{out}");
    assert!(out.contains("authentication required"), "{out}");
    // Forged: signed by carol's key but claiming alice.
    let forged = onionpost_node::gateway::auth::attach(
        &signing_key(&carol),
        &gw.key(),
        &[bob.to_string()],
        now(),
        &m,
    );
    let out = transaction(p, &alice.address, &[bob], &forged);
    assert!(data_reply(&out).starts_with("DATA 535 5.7.8"), "{out}");
    // Signed for bob, sent to eve too: the envelope is part of what is signed.
    let for_bob = signed(&alice, &gw, &[bob], now(), &m);
    let out = transaction(p, &alice.address, &[bob, "eve@example.org"], &for_bob);
    assert!(data_reply(&out).starts_with("DATA 535 5.7.8"), "{out}");
    // Replayed an hour later (the window is 600 s).
    let old = signed(&alice, &gw, &[bob], now() - 3600, &m);
    let out = transaction(p, &alice.address, &[bob], &old);
    assert!(data_reply(&out).starts_with("DATA 535 5.7.8"), "{out}");
    assert!(out.contains("outside this gateway's window"), "{out}");
    // Signed for another gateway.
    let elsewhere = onionpost_node::gateway::auth::attach(
        &signing_key(&alice),
        &[7; 32],
        &[bob.to_string()],
        now(),
        &m,
    );
    let out = transaction(p, &alice.address, &[bob], &elsewhere);
    assert!(data_reply(&out).starts_with("DATA 535 5.7.8"), "{out}");
    // A valid signature of an identity the gateway does not serve.
    let cm = letter(&carol.address, bob, "c1");
    let out = transaction(
        p,
        &carol.address,
        &[bob],
        &signed(&carol, &gw, &[bob], now(), &cm),
    );
    assert!(data_reply(&out).starts_with("DATA 550 5.7.1"), "{out}");
    assert!(
        out.contains("not a participant this gateway serves"),
        "{out}"
    );
    // Header From is someone else than the (verified) envelope sender.
    let spoof = letter("ceo@example.com", bob, "s1");
    let out = transaction(
        p,
        &alice.address,
        &[bob],
        &signed(&alice, &gw, &[bob], now(), &spoof),
    );
    assert!(data_reply(&out).starts_with("DATA 550 5.7.1"), "{out}");
    assert!(
        out.contains("header From must be exactly the envelope sender"),
        "{out}"
    );
    // Onion recipients are not the gateway's business.
    let out = transaction(p, &alice.address, &[&carol.address], &m);
    assert!(
        out.contains("RCPT 550 5.1.2") && out.contains("DATA skipped"),
        "{out}"
    );
    // Oversized (the limit is 20000 bytes): refused whatever the signature.
    let mut big = letter(&alice.address, bob, "big");
    big.extend(std::iter::repeat_n(b'x', 30_000));
    big.extend_from_slice(b"\r\n");
    let out = transaction(
        p,
        &alice.address,
        &[bob],
        &signed(&alice, &gw, &[bob], now(), &big),
    );
    assert!(data_reply(&out).starts_with("DATA 552 5.3.4"), "{out}");
    assert_eq!(gw.queued(), 0, "nothing refused was queued");

    // The rate limit: a burst of 2, then 451 4.7.1 (temporary: the node retries later).
    for i in 0..2 {
        let mi = letter(&alice.address, bob, &format!("r{i}"));
        let out = transaction(
            p,
            &alice.address,
            &[bob],
            &signed(&alice, &gw, &[bob], now(), &mi),
        );
        assert!(
            data_reply(&out).starts_with("DATA 250"),
            "{out}\n{}",
            gw.log()
        );
    }
    // The same message again (a replay within the window, or a retry after a lost 250):
    // 250 and not queued twice; it costs no token.
    let again = letter(&alice.address, bob, "r0");
    let out = transaction(
        p,
        &alice.address,
        &[bob],
        &signed(&alice, &gw, &[bob], now(), &again),
    );
    assert!(data_reply(&out).starts_with("DATA 250"), "{out}");
    let mi = letter(&alice.address, bob, "r2");
    let out = transaction(
        p,
        &alice.address,
        &[bob],
        &signed(&alice, &gw, &[bob], now(), &mi),
    );
    assert!(data_reply(&out).starts_with("DATA 451 4.7.1"), "{out}");
    assert!(out.contains("rate limit"), "{out}");
    assert_eq!(
        gw.queued(),
        2,
        "exactly the two messages within the rate:\n{}",
        gw.log()
    );
}

#[test]
fn the_public_listener_takes_mail_for_served_names_of_its_domain_only() {
    let alice = Node::new("alice");
    let mut gw = Gateway::new();
    gw.serve("alice", &alice);
    gw.extra = "[dns]\nnameservers = [\"127.0.0.1:9\"]\n".into();
    gw.start();
    let m = b"From: <x@example.net>\r\nSubject: hi\r\n\r\nhi\r\n";
    // From loopback, which Postfix's default mynetworks would trust.
    for (rcpt, want) in [
        ("bob@example.com", "RCPT 554 5.7.1"),
        (alice.address.as_str(), "RCPT 554 5.7.1"),
        ("nobody@gw.test", "RCPT 550 5.1.1"),
        ("alice@gw.test.evil.example", "RCPT 554 5.7.1"),
    ] {
        let out = transaction(gw.public, "x@example.net", &[rcpt], m);
        assert!(
            out.contains(want) && out.contains("DATA skipped"),
            "{rcpt}: {out}"
        );
    }
    let out = transaction(gw.public, "x@example.net", &["bob@example.com"], m);
    assert!(out.contains("relaying denied"), "{out}");
    assert_eq!(gw.queued(), 0);
}

// ---------------------------------------------------------------------------------------
// With the outside world: Postfix, dnsmasq and dkimpy (support/outside.rs).

use support::outside::{DkimAlgorithm, DkimKey, Dns, PostfixConfig, Zone, dkim_sign, dkim_verify};

const LIMIT: Duration = Duration::from_secs(60);

/// alice's node and a gateway serving her, wired to `dns` and the outside MX on `mx_port`,
/// signing with `key`.
fn world(dns: &Dns, mx_port: u16, key: &DkimKey, starttls: bool) -> (Node, Gateway) {
    let mut alice = Node::new("alice");
    let mut gw = Gateway::new();
    let pem = gw.home.join("dkim.pem");
    fs::create_dir_all(&gw.home).unwrap();
    fs::write(&pem, &key.pkcs8_pem).unwrap();
    gw.serve("alice", &alice);
    gw.extra = format!(
        "[dkim]\nselector = \"{}\"\nkey = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\
         [relay]\nmx_port = {mx_port}\nstarttls = \"{}\"\n",
        key.selector,
        pem.display(),
        dns.port(),
        if starttls { "opportunistic" } else { "never" }
    );
    alice.extra = format!("[gateway]\nonion = \"{}\"\n", gw.onion);
    alice.routes.push((gw.onion.clone(), gw.participants));
    gw.start();
    alice.start();
    (alice, gw)
}

fn gateway_zone(key: &DkimKey) -> Zone {
    Zone::new()
        .mail_domain("outside.test")
        .mail_domain("gw.test")
        .spf("gw.test", "ip4:127.0.0.1 -all")
        .dkim(key)
        .dmarc("gw.test", "p=reject")
}

#[test]
fn a_participant_writes_to_postfix_through_the_gateway_signed_and_scrubbed() {
    let key = DkimKey::generate(DkimAlgorithm::Rsa, "gw.test", "og");
    let dns = Dns::start(&gateway_zone(&key));
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@outside.test")
        .tls()
        .start();
    let (alice, gw) = world(&dns, postfix.port(), &key, true);

    // Through alice's own node: submission (with a leaky client), queue, gateway.
    support::direct::submit(
        &alice,
        "bob@outside.test",
        "hello outside",
        "written on an onion",
    );
    let got = postfix.wait_for_message("bob@outside.test", "hello outside", LIMIT);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains("From: <alice@gw.test>"), "{text}");
    assert!(text.contains("Return-Path: <alice@gw.test>"), "{text}");
    assert!(text.contains("written on an onion"), "{text}");
    for leak in [
        ".onion",
        alice.onion(),
        "LeakyClient",
        "192.0.2.7",
        "my-laptop",
        "Onionpost",
        "Autocrypt",
    ] {
        assert!(!text.contains(leak), "{leak} leaked:\n{text}");
    }
    assert!(
        text.contains("with ESMTPS"),
        "STARTTLS was offered and used:\n{text}"
    );
    let v = dkim_verify(&got, &dns);
    assert!(v.pass, "dkimpy: {v:?}\n{text}");
    assert_eq!(v.domain.as_deref(), Some("gw.test"));
    assert_eq!(gw.queued(), 0, "delivered and removed:\n{}", gw.log());
}

#[test]
fn a_permanent_refusal_outside_comes_back_to_the_participant_as_a_dsn() {
    let key = DkimKey::generate(DkimAlgorithm::Ed25519, "gw.test", "og");
    let dns = Dns::start(&gateway_zone(&key));
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@outside.test")
        .start();
    let (alice, gw) = world(&dns, postfix.port(), &key, false);
    support::direct::submit(&alice, "nobody@outside.test", "lost letter", "to nobody");
    support::wait_for(LIMIT, "the DSN in alice's INBOX", || {
        alice.count_in_maildir("Undelivered Mail Returned to Sender") == 1
    });
    let dsn = stored_text(&alice, "Undelivered Mail Returned to Sender");
    assert!(dsn.contains("nobody@outside.test"), "{dsn}");
    assert!(
        dsn.contains("5.1.1"),
        "Postfix's refusal is reported:\n{dsn}"
    );
    assert!(!gw.log().contains("no longer served"), "{}", gw.log());
}

#[test]
fn postfix_delivers_to_a_participant_through_the_gateway_with_its_checks_recorded() {
    let gw_key = DkimKey::generate(DkimAlgorithm::Rsa, "gw.test", "og");
    let out_key = DkimKey::generate(DkimAlgorithm::Rsa, "outside.test", "s1");
    let zone = gateway_zone(&gw_key)
        .spf("outside.test", "ip4:127.0.0.1 -all")
        .dkim(&out_key)
        .dmarc("outside.test", "p=reject")
        .spf("spoof.test", "ip4:192.0.2.1 -all")
        .dmarc("spoof.test", "p=reject");
    let dns = Dns::start(&zone);
    let gw_public = free_port();
    // Postfix is the outside sender's MTA: it relays gw.test to the gateway's public port.
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("carol@outside.test")
        .relay("gw.test", gw_public)
        .start();
    let mut alice = Node::new("alice");
    let mut gw = Gateway::new();
    gw.public = gw_public;
    gw.serve("alice", &alice);
    gw.extra = format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.port());
    alice.extra = format!("[gateway]\nonion = \"{}\"\n", gw.onion);
    alice.routes.push((gw.onion.clone(), gw.participants));
    gw.start();
    alice.start();

    let m = b"From: Carol <carol@outside.test>\r\nTo: alice@gw.test\r\nSubject: from the internet\r\n\
              Message-ID: <c1@outside.test>\r\nAuthentication-Results: mx.gw.test; dmarc=pass\r\n\r\nhello alice\r\n";
    let signed = dkim_sign(m, &out_key, &["From", "To", "Subject", "Message-ID"]);
    assert_eq!(
        postfix.send("carol@outside.test", &["alice@gw.test"], &signed),
        "OK"
    );
    support::wait_for(LIMIT, "carol's message in alice's INBOX", || {
        alice.count_in_maildir("from the internet") == 1
    });
    let stored = stored_text(&alice, "from the internet");
    assert!(stored.contains("hello alice"), "{stored}");
    let ar = gateway_results(&stored);
    assert!(ar.contains("mx.gw.test"), "{stored}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("dkim=pass"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert!(
        !stored.contains("Authentication-Results: mx.gw.test; dmarc=pass"),
        "the field the sender forged is gone:\n{stored}"
    );
    assert_eq!(
        stored.matches("Authentication-Results: mx.gw.test").count(),
        1
    );

    // A spoofed domain from an address its SPF does not allow, unsigned: recorded as failing.
    let spoof =
        b"From: <ceo@spoof.test>\r\nTo: alice@gw.test\r\nSubject: urgent wire\r\n\r\npay\r\n";
    assert_eq!(
        postfix.send("ceo@spoof.test", &["alice@gw.test"], spoof),
        "OK"
    );
    support::wait_for(LIMIT, "the spoof in alice's INBOX", || {
        alice.count_in_maildir("urgent wire") == 1
    });
    let ar = gateway_results(&stored_text(&alice, "urgent wire"));
    assert!(ar.contains("spf=fail") && ar.contains("dmarc=fail"), "{ar}");
    // An unknown name: the gateway refuses it to Postfix, which bounces to carol.
    assert_eq!(
        postfix.send("carol@outside.test", &["nobody@gw.test"], m),
        "OK"
    );
    let bounce = postfix.wait_for_message("carol@outside.test", "Undelivered Mail", LIMIT);
    let bounce = String::from_utf8_lossy(&bounce);
    assert!(
        bounce.contains("nobody@gw.test") && bounce.contains("550 5.1.1"),
        "{bounce}"
    );
}

fn stored_text(node: &Node, needle: &str) -> String {
    let cur = node
        .home
        .join("identities")
        .join(node.name())
        .join("Maildir/cur");
    fs::read_dir(cur)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .find(|t| t.contains(needle))
        .unwrap_or_else(|| panic!("no stored message with {needle}"))
}

/// The gateway's Authentication-Results field of a stored message (unfolded).
fn gateway_results(stored: &str) -> String {
    let head = stored.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .find(|l| l.starts_with("Authentication-Results: mx.gw.test"))
        .unwrap_or_else(|| panic!("no gateway Authentication-Results in\n{stored}"))
        .to_string()
}

#[test]
fn queued_mail_survives_a_killed_gateway_and_leaves_when_the_mx_answers() {
    let key = DkimKey::generate(DkimAlgorithm::Rsa, "gw.test", "og");
    let dns = Dns::start(&gateway_zone(&key));
    let mx_port = free_port(); // nothing listens there yet: the MX is down
    let (alice, mut gw) = world(&dns, mx_port, &key, false);
    support::direct::submit(
        &alice,
        "bob@outside.test",
        "patience",
        "kept through a crash",
    );
    support::wait_for(LIMIT, "the message in the gateway's queue", || {
        gw.queued() == 1
    });
    support::wait_for(LIMIT, "a failed attempt", || {
        gw.log().contains("rescheduled") || gw.log().contains("mail host failed")
    });
    // SIGKILL: no chance to flush anything that was not already durable.
    let mut child = gw.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(gw.queued(), 1);
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@outside.test")
        .start_on(mx_port);
    gw.start();
    let got = postfix.wait_for_message("bob@outside.test", "patience", LIMIT);
    assert!(String::from_utf8_lossy(&got).contains("kept through a crash"));
    support::wait_for(LIMIT, "the queue to empty", || gw.queued() == 0);
    assert_eq!(
        postfix.messages("bob@outside.test").len(),
        1,
        "exactly once"
    );
}

/// The header field names of a message, in order.
fn field_names(m: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(m);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    head.lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect()
}

#[test]
fn two_identities_of_one_node_leave_the_gateway_unlinked() {
    let key = DkimKey::generate(DkimAlgorithm::Ed25519, "gw.test", "og");
    let dns = Dns::start(&gateway_zone(&key));
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@outside.test")
        .start();
    let mut alice = Node::new("alice");
    let out = alice.cli(&["identity", "new", "zoe"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    let (zoe, zoe_pw) = (field("address:"), field("password:"));
    let zoe_onion = zoe.split_once('@').unwrap().1.to_string();
    let mut gw = Gateway::new();
    let pem = gw.home.join("dkim.pem");
    fs::write(&pem, &key.pkcs8_pem).unwrap();
    gw.serve("alice", &alice);
    gw.served.push(("zoe".into(), zoe.clone()));
    gw.routes.push((zoe_onion.clone(), alice.smtp));
    gw.extra = format!(
        "[dkim]\nselector = \"og\"\nkey = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\
         [relay]\nmx_port = {}\nstarttls = \"never\"\n",
        pem.display(),
        dns.port(),
        postfix.port()
    );
    alice.extra = format!("[gateway]\nonion = \"{}\"\n", gw.onion);
    alice.routes.push((gw.onion.clone(), gw.participants));
    gw.start();
    alice.start();
    support::direct::submit(&alice, "bob@outside.test", "from alice", "one");
    support::submit(
        alice.submission,
        &zoe,
        &zoe_pw,
        "bob@outside.test",
        "from zoe",
        "two",
    );
    let a = postfix.wait_for_message("bob@outside.test", "from alice", LIMIT);
    let z = postfix.wait_for_message("bob@outside.test", "from zoe", LIMIT);
    let (ta, tz) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&z));
    assert!(ta.contains("From: <alice@gw.test>") && tz.contains("From: <zoe@gw.test>"));
    for (t, other) in [(&ta, "zoe"), (&tz, "alice")] {
        assert!(!t.contains(".onion"), "{t}");
        assert!(!t.contains(&format!("{other}@")), "names {other}:\n{t}");
    }
    // The same fields in the same order: nothing in the shape of one tells it apart.
    assert_eq!(field_names(&a), field_names(&z));
    for v in [&a, &z] {
        assert!(dkim_verify(v, &dns).pass);
    }
}

/// Kills a process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `node` with the onion transport on `net` and `gateway` as its gateway; waits until
/// its submission port answers.
fn run_over_tor(node: &Node, tor: &str, gateway: &str) -> Running {
    let cfg = format!(
        "[submission]\nlisten = \"127.0.0.1:{}\"\n[imap]\nlisten = \"127.0.0.1:{}\"\n\
         [queue]\nretry_base_secs = 1.0\nretry_max_secs = 4.0\n\
         [gateway]\nonion = \"{gateway}\"\n[transport]\nkind = \"onion\"\n{tor}",
        node.submission, node.imap
    );
    let path = node.home.join("node.toml");
    fs::write(&path, cfg).unwrap();
    let log = fs::File::create(node.home.join("node.log")).unwrap();
    let child = Command::new(support::direct::BIN)
        .args(["--home", node.home.to_str().unwrap(), "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info,onionpost_node=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let running = Running(child);
    support::wait_for(
        Duration::from_secs(20),
        "the node's submission port",
        || std::net::TcpStream::connect(("127.0.0.1", node.submission)).is_ok(),
    );
    running
}

#[test]
fn over_onion_services_both_ways_and_only_for_served_identities() {
    let net = onionpost_devnet::tor::TorNetwork::shared();
    let tor = net.node_config_toml();
    let key = DkimKey::generate(DkimAlgorithm::Rsa, "gw.test", "og");
    let zone = gateway_zone(&key)
        .spf("outside.test", "ip4:127.0.0.1 -all")
        .dmarc("outside.test", "p=none");
    let dns = Dns::start(&zone);
    let gw_public = free_port();
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@outside.test")
        .relay("gw.test", gw_public)
        .start();
    let alice = Node::new("alice");
    let carol = Node::new("carol"); // has the gateway configured, but is not served by it
    let mut gw = Gateway::new();
    gw.public = gw_public;
    let pem = gw.home.join("dkim.pem");
    fs::write(&pem, &key.pkcs8_pem).unwrap();
    gw.serve("alice", &alice);
    gw.tor = Some(tor.clone());
    gw.extra = format!(
        "[dkim]\nselector = \"og\"\nkey = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\
         [relay]\nmx_port = {}\nstarttls = \"never\"\n",
        pem.display(),
        dns.port(),
        postfix.port()
    );
    gw.start();
    let _a = run_over_tor(&alice, &tor, &gw.onion);
    let _c = run_over_tor(&carol, &tor, &gw.onion);
    let slow = Duration::from_secs(240);

    // alice -> her node -> Tor -> the gateway's onion service -> Postfix.
    support::direct::submit(&alice, "bob@outside.test", "over tor", "via the onion");
    let got = postfix.wait_for_message("bob@outside.test", "over tor", slow);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.contains("From: <alice@gw.test>") && !text.contains(".onion"),
        "{text}"
    );
    assert!(dkim_verify(&got, &dns).pass, "{text}");
    // carol signs as well as alice does, over the same onion service, but is not served:
    // refused (550 5.7.1), so her node bounces it to her.
    support::direct::submit(&carol, "bob@outside.test", "not served", "let me out");
    support::wait_for(slow, "carol's bounce", || {
        carol.count_in_maildir("not a participant this gateway serves") == 1
    });
    // The internet -> Postfix -> the gateway -> Tor -> alice's onion service.
    let m =
        b"From: <dan@outside.test>\r\nTo: <alice@gw.test>\r\nSubject: reply over tor\r\n\r\nhi\r\n";
    assert_eq!(
        postfix.send("dan@outside.test", &["alice@gw.test"], m),
        "OK"
    );
    support::wait_for(slow, "dan's message in alice's INBOX", || {
        alice.count_in_maildir("reply over tor") == 1
    });
    let stored = stored_text(&alice, "reply over tor");
    assert!(gateway_results(&stored).contains("spf=pass"), "{stored}");
    assert_eq!(
        postfix.messages("bob@outside.test").len(),
        1,
        "carol's never left"
    );

    // A Tor client of the test's own, unsigned, claiming to be alice: an onion connection
    // proves nothing either.
    let m = letter(&alice.address, "bob@outside.test", "u1");
    let replies = unsigned_over_tor(&tor, &gw.onion, &alice.address, &m);
    assert!(
        replies.last().unwrap().starts_with("530 5.7.0"),
        "{replies:?}"
    );
    assert_eq!(postfix.messages("bob@outside.test").len(), 1);
}

/// One unsigned transaction to `onion`'s port 25 through a Tor client of the test's own on
/// the network of `tor` (its `[transport.onion.private]` table): the reply of every step.
fn unsigned_over_tor(tor: &str, onion: &str, from: &str, data: &[u8]) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let cfg =
        onionpost_node::config::Config::parse(&format!("[transport]\nkind = \"onion\"\n{tor}"))
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
        let started = std::time::Instant::now();
        let stream = loop {
            match client.connect((onion, 25)).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < Duration::from_secs(120) => {
                    eprintln!("{onion}: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => panic!("{onion} unreachable: {e}"),
            }
        };
        let mut s = BufReader::new(stream);
        let mut body = data.to_vec();
        body.extend_from_slice(b".\r\n");
        let steps: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"EHLO probe\r\n".to_vec(),
            format!("MAIL FROM:<{from}>\r\n").into_bytes(),
            b"RCPT TO:<bob@outside.test>\r\n".to_vec(),
            b"DATA\r\n".to_vec(),
            body,
        ];
        let mut replies = Vec::new();
        for bytes in steps {
            if !bytes.is_empty() {
                s.get_mut().write_all(&bytes).await.unwrap();
                s.get_mut().flush().await.unwrap();
            }
            loop {
                let mut l = String::new();
                s.read_line(&mut l).await.unwrap();
                if l.as_bytes().get(3) != Some(&b'-') {
                    replies.push(l.trim_end().to_string());
                    break;
                }
            }
        }
        replies
    })
}

#[test]
fn a_domain_without_mx_gets_its_address_and_a_missing_domain_bounces_at_once() {
    let key = DkimKey::generate(DkimAlgorithm::Rsa, "gw.test", "og");
    // plain.test has an address record and no MX (RFC 5321 5.1: it is its own mail host);
    // nowhere.test does not exist (dnsmasq answers NXDOMAIN for names it does not hold).
    let zone = gateway_zone(&key).a("plain.test", std::net::Ipv4Addr::LOCALHOST);
    let dns = Dns::start(&zone);
    let postfix = PostfixConfig::new("mx.outside.test")
        .mailbox("bob@plain.test")
        .start();
    let (alice, gw) = world(&dns, postfix.port(), &key, false);
    support::direct::submit(&alice, "bob@plain.test", "no mx here", "still arrives");
    postfix.wait_for_message("bob@plain.test", "no mx here", LIMIT);
    support::direct::submit(&alice, "x@nowhere.test", "into the void", "no such domain");
    support::wait_for(LIMIT, "the DSN for nowhere.test", || {
        alice.count_in_maildir("does not exist") == 1
    });
    let dsn = stored_text(&alice, "does not exist");
    assert!(
        dsn.contains("x@nowhere.test") && dsn.contains("5.1.2"),
        "{dsn}"
    );
    support::wait_for(LIMIT, "the gateway's queue to empty", || gw.queued() == 0);
}

#[test]
fn the_public_listener_offers_starttls_and_records_it() {
    let mut alice = Node::new("alice");
    let mut gw = Gateway::new();
    let (cert, key) = (gw.home.join("cert.pem"), gw.home.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg("/CN=mx.gw.test")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    gw.public_extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    gw.serve("alice", &alice);
    let dns = Dns::start(&Zone::new().spf("outside.test", "ip4:127.0.0.1 -all"));
    gw.extra = format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.port());
    alice.extra = format!("[gateway]\nonion = \"{}\"\n", gw.onion);
    alice.routes.push((gw.onion.clone(), gw.participants));
    gw.start();
    alice.start();
    let m = |s: &str| {
        format!("From: <dan@outside.test>\r\nTo: <alice@gw.test>\r\nSubject: {s}\r\n\r\nhi\r\n")
    };
    let sent = support::outside::smtp_send(
        gw.public,
        true,
        "dan@outside.test",
        &["alice@gw.test"],
        m("over tls").as_bytes(),
    );
    assert_eq!(sent, "OK");
    let plain = support::outside::smtp_send(
        gw.public,
        false,
        "dan@outside.test",
        &["alice@gw.test"],
        m("in clear").as_bytes(),
    );
    assert_eq!(plain, "OK");
    support::wait_for(LIMIT, "both in alice's INBOX", || {
        alice.count_in_maildir("over tls") == 1 && alice.count_in_maildir("in clear") == 1
    });
    let tls = stored_text(&alice, "over tls");
    assert!(tls.contains("by mx.gw.test with ESMTPS;"), "{tls}");
    let clear = stored_text(&alice, "in clear");
    assert!(clear.contains("by mx.gw.test with ESMTP;"), "{clear}");
    // Relaying is refused over TLS as well.
    let relay = support::outside::smtp_send(
        gw.public,
        true,
        "dan@outside.test",
        &["bob@example.com"],
        m("relay").as_bytes(),
    );
    assert!(relay.starts_with("554"), "{relay}");
}
