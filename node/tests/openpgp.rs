//! End-to-end OpenPGP between nodes, with real processes: a 4-validator devnet
//! (`onionpost-ledger validator`), nodes (`onionpost-node run`, direct transport on loopback)
//! whose identities are registered and whose OpenPGP keys are bound on the ledger by
//! `onionpost-node identity register`, mail submitted with Python's smtplib and read with
//! imaplib, a tap between the nodes that records what goes on the wire, forged mail sent
//! straight to a node's SMTP port, and GnuPG given the key as read (verified) from the ledger.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::direct::{Node, submit};
use support::ledger::{Devnet, rt, tx_as};
use support::{python, wait_for};

use onionpost_e2e::{Protect, SecretCert};
use onionpost_ledger_client::{At, Config, Genesis, GrpcLedger, Ledger, RootPolicy};

/// Records every byte a client sends to `to` (a node's SMTP port) on the way through.
struct Tap {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn new(to: u16) -> Tap {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                if server.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = server.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Write);
                });
            }
        });
        Tap { port, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// imaplib: per INBOX message one line `SUBJECT|FLAGS|AUTHENTICATION-RESULTS|KEY-CHANGE|BODY`, then
/// the `SEARCH KEYWORD $Verified` answer.
const IMAP_FLAGS: &str = r#"
import imaplib, sys, email, email.policy
port, user, pw = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
typ, data = M.select('INBOX')
assert typ == 'OK', data
typ, data = M.search(None, 'ALL')
for num in data[0].split():
    typ, f = M.fetch(num, '(FLAGS)')
    flags = ' '.join(x.decode() for x in imaplib.ParseFlags(f[0]))
    typ, msg = M.fetch(num, '(BODY.PEEK[])')
    m = email.message_from_bytes(msg[0][1], policy=email.policy.default)
    body = m.get_body(('plain',))
    body = (body.get_content().strip() if body else '').replace('\r', '').replace('\n', ' ')
    ar = ' '.join(str(m['Authentication-Results'] or '').split())
    kc = ' '.join(str(m['Onionpost-Key-Change'] or '').split())
    print('MSG ' + str(m['Subject']) + '|' + flags + '|' + ar + '|' + kc + '|' + body)
typ, data = M.search(None, 'KEYWORD', '$Verified')
print('VERIFIED=' + data[0].decode())
M.logout()
"#;

/// One INBOX message as IMAP shows it.
#[derive(Debug)]
struct Seen {
    subject: String,
    flags: String,
    results: String,
    key_change: String,
    body: String,
}

fn inbox(node: &Node) -> (Vec<Seen>, String) {
    let out = python(
        IMAP_FLAGS,
        &[&node.imap.to_string(), &node.address, &node.password],
    );
    let mut msgs = Vec::new();
    let mut verified = String::new();
    for line in out.lines() {
        if let Some(m) = line.strip_prefix("MSG ") {
            let p: Vec<&str> = m.splitn(5, '|').collect();
            msgs.push(Seen {
                subject: p[0].into(),
                flags: p[1].into(),
                results: p[2].into(),
                key_change: p[3].into(),
                body: p[4].into(),
            });
        } else if let Some(v) = line.strip_prefix("VERIFIED=") {
            verified = v.to_string();
        }
    }
    (msgs, verified)
}

fn one<'a>(msgs: &'a [Seen], subject: &str) -> &'a Seen {
    let found: Vec<&Seen> = msgs.iter().filter(|m| m.subject == subject).collect();
    assert_eq!(found.len(), 1, "one {subject:?} in {msgs:#?}");
    found[0]
}

/// The OpenPGP key bound to `node`'s identity, read from the ledger with a verified proof
/// (certified by the validators of genesis).
fn key_from_ledger(net: &Devnet, node: &Node) -> Vec<u8> {
    let genesis = Genesis::load(&net.genesis()).unwrap();
    let cfg = Config::new(
        (0..net.m.validators.len()).map(|i| net.url(i)).collect(),
        RootPolicy::Certified(genesis),
    );
    let ledger = GrpcLedger::new(cfg).unwrap();
    let who = node
        .onion()
        .parse::<onionpost_proto::onion::OnionAddress>()
        .unwrap()
        .public_key();
    let v = rt().block_on(ledger.identity(&who, At::Latest)).unwrap();
    v.value
        .expect("registered")
        .active_key()
        .expect("a key is bound")
        .public_key
        .clone()
}

