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
//!
//! Besides the wall time, each round reports the CPU time each node process used while the
//! round ran (utime + stime from `/proc/PID/stat`), per message: what end-to-end costs each
//! side, whatever else the machine is doing.
//!
//! Settings (environment):
//! * `ONIONPOST_E2E_MESSAGES` (default 100): messages per round;
//! * `ONIONPOST_E2E_ROUNDS` (default 3): rounds of each kind (on, off, alternating);
//! * `ONIONPOST_E2E_LOG` (default `info`, what a node logs unless told otherwise): the
//!   nodes' `RUST_LOG` (the tests' `debug,pgp=info` logs much more, the gRPC stack's debug lines included);
//! * `ONIONPOST_E2E_PERF=DIR`: record each round's timed part of both nodes with
//!   `perf record -e cpu-clock --call-graph dwarf` into `DIR/<round>.data`.

#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
}

/// `perf record` of processes `pids` into `out`, started (and attached: its output file
/// has its header) before this returns.
fn perf_start(pids: &[u32], out: &Path) -> Child {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let _ = std::fs::remove_file(out);
    let child = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "1999"])
        .args(["--call-graph", "dwarf,16384", "-p", &pids.join(","), "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .spawn()
        .expect("perf must be installed for ONIONPOST_E2E_PERF");
    wait_for(Duration::from_secs(30), "perf attached", || {
        std::fs::metadata(out).is_ok_and(|m| m.len() > 0)
    });
    child
}

/// Stops a `perf record` (SIGINT: it writes its data and exits).
fn perf_stop(mut perf: Child) {
    let ok = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "signal perf");
    perf.wait().unwrap();
}

/// What one round measured.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Wall time from the first submission until B stored the last message.
    secs: f64,
    /// CPU time node A used meanwhile.
    cpu_a: f64,
    /// CPU time node B used meanwhile.
    cpu_b: f64,
}

/// One round: both nodes started with `e2e` on or off, a warm-up message, then `count`
/// messages timed until B stored the last; both stopped. Seconds.
fn round(
    a: &mut Node,
    b: &mut Node,
    ledger: &str,
    e2e: bool,
    tag: &str,
    count: usize,
    perf: Option<&Path>,
) -> Round {
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
    let (pid_a, pid_b) = (a.pid().unwrap(), b.pid().unwrap());
    let recording = perf.map(|dir| perf_start(&[pid_a, pid_b], &dir.join(format!("{tag}.data"))));
    let (cpu_a, cpu_b) = (cpu_secs(pid_a), cpu_secs(pid_b));
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
    let (cpu_a, cpu_b) = (cpu_secs(pid_a) - cpu_a, cpu_secs(pid_b) - cpu_b);
    if let Some(p) = recording {
        perf_stop(p);
    }
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
    Round { secs, cpu_a, cpu_b }
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() {
    let env = |k: &str, default: usize| -> usize {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = env("ONIONPOST_E2E_MESSAGES", 100);
    let rounds = env("ONIONPOST_E2E_ROUNDS", 3).max(1);
    let log = std::env::var("ONIONPOST_E2E_LOG").unwrap_or_else(|_| "info".into());
    let perf = std::env::var_os("ONIONPOST_E2E_PERF").map(PathBuf::from);
    if let Some(dir) = &perf {
        std::fs::create_dir_all(dir).unwrap();
    }
    let net = Devnet::start(4, "e2e-cost");
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    let ledger = net.ledger_toml();
    for n in [&mut a, &mut b] {
        n.extra = ledger.clone();
        n.log = log.clone();
        n.register();
    }
    // Registration took a while: fresh ports, then the routes.
    for n in [&mut a, &mut b] {
        n.fresh_ports();
    }
    a.route_to(&b);
    b.route_to(&a);

    let mut on: Vec<Round> = Vec::new();
    let mut off: Vec<Round> = Vec::new();
    for r in 0..rounds {
        for e2e in [true, false] {
            let tag = format!("{}{r}", if e2e { "on" } else { "off" });
            let m = round(&mut a, &mut b, &ledger, e2e, &tag, count, perf.as_deref());
            eprintln!(
                "round {r}: end-to-end {}, {count} messages in {:.2} s; CPU per message: A {:.2} ms, B {:.2} ms",
                if e2e { "on" } else { "off" },
                m.secs,
                m.cpu_a * 1e3 / count as f64,
                m.cpu_b * 1e3 / count as f64
            );
            if e2e { on.push(m) } else { off.push(m) }
        }
    }
    let secs = |v: &[Round]| v.iter().map(|m| m.secs).collect::<Vec<_>>();
    let best = |v: &[Round]| secs(v).into_iter().fold(f64::INFINITY, f64::min);
    let med = |v: &[Round]| median(&secs(v));
    let ms = |v: &[Round], f: fn(&Round) -> f64| {
        median(&v.iter().map(f).collect::<Vec<_>>()) * 1e3 / count as f64
    };
    let cost = |t_on: f64, t_off: f64| (1.0 - t_off / t_on) * 100.0;
    println!(
        "| A -> B, {count} messages of ~10 KB, one submission session | msgs/s (best of {rounds}) | msgs/s (median) | CPU ms/msg at A (median) | CPU ms/msg at B (median) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, v) in [
        ("end-to-end off", &off),
        (
            "end-to-end on (signed, encrypted, verified, decrypted)",
            &on,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {:.2} |",
            count as f64 / best(v),
            count as f64 / med(v),
            ms(v, |m| m.cpu_a),
            ms(v, |m| m.cpu_b)
        );
    }
    println!(
        "| cost of end-to-end: 1 - on/off | {:.0}% | {:.0}% | | |",
        cost(best(&on), best(&off)),
        cost(med(&on), med(&off))
    );
    println!("rounds on: {:.2?} s; off: {:.2?} s", secs(&on), secs(&off));
}
