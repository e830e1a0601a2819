//! What end-to-end OpenPGP costs a delivery (issue 14 point 9), for BENCHMARKS.md:
//! `cargo bench --workspace --features onionpost-devnet/compose-tests --profile dev --bench e2e_cost`.
//!
//! Two `onionpost-node` processes on loopback (direct transport) whose identities are
//! registered with their OpenPGP keys bound on a 4-validator devnet. A sends B
//! `ONIONPOST_E2E_MESSAGES` messages (default 100) through submission, in one SMTP session;
//! the figure is the time from the first submission until B has stored all of them, read
//! from B's Maildir. Rounds alternate end-to-end on (A signs and encrypts to B's bound key,
//! B decrypts and verifies) and off (`[e2e] enabled = false` on both: A sends as submitted;
//! B still asks the ledger about the From identity, as any receiving node does), both nodes
//! restarted between rounds, each round after one warm-up message so the ledger client's
//! first verified walk is not counted.

#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::direct::Node;
use support::ledger::Devnet;
use support::{python, wait_for};

/// Submits `count` messages from `node` to `to` in one SMTP session; prints nothing.
const SUBMIT_MANY: &str = r#"
import smtplib, sys
port, user, pw, to, prefix, count = sys.argv[1:]
body = ('x' * 72 + '\r\n') * 130  # about 10 KB, as in the e2e crate's bench
with smtplib.SMTP('127.0.0.1', int(port)) as s:
    s.login(user, pw)
    for i in range(int(count)):
        msg = 'From: %s\r\nTo: %s\r\nSubject: %s %d\r\n\r\n%s' % (user, to, prefix, i, body)
        s.sendmail(user, [to], msg)
"#;

fn submit_many(from: &Node, to: &Node, prefix: &str, count: usize) {
    python(
        SUBMIT_MANY,
        &[
            &from.submission.to_string(),
            &from.address,
            &from.password,
            &to.address,
            prefix,
            &count.to_string(),
        ],
    );
}

/// One round: both nodes started with `e2e` on or off, a warm-up message, then `count`
/// messages timed until B stored the last; both stopped. Seconds.
fn round(a: &mut Node, b: &mut Node, ledger: &str, e2e: bool, tag: &str, count: usize) -> f64 {
    for n in [&mut *a, &mut *b] {
        n.extra = if e2e {
            ledger.to_string()
        } else {
            format!("{ledger}[e2e]\nenabled = false\n")
        };
    }
    b.start();
    a.start();
    let verified_before = b.count_in_maildir("pgp=pass");
    let warm = format!("warm {tag}");
    submit_many(a, b, &warm, 1);
    wait_for(Duration::from_secs(120), "the warm-up message at B", || {
        b.count_in_maildir(&warm) == 1
    });
    let inbox = b.home.join("identities").join(b.name()).join("Maildir/cur");
    let files = || std::fs::read_dir(&inbox).map(|d| d.count()).unwrap_or(0);
    let before = files();
    let subject = format!("Bench {tag}");
    let t = Instant::now();
    submit_many(a, b, &subject, count);
    // Counting directory entries, not reading them, so that the poll costs the nodes
    // nothing measurable.
    while files() < before + count {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "{} of {count} stored at B after 600 s",
            files() - before
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = t.elapsed().as_secs_f64();
    // The round measured what it says: B stored every one, decrypted and verified or not.
    let of_round = b.count_in_maildir(&format!("Subject: {subject} "));
    assert_eq!(of_round, count, "every message of the round, once");
    let verified = b.count_in_maildir("pgp=pass") - verified_before;
    let want = if e2e { count + 1 } else { 0 };
    assert_eq!(
        verified, want,
        "messages of the round B verified (e2e {e2e})"
    );
    a.terminate();
    b.terminate();
    secs
}

fn main() {
    let count: usize = std::env::var("ONIONPOST_E2E_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let net = Devnet::start(4, "e2e-cost");
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    let ledger = net.ledger_toml();
    for n in [&mut a, &mut b] {
        n.extra = ledger.clone();
        n.register();
    }
    // Registration took a while: fresh ports, then the routes.
    for n in [&mut a, &mut b] {
        n.fresh_ports();
    }
    a.route_to(&b);
    b.route_to(&a);

    let mut on = Vec::new();
    let mut off = Vec::new();
    for r in 0..2 {
        on.push(round(
            &mut a,
            &mut b,
            &ledger,
            true,
            &format!("on{r}"),
            count,
        ));
        eprintln!(
            "round {r}: end-to-end on, {count} messages in {:.2} s",
            on[r]
        );
        off.push(round(
            &mut a,
            &mut b,
            &ledger,
            false,
            &format!("off{r}"),
            count,
        ));
        eprintln!(
            "round {r}: end-to-end off, {count} messages in {:.2} s",
            off[r]
        );
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (t_on, t_off) = (best(&on), best(&off));
    println!("| A -> B, {count} messages of ~10 KB, one submission session | msgs/s (best of 2) |");
    println!("| --- | ---: |");
    println!("| end-to-end off | {:.1} |", count as f64 / t_off);
    println!(
        "| end-to-end on (signed, encrypted, verified, decrypted) | {:.1} |",
        count as f64 / t_on
    );
    println!(
        "| cost of end-to-end: 1 - on/off | {:.0}% |",
        (1.0 - t_off / t_on) * 100.0
    );
    println!("rounds on: {on:.2?} s; off: {off:.2?} s");
}