/// GnuPG in a temporary home.
struct Gpg(tempfile::TempDir);

impl Gpg {
    fn new() -> Gpg {
        let d = tempfile::tempdir().unwrap();
        let mut perms = std::fs::metadata(d.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(d.path(), perms).unwrap();
        Gpg(d)
    }

    /// gpg in this home, unattended, with status lines on stderr.
    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.0.path()).args([
            "--batch",
            "--yes",
            "--no-tty",
            "--trust-model",
            "always",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--status-fd",
            "2",
        ]);
        c
    }

    fn run(&self, args: &[&str], file: &Path) -> (bool, String, String) {
        let out = self
            .cmd()
            .args(args)
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .expect("gpg must be installed (scripts/test.sh: gnupg)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs gpg with `args`; its stdout, failing the test on an error.
    fn output(&self, args: &[&str]) -> Vec<u8> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("gpg must be installed (scripts/test.sh: gnupg)");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn import(&self, bytes: &[u8]) {
        let p = self.0.path().join(format!("k{}", rand::random::<u32>()));
        std::fs::write(&p, bytes).unwrap();
        let (ok, _, err) = self.run(&["--import"], &p);
        assert!(ok, "gpg --import: {err}");
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.0.path())
            .args(["--kill", "all"])
            .output();
    }
}

/// The last armored OpenPGP message in `text`.
fn last_pgp_message(text: &str) -> String {
    let start = text
        .rfind("-----BEGIN PGP MESSAGE-----")
        .expect("an OpenPGP message");
    let end = text[start..].find("-----END PGP MESSAGE-----").unwrap() + start;
    text[start..end + "-----END PGP MESSAGE-----".len()].to_string() + "\r\n"
}

/// Two nodes with bound keys; A's mail to B goes through a tap.
fn pair(net: &Devnet) -> (Node, Node, Tap) {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    for n in [&mut a, &mut b] {
        n.extra = net.ledger_toml();
    }
    a.register();
    b.register();
    // Registration takes a while: fresh ports now, then the routes.
    for n in [&mut a, &mut b] {
        n.fresh_ports();
    }
    let tap = Tap::new(b.smtp);
    a.routes = vec![(b.onion().to_string(), tap.port)];
    b.routes = vec![(a.onion().to_string(), a.smtp)];
    (a, b, tap)
}

#[test]
fn mail_between_bound_keys_is_encrypted_on_the_wire_verified_and_readable() {
    let net = Devnet::start(4, "e2e-mail");
    let (mut a, mut b, tap) = pair(&net);
    a.start();
    b.start();

    submit(&a, &b.address, "Encrypted hello", "Attack at dawn");
    wait_for(Duration::from_secs(60), "the message at B", || {
        b.count_in_maildir("Attack at dawn") == 1
    });
    let wire = tap.text();
    assert!(wire.contains("multipart/encrypted"), "{wire}");
    assert!(wire.contains("-----BEGIN PGP MESSAGE-----"), "{wire}");
    assert!(wire.contains("Autocrypt: addr="), "{wire}");
    assert!(
        !wire.contains("Attack at dawn"),
        "the body went in clear: {wire}"
    );
    assert!(
        !wire.contains("Encrypted hello"),
        "the Subject went in clear: {wire}"
    );

    let a_key = a.openpgp_secret();
    let (msgs, verified) = inbox(&b);
    let m = one(&msgs, "Encrypted hello");
    assert_eq!(m.body, "Attack at dawn");
    assert!(
        m.flags.contains("$Verified") && m.flags.contains("$Encrypted"),
        "{m:?}"
    );
    assert!(!m.flags.contains("$Unverified"), "{m:?}");
    for want in [
        format!("{}; pgp=pass", b.onion()),
        format!("header.from={}", a.address),
        format!("policy.cert={}", a_key.fingerprint()),
        "policy.ledger-height=".into(),
        "policy.encrypted=yes".into(),
    ] {
        assert!(m.results.contains(&want), "{want} not in {}", m.results);
    }
    assert_eq!(verified, "1");

    // GnuPG, given A's key as bound on the ledger and B's secret key, decrypts and verifies
    // what A's node put on the wire.
    let bound = key_from_ledger(&net, &a);
    assert_eq!(
        onionpost_e2e::PublicCert::from_bytes(&bound)
            .unwrap()
            .fingerprint(),
        a_key.fingerprint(),
        "the ledger binds A's key"
    );
    let gpg = Gpg::new();
    gpg.import(&bound);
    gpg.import(&b.openpgp_secret().to_bytes().unwrap());
    let msg = b.home.join("wire.asc");
    std::fs::write(&msg, last_pgp_message(&wire)).unwrap();
    let (ok, plain, status) = gpg.run(&["--decrypt"], &msg);
    assert!(ok, "{status}");
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert!(
        status.contains(&format!("[GNUPG:] VALIDSIG {}", a_key.fingerprint())),
        "{status}"
    );
    assert!(plain.contains("Attack at dawn") && plain.contains("Subject: Encrypted hello"));

    // A forged From: unsigned mail claiming A's bound address, straight to B's SMTP port.
    let forged = format!(
        "From: {}\r\nTo: {}\r\nSubject: Forged\r\nMessage-ID: <forged@x>\r\n\
         Authentication-Results: {}; pgp=pass\r\n\r\nSend money\r\n",
        a.address,
        b.address,
        b.onion()
    );
    assert_eq!(b.send_raw(&a.address, &b.address, forged.as_bytes()), "OK");
    // Signed by a key that is not A's bound key, claiming A's address.
    let mallory = SecretCert::generate(rand::rngs::OsRng, &a.address).unwrap();
    let fake = onionpost_e2e::sign(
        rand::rngs::OsRng,
        format!(
            "From: {}\r\nTo: {}\r\nSubject: Forged signed\r\nMessage-ID: <forged2@x>\r\n\r\nSend more\r\n",
            a.address, b.address
        )
        .as_bytes(),
        &mallory,
        Protect::default(),
    )
    .unwrap();
    assert_eq!(b.send_raw(&a.address, &b.address, &fake), "OK");
    let (msgs, verified) = inbox(&b);
    for (subject, result) in [("Forged", "pgp=none"), ("Forged signed", "pgp=fail")] {
        let m = one(&msgs, subject);
        assert!(m.flags.contains("$Unverified"), "{m:?}");
        assert!(!m.flags.contains("$Verified"), "{m:?}");
        assert!(m.results.contains(result), "{m:?}");
        assert!(
            !m.results.contains("pgp=pass"),
            "only the node's own results: {m:?}"
        );
    }
    assert_eq!(verified, "1", "still only the real one");

    // Key history: A rotates; mail signed by A's earlier key while it was bound still
    // verifies, and A's node now signs with the new key.
    let old = a_key;
    let by_old = onionpost_e2e::sign(
        rand::rngs::OsRng,
        format!(
            "From: {}\r\nTo: {}\r\nSubject: Signed before the rotation\r\nMessage-ID: <old@x>\r\n\r\nold key\r\n",
            a.address, b.address
        )
        .as_bytes(),
        &old,
        Protect::default(),
    )
    .unwrap();
    let cfg = a.home.join("node.toml");
    let out = a.cli(&[
        "identity",
        "rotate-key",
        "alice",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("rotated:"),
        "{text}{out:?}"
    );
    let new = a.openpgp_secret();
    assert_ne!(new.fingerprint(), old.fingerprint());
    assert_eq!(
        onionpost_e2e::PublicCert::from_bytes(&key_from_ledger(&net, &a))
            .unwrap()
            .fingerprint(),
        new.fingerprint()
    );
    assert_eq!(b.send_raw(&a.address, &b.address, &by_old), "OK");
    submit(&a, &b.address, "After the rotation", "new key");
    wait_for(
        Duration::from_secs(60),
        "the mail after the rotation",
        || b.count_in_maildir("new key") == 1,
    );
    let (msgs, _) = inbox(&b);
    let m = one(&msgs, "Signed before the rotation");
    assert!(m.flags.contains("$Verified"), "{m:?}");
    assert!(
        m.results
            .contains(&format!("policy.cert={}", old.fingerprint())),
        "{m:?}"
    );
    let m = one(&msgs, "After the rotation");
    assert!(
        m.flags.contains("$Verified") && m.flags.contains("$Encrypted"),
        "{m:?}"
    );
    assert!(
        m.results
            .contains(&format!("policy.cert={}", new.fingerprint())),
        "{m:?}"
    );

    // Revocation: what A's node signs with the revoked key no longer verifies (mail to B
    // is still encrypted: B's key is bound); a new key bound after it verifies again.
    let out = a.cli(&[
        "identity",
        "revoke-key",
        "alice",
        "--config",
        cfg.to_str().unwrap(),
        "--reason",
        "laptop lost",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("revoked:"),
        "{text}{out:?}"
    );
    submit(&a, &b.address, "After the revocation", "revoked key");
    wait_for(
        Duration::from_secs(60),
        "the mail after the revocation",
        || b.count_in_maildir("revoked key") == 1,
    );
    let out = a.cli(&[
        "identity",
        "rotate-key",
        "alice",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("rotated:"),
        "{text}{out:?}"
    );
    submit(&a, &b.address, "With a fresh key", "fresh key");
    wait_for(Duration::from_secs(60), "the mail with a fresh key", || {
        b.count_in_maildir("fresh key") == 1
    });
    let (msgs, _) = inbox(&b);
    let m = one(&msgs, "After the revocation");
    assert!(
        m.flags.contains("$Unverified") && m.flags.contains("$Encrypted"),
        "{m:?}"
    );
    assert!(
        m.results.contains("pgp=fail") && m.results.contains("revoked"),
        "{m:?}"
    );
    let m = one(&msgs, "With a fresh key");
    assert!(m.flags.contains("$Verified"), "{m:?}");
    assert!(
        m.results
            .contains(&format!("policy.cert={}", a.openpgp_secret().fingerprint())),
        "{m:?}"
    );

    // The policy that refuses forged From: a 550, nothing stored.
    b.terminate();
    b.extra = net.ledger_toml() + "[e2e]\nunverified_from_bound = \"refuse\"\n";
    b.start();
    let again = forged.replace("forged@x", "forged3@x");
    let r = b.send_raw(&a.address, &b.address, again.as_bytes());
    assert!(r.starts_with("550"), "{r}");
    assert!(r.contains("bound on the ledger"), "{r}");
    assert_eq!(b.count_in_maildir("forged3@x"), 0);
}

#[test]
fn a_bound_recipient_never_gets_mail_in_clear_while_the_ledger_is_unreachable() {
    let net = Devnet::start(4, "e2e-downgrade");
    let (mut a, mut b, tap) = pair(&net);
    // A's ledger: the same chain, servers that do not answer.
    let dead = support::free_port();
    a.extra = format!(
        "[ledger]\nendpoints = [\"http://127.0.0.1:{dead}\"]\nchain_id = \"{}\"\ngenesis = \"{}\"\n",
        net.m.chain_id,
        net.genesis().display()
    );
    a.start();
    b.start();
    submit(&a, &b.address, "Downgrade", "Not for the wire");
    wait_for(Duration::from_secs(60), "several refused attempts", || {
        a.log().matches("not sending").count() >= 3
    });
    assert!(
        !tap.text().contains("Not for the wire"),
        "sent in clear: {}",
        tap.text()
    );
    assert_eq!(b.count_in_maildir("Not for the wire"), 0);
    assert!(a.status().contains("queue: 1 message"), "{}", a.status());

    // The ledger answers again: the message goes, encrypted.
    a.terminate();
    a.extra = net.ledger_toml();
    a.start();
    wait_for(Duration::from_secs(60), "the message at B", || {
        b.count_in_maildir("Not for the wire") == 1
    });
    let wire = tap.text();
    assert!(wire.contains("multipart/encrypted"), "{wire}");
    assert!(!wire.contains("Not for the wire"), "{wire}");
    let (msgs, _) = inbox(&b);
    let m = one(&msgs, "Downgrade");
    assert!(
        m.flags.contains("$Verified") && m.flags.contains("$Encrypted"),
        "{m:?}"
    );
}

/// The highest ledger height `node`'s monitor has read its identity's key history at (from
/// its log): every read of the node after that is at that height or later.
fn monitor_height(node: &Node) -> u64 {
    node.log()
        .lines()
        .filter(|l| l.contains("monitor: read the key history of our identity"))
        .filter_map(|l| {
            let rest = l.split("height=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until `node` reads the ledger at the chain's height now or later.
fn caught_up(net: &Devnet, node: &Node) {
    let h = net.height();
    let ok = support::wait_until(Duration::from_secs(30), || monitor_height(node) >= h);
    assert!(
        ok,
        "the node's monitor never read the ledger at height {h} (last: {})",
        monitor_height(node)
    );
}

#[test]
fn trust_paths_key_changes_and_foreign_bindings_are_reported() {
    let net = Devnet::start(4, "e2e-trust");
    // Rita receives; Sam sends; Mark only vouches (his identity is on the ledger, his node
    // never runs).
    let mut r = Node::new("rita");
    let mut s = Node::new("sam");
    let mut m = Node::new("mark");
    for n in [&mut r, &mut s, &mut m] {
        n.extra = net.ledger_toml() + "[e2e]\nmonitor_interval_secs = 1\n";
    }
    for n in [&r, &s, &m] {
        n.register();
    }
    for n in [&mut r, &mut s] {
        n.fresh_ports();
    }
    s.route_to(&r);
    r.route_to(&s);
    r.start();
    s.start();
    let ledger = net.url(0);

    // No statements yet: verified, and no path.
    submit(&s, &r.address, "Before trust", "no path yet");
    wait_for(Duration::from_secs(60), "the first message", || {
        r.count_in_maildir("no path yet") == 1
    });
    let (msgs, _) = inbox(&r);
    let first = one(&msgs, "Before trust");
    assert!(first.results.contains("pgp=pass"), "{first:?}");
    assert!(
        first
            .results
            .contains("policy.trust=none policy.trust-depth=4"),
        "{first:?}"
    );
    assert!(
        !first.flags.contains("$KeyChanged"),
        "the first message: {first:?}"
    );

    // Rita vouches fully for Mark, Mark for Sam: a chain of two statements.
    tx_as(
        &r.home,
        "rita",
        &ledger,
        &["trust", m.onion(), "--level", "2"],
    );
    tx_as(
        &m.home,
        "mark",
        &ledger,
        &["trust", s.onion(), "--level", "2"],
    );
    caught_up(&net, &r);
    submit(&s, &r.address, "After trust", "a path");
    wait_for(Duration::from_secs(60), "the message after trust", || {
        r.count_in_maildir("a path") == 1
    });
    let (msgs, _) = inbox(&r);
    let m2 = one(&msgs, "After trust");
    for want in [
        "pgp=pass".to_string(),
        "policy.trust=full policy.trust-depth=2".into(),
        format!(
            "policy.trust-path=\"{}:full {}:full\"",
            m.onion(),
            s.onion()
        ),
    ] {
        assert!(m2.results.contains(&want), "{want} not in {m2:?}");
    }

    // Mark replaces his statement by a marginal one: the chain is marginal.
    tx_as(
        &m.home,
        "mark",
        &ledger,
        &["trust", s.onion(), "--level", "1"],
    );
    // Sam rotates his key: the next message is marked, once.
    let cfg = s.home.join("node.toml");
    let out = s.cli(&[
        "identity",
        "rotate-key",
        "sam",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let new = s.openpgp_secret();
    caught_up(&net, &r);
    // Sam's node made that binding itself: no alert there.
    caught_up(&net, &s);
    assert!(s.status().contains("alerts: none"), "{}", s.status());
    submit(&s, &r.address, "After the rotation", "new key");
    wait_for(
        Duration::from_secs(60),
        "the message after the rotation",
        || r.count_in_maildir("new key") == 1,
    );
    submit(&s, &r.address, "Once more", "same key");
    wait_for(Duration::from_secs(60), "the next message", || {
        r.count_in_maildir("same key") == 1
    });
    let (msgs, _) = inbox(&r);
    let m3 = one(&msgs, "After the rotation");
    assert!(
        m3.flags.contains("$KeyChanged") && m3.flags.contains("$Verified"),
        "{m3:?}"
    );
    assert!(
        m3.key_change
            .starts_with(&format!("{}: since its previous message here", s.address))
            && m3
                .key_change
                .contains(&format!("key {} replaced key", new.fingerprint()))
            && m3.key_change.contains("(RotateKey) at height "),
        "{m3:?}"
    );
    assert!(
        m3.results
            .contains("policy.trust=marginal policy.trust-depth=2"),
        "{m3:?}"
    );
    let m4 = one(&msgs, "Once more");
    assert!(!m4.flags.contains("$KeyChanged"), "marked once: {m4:?}");
    assert!(m4.key_change.is_empty(), "{m4:?}");
    for earlier in ["Before trust", "After trust"] {
        assert!(!one(&msgs, earlier).flags.contains("$KeyChanged"));
    }

    // A direct statement that lapses: while it holds it is the chain (full, one statement);
    // once the clock passes its expiry, the marginal chain through Mark again.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let expires = now() + 12;
    tx_as(
        &r.home,
        "rita",
        &ledger,
        &[
            "trust",
            s.onion(),
            "--level",
            "2",
            "--expires-at",
            &expires.to_string(),
        ],
    );
    caught_up(&net, &r);
    submit(&s, &r.address, "Direct trust", "direct");
    wait_for(
        Duration::from_secs(60),
        "the message under direct trust",
        || r.count_in_maildir("direct") == 1,
    );
    assert!(
        now() < expires,
        "too slow to see the statement before it lapses"
    );
    wait_for(Duration::from_secs(30), "the statement to lapse", || {
        now() >= expires
    });
    submit(&s, &r.address, "After the expiry", "lapsed");
    wait_for(
        Duration::from_secs(60),
        "the message after the expiry",
        || r.count_in_maildir("lapsed") == 1,
    );
    let (msgs, _) = inbox(&r);
    let direct = one(&msgs, "Direct trust");
    assert!(
        direct.results.contains(&format!(
            "policy.trust=full policy.trust-depth=1 policy.trust-path=\"{}:full\"",
            s.onion()
        )),
        "{direct:?}"
    );
    let lapsed = one(&msgs, "After the expiry");
    assert!(
        lapsed
            .results
            .contains("policy.trust=marginal policy.trust-depth=2"),
        "{lapsed:?}"
    );

    // Someone with Rita's identity key binds a key her node did not make: an alert in the
    // log, in status and in her INBOX, raised once, still shown after a restart.
    assert!(r.status().contains("alerts: none"), "{}", r.status());
    let foreign = SecretCert::generate(rand::rngs::OsRng, &r.address).unwrap();
    let file = r.home.join("foreign.pgp");
    std::fs::write(&file, foreign.public().to_bytes().unwrap()).unwrap();
    tx_as(
        &r.home,
        "rita",
        &ledger,
        &["rotate-key", file.to_str().unwrap()],
    );
    wait_for(Duration::from_secs(30), "the alert in status", || {
        r.status().contains("ALERT:")
    });
    let status = r.status();
    assert!(
        status.contains(&format!(
            "ALERT: the ledger binds to {} an OpenPGP key this node did not make: key {} replaced key",
            r.address,
            foreign.fingerprint()
        )),
        "{status}"
    );
    assert!(r.log().contains("ALERT"), "logged");
    wait_for(Duration::from_secs(10), "the alert in the INBOX", || {
        r.count_in_maildir("Security alert") == 1
    });
    let (msgs, _) = inbox(&r);
    let alert = one(
        &msgs,
        &format!(
            "Security alert: a key this node did not make is bound to {}",
            r.address
        ),
    );
    assert!(alert.flags.contains("\\Flagged"), "{alert:?}");
    assert!(
        alert.body.contains(&foreign.fingerprint().to_string()),
        "{alert:?}"
    );
    r.terminate();
    assert!(r.status().contains("ALERT:"), "on disk too");
    r.start();
    caught_up(&net, &r);
    assert!(r.status().contains("alerts: 1"), "{}", r.status());
    assert_eq!(r.count_in_maildir("Security alert"), 1, "raised once");
}

#[test]
fn the_node_verifies_and_decrypts_what_gpg_rnp_and_sq_sign_and_encrypt_to_it() {
    let net = Devnet::start(4, "e2e-gpg-in");
    // Gina's OpenPGP key is GnuPG's, bound to her identity with the onionpost command line;
    // Bob's is his node's, given to gpg as `identity export-key` prints it.
    let mut b = Node::new("bob");
    let mut g = Node::new("gina");
    for n in [&mut b, &mut g] {
        n.extra = net.ledger_toml() + "[e2e]\nmonitor_interval_secs = 1\n";
    }
    b.register();
    g.register();
    b.fresh_ports();
    b.start();

    let gpg = Gpg::new();
    gpg.output(&[
        "--quick-gen-key",
        &g.address,
        "future-default",
        "default",
        "never",
    ]);
    let gina_key = gpg.output(&["--export", &g.address]);
    let gina = onionpost_e2e::PublicCert::from_bytes(&gina_key).expect("gpg's certificate");
    let file = g.home.join("gina.pgp");
    std::fs::write(&file, &gina_key).unwrap();
    tx_as(
        &g.home,
        "gina",
        &net.url(0),
        &["rotate-key", file.to_str().unwrap()],
    );
    let exported = b.cli(&["identity", "export-key", "bob"]);
    assert!(exported.status.success(), "{exported:?}");
    gpg.import(&exported.stdout);
    caught_up(&net, &b);

    let dir = tempfile::tempdir().unwrap();
    let entity = dir.path().join("entity");
    std::fs::write(
        &entity,
        "Content-Type: text/plain; charset=us-ascii\r\n\r\nMeet me at the old mill at noon.\r\n",
    )
    .unwrap();
    let entity = entity.to_str().unwrap();
    let head = |subject: &str, id: &str| {
        format!(
            "From: {}\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{id}@gpg>\r\nMIME-Version: 1.0\r\n",
            g.address, b.address
        )
    };
    // Signed and encrypted (one OpenPGP message, RFC 3156 6.2), as a mail client wraps it.
    let armored = gpg.output(&[
        "--armor",
        "--sign",
        "--encrypt",
        "-u",
        &g.address,
        "-r",
        &b.address,
        "-o",
        "-",
        entity,
    ]);
    let wrap = |subject: &str, id: &str, armored: &[u8]| {
        let mut m = (head(subject, id)
            + "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"enc\"\r\n\r\n\
               --enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
               --enc\r\nContent-Type: application/octet-stream\r\n\r\n")
            .into_bytes();
        m.extend_from_slice(armored);
        m.extend_from_slice(b"\r\n--enc--\r\n");
        m
    };
    let sealed = wrap("From GnuPG, sealed", "sealed", &armored);
    // Signed only (a detached signature, RFC 3156 5), as mutt makes it.
    let sig = gpg.output(&[
        "--armor",
        "--detach-sign",
        "--digest-algo",
        "SHA256",
        "-u",
        &g.address,
        "-o",
        "-",
        entity,
    ]);
    let mut signed = (head("From GnuPG, signed", "signed")
        + "Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"sig\"\r\n\r\n--sig\r\n")
        .into_bytes();
    signed.extend_from_slice(&std::fs::read(entity).unwrap());
    signed.extend_from_slice(b"\r\n--sig\r\nContent-Type: application/pgp-signature\r\n\r\n");
    signed.extend_from_slice(&sig);
    signed.extend_from_slice(b"\r\n--sig--\r\n");

    for m in [&sealed, &signed] {
        assert_eq!(b.send_raw(&g.address, &b.address, m), "OK");
    }
    let (msgs, _) = inbox(&b);
    let m = one(&msgs, "From GnuPG, sealed");
    assert_eq!(m.body, "Meet me at the old mill at noon.");
    assert!(
        m.flags.contains("$Verified") && m.flags.contains("$Encrypted"),
        "{m:?}"
    );
    for want in [
        "pgp=pass".to_string(),
        format!("policy.cert={}", gina.fingerprint()),
        "policy.encrypted=yes".into(),
    ] {
        assert!(m.results.contains(&want), "{want} not in {m:?}");
    }
    let m = one(&msgs, "From GnuPG, signed");
    assert_eq!(m.body, "Meet me at the old mill at noon.");
    assert!(
        m.flags.contains("$Verified") && !m.flags.contains("$Encrypted"),
        "{m:?}"
    );
    assert!(
        m.results
            .contains(&format!("policy.cert={}", gina.fingerprint())),
        "{m:?}"
    );

    // RNP, with the same key (gpg exports it with its secret), signs and encrypts.
    let mut ring = gpg.output(&["--armor", "--export-secret-keys", &g.address]);
    ring.extend_from_slice(&exported.stdout);
    let ring_path = dir.path().join("ring.asc");
    std::fs::write(&ring_path, &ring).unwrap();
    let rnp_home = tempfile::tempdir().unwrap();
    let rnp_out = dir.path().join("rnp.asc");
    let out = Command::new("rnp")
        .arg("--homedir")
        .arg(rnp_home.path())
        .arg("--keyfile")
        .arg(&ring_path)
        .args(["--notty", "--overwrite", "--password", ""])
        .args([
            "--sign",
            "--encrypt",
            "--armor",
            "-u",
            &g.address,
            "-r",
            &b.address,
        ])
        .arg(entity)
        .arg("--output")
        .arg(&rnp_out)
        .output()
        .expect("rnp must be installed (scripts/test.sh: rnp)");
    assert!(out.status.success(), "rnp: {out:?}");
    let by_rnp = wrap("From RNP", "rnp", &std::fs::read(&rnp_out).unwrap());
    assert_eq!(b.send_raw(&g.address, &b.address, &by_rnp), "OK");

    // Gina's key becomes Sequoia's (RotateKey): sq signs (with a subkey) and encrypts; the
    // node marks the change on this first message after it.
    let sq_key = dir.path().join("sq.key");
    let out = Command::new("sq")
        .args([
            "key",
            "generate",
            "--userid",
            &format!("<{}>", g.address),
            "--export",
        ])
        .arg(&sq_key)
        .output()
        .expect("sq must be installed (scripts/test.sh: sq)");
    assert!(out.status.success(), "sq key generate: {out:?}");
    let out = Command::new("sq")
        .args(["key", "extract-cert"])
        .arg(&sq_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "sq key extract-cert: {out:?}");
    let sq_cert = onionpost_e2e::PublicCert::from_bytes(&out.stdout).expect("sq's certificate");
    std::fs::write(&file, sq_cert.to_bytes().unwrap()).unwrap();
    tx_as(
        &g.home,
        "gina",
        &net.url(0),
        &["rotate-key", file.to_str().unwrap()],
    );
    let bob_cert = dir.path().join("bob.asc");
    std::fs::write(&bob_cert, &exported.stdout).unwrap();
    let out = Command::new("sq")
        .arg("encrypt")
        .arg("--recipient-cert")
        .arg(&bob_cert)
        .arg("--signer-key")
        .arg(&sq_key)
        .arg(entity)
        .output()
        .unwrap();
    assert!(out.status.success(), "sq encrypt: {out:?}");
    caught_up(&net, &b);
    let by_sq = wrap("From Sequoia", "sq", &out.stdout);
    assert_eq!(b.send_raw(&g.address, &b.address, &by_sq), "OK");

    let (msgs, _) = inbox(&b);
    for (subject, cert, changed) in [
        ("From RNP", gina.fingerprint(), false),
        ("From Sequoia", sq_cert.fingerprint(), true),
    ] {
        let m = one(&msgs, subject);
        assert_eq!(m.body, "Meet me at the old mill at noon.", "{m:?}");
        assert!(
            m.flags.contains("$Verified") && m.flags.contains("$Encrypted"),
            "{m:?}"
        );
        assert!(m.results.contains(&format!("policy.cert={cert}")), "{m:?}");
        assert_eq!(m.flags.contains("$KeyChanged"), changed, "{m:?}");
    }
    assert!(
        one(&msgs, "From Sequoia").key_change.contains(&format!(
            "key {} replaced key {}",
            sq_cert.fingerprint(),
            gina.fingerprint()
        )),
        "{msgs:?}"
    );
}
