//! `node-bench imap`: one onionpost mailbox of N messages (delivered through the node's
//! SMTP listener), and Dovecot serving a copy of the same Maildir; on both, in one run:
//! UID FETCH 1:* (FLAGS ENVELOPE), UID SEARCH by SUBJECT and by BODY, a full mbsync into an
//! empty Maildir and a re-run that must transfer nothing, and IDLE wake-up latency.
//! Every reply is checked (counts, the exact messages found) before its time counts.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::dovecot::{self, Dovecot};
use crate::idle::{self, Deliverer, Latency};
use crate::imap::{Imap, Reply};
use crate::mbsync::Channel;
use crate::procs::{free_port, wait_port};
use crate::smtp::Smtp;
use crate::{corpus, node};

/// Sizes of the IMAP suite.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages in the mailbox.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Concurrent SMTP connections filling the mailbox.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Timed runs of each measurement after one warm-up (the best counts).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// IDLE samples per server.
    #[arg(long, default_value_t = 20)]
    pub idle_samples: usize,
    /// Skip mbsync (for quick runs).
    #[arg(long)]
    pub no_mbsync: bool,
    /// The onionpost-node binary (default: next to this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
}

/// One IMAP server under test.
struct Server {
    name: &'static str,
    port: u16,
    user: String,
    pass: String,
}

impl Server {
    async fn session(&self) -> anyhow::Result<Imap> {
        let mut c = Imap::connect(self.port).await?;
        c.login(&self.user, &self.pass).await?;
        Ok(c)
    }
}

/// The best (lowest) time of a warm-up and then `runs` timed runs of `cmd` in one session;
/// `check` looks at every reply (the warm-up's too).
async fn best_of(
    s: &Server,
    runs: usize,
    cmd: &str,
    check: impl Fn(&Reply) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut c = s.session().await?;
    c.select_inbox().await?;
    let mut best = f64::MAX;
    for run in 0..=runs {
        let start = Instant::now();
        let reply = c.command(cmd).await?;
        let secs = start.elapsed().as_secs_f64();
        check(&reply).with_context(|| format!("{}: {cmd}", s.name))?;
        if run > 0 {
            best = best.min(secs);
        }
    }
    c.logout().await?;
    Ok(best)
}

/// The FETCH reply has one response per message, each with FLAGS and an ENVELOPE, and
/// between them every message of the corpus once.
fn check_fetch(reply: &Reply, n: usize) -> anyhow::Result<()> {
    let fetches: Vec<&[u8]> = reply.fetches().collect();
    if fetches.len() != n {
        bail!("{} FETCH responses for {n} messages", fetches.len());
    }
    let mut seen = HashSet::new();
    for f in &fetches {
        let text = String::from_utf8_lossy(f);
        if !text.contains("FLAGS (") || !text.contains("ENVELOPE (") || !text.contains("UID ") {
            bail!("FETCH response without UID, FLAGS or ENVELOPE: {text}");
        }
        let i = corpus::index_in(f).with_context(|| format!("no Message-ID in {text}"))?;
        if !seen.insert(i) {
            bail!("message {i} twice");
        }
    }
    if seen.len() != n || seen.iter().any(|&i| i >= n) {
        bail!("the envelopes are not those of messages 0..{n}");
    }
    Ok(())
}

/// The UID SEARCH reply finds exactly the messages `expect` says: their count, then (one
/// more command, untimed) their Message-IDs.
async fn check_search(
    s: &Server,
    key: &str,
    n: usize,
    expect: fn(usize) -> bool,
) -> anyhow::Result<usize> {
    let mut c = s.session().await?;
    c.select_inbox().await?;
    let uids = c.command(&format!("UID SEARCH {key}")).await?.search()?;
    let want: HashSet<usize> = (0..n).filter(|&i| expect(i)).collect();
    if uids.len() != want.len() {
        bail!(
            "{}: UID SEARCH {key} found {} messages, the corpus has {}",
            s.name,
            uids.len(),
            want.len()
        );
    }
    let set: Vec<String> = uids.iter().map(u32::to_string).collect();
    let reply = c
        .command(&format!(
            "UID FETCH {} (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
            set.join(",")
        ))
        .await?;
    let got: HashSet<usize> = corpus::indices(reply.fetches()).into_iter().collect();
    if got != want {
        bail!(
            "{}: UID SEARCH {key} found other messages than the corpus says",
            s.name
        );
    }
    c.logout().await?;
    Ok(want.len())
}

/// Fills the mailbox of `to` with messages 0..n over `conns` SMTP connections; returns
/// messages per second.
async fn fill(port: u16, to: &str, n: usize, conns: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let to = to.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = Smtp::connect(port, None).await?;
            for i in (c..n).step_by(conns) {
                s.send("ann@example.onion", &to, &corpus::message(i, &to))
                    .await
                    .with_context(|| format!("delivering message {i}"))?;
            }
            s.quit().await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// mbsync: a warm-up and `runs` timed full pulls, each into an empty Maildir (checked
/// complete), then `runs` timed re-runs on the last one, which must transfer nothing (the
/// local files stay as they are), and one more under `-Dn` whose trace must show no
/// transfer (untimed: the trace costs mbsync a second). Returns the best full pull and the
/// best re-run, in seconds.
async fn mbsync(s: &Server, work: &Path, runs: usize, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut best = f64::MAX;
    let mut last = None;
    for run in 0..=runs {
        let ch = Channel::new(
            &work.join(format!("mbsync-{}", s.name)),
            s.port,
            &s.user,
            &s.pass,
        )?;
        let (secs, _) = ch.sync(false).await?;
        ch.check_complete(n)
            .with_context(|| format!("{}: mbsync run {run}", s.name))?;
        if run > 0 {
            best = best.min(secs);
        }
        last = Some(ch);
    }
    let ch = last.expect("at least the warm-up");
    let before = ch.files()?;
    let mut again = f64::MAX;
    for _ in 0..runs.max(1) {
        let (secs, _) = ch.sync(false).await?;
        if ch.files()? != before {
            bail!("{}: an mbsync re-run changed the local Maildir", s.name);
        }
        again = again.min(secs);
    }
    let (_, sent) = ch.sync(true).await?;
    if sent.is_empty() {
        bail!("{}: no trace of mbsync's commands", s.name);
    }
    let moving: Vec<&String> = sent
        .iter()
        .filter(|c| {
            let u = c.to_ascii_uppercase();
            [
                "BODY.PEEK[]",
                "BODY[]",
                "APPEND",
                " STORE ",
                "EXPUNGE",
                " CREATE ",
            ]
            .iter()
            .any(|w| u.contains(w))
        })
        .collect();
    if !moving.is_empty() {
        bail!(
            "{}: an mbsync re-run transferred messages: {:?}",
            s.name,
            &moving[..moving.len().min(3)]
        );
    }
    if ch.files()? != before {
        bail!("{}: an mbsync re-run changed the local Maildir", s.name);
    }
    Ok((best, again))
}

struct Figures {
    fetch: f64,
    subject: f64,
    body: f64,
    mbsync: Option<(f64, f64)>,
    idle: Latency,
}

async fn measure(
    s: &Server,
    args: &Args,
    work: &Path,
    deliverer: Deliverer,
) -> anyhow::Result<Figures> {
    let n = args.messages;
    eprintln!("{}: UID FETCH ...", s.name);
    let fetch = best_of(s, args.runs, "UID FETCH 1:* (FLAGS ENVELOPE)", |r| {
        check_fetch(r, n)
    })
    .await?;
    eprintln!("{}: SEARCH ...", s.name);
    let mut times = Vec::new();
    for (key, expect) in [
        (
            format!("SUBJECT \"{}\"", corpus::SUBJECT_WORD),
            corpus::subject_hit as fn(usize) -> bool,
        ),
        (format!("BODY \"{}\"", corpus::BODY_WORD), corpus::body_hit),
    ] {
        let hits = check_search(s, &key, n, expect).await?;
        let t = best_of(s, args.runs, &format!("UID SEARCH {key}"), |r| {
            let got = r.search()?.len();
            if got != hits {
                bail!("{got} hits, expected {hits}");
            }
            Ok(())
        })
        .await?;
        times.push(t);
    }
    let mbsync = if args.no_mbsync {
        None
    } else {
        eprintln!("{}: mbsync ...", s.name);
        Some(mbsync(s, work, args.runs, n).await?)
    };
    eprintln!("{}: IDLE ...", s.name);
    let idle = idle::measure(s.port, &s.user, &s.pass, deliverer, args.idle_samples).await?;
    Ok(Figures {
        fetch,
        subject: times[0],
        body: times[1],
        mbsync,
        idle,
    })
}

/// Runs the suite in `work`; returns the markdown table.
pub async fn run(args: &Args, work: &Path) -> anyhow::Result<String> {
    let n = args.messages;
    let bin = node::binary(args.node_bin.as_deref())?;
    let home = work.join("op");
    let bob = node::new_identity(&bin, &home, "bob")?;
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!(
            "onionpost home {}: {} password {}",
            home.display(),
            bob.address,
            bob.password
        );
    }
    let (smtp, imap) = (free_port(), free_port());
    let _node = node::run(
        &bin,
        &home,
        &format!(
            "[smtp]\nlisten = \"127.0.0.1:{smtp}\"\n[imap]\nlisten = \"127.0.0.1:{imap}\"\n\
             [transport]\nkind = \"direct\"\n"
        ),
    )?;
    wait_port(smtp, "onionpost SMTP")?;
    wait_port(imap, "onionpost IMAP")?;
    eprintln!(
        "filling the onionpost mailbox: {n} messages over {} SMTP connections ...",
        args.connections
    );
    let rate = fill(smtp, &bob.address, n, args.connections).await?;
    eprintln!("filled at {rate:.0} msgs/s");
    let op = Server {
        name: "onionpost",
        port: imap,
        user: bob.address.clone(),
        pass: bob.password.clone(),
    };
    let exists = op.session().await?.select_inbox().await?;
    if exists as usize != n {
        bail!("onionpost INBOX has {exists} messages after {n} deliveries");
    }
    let dc = Dovecot::start(&work.join("dovecot"), &node::maildir(&home, "bob"))?;
    let dv = Server {
        name: "dovecot",
        port: dc.port,
        user: "bob".into(),
        pass: dovecot::PASSWORD.into(),
    };
    let exists = dv.session().await?.select_inbox().await?;
    if exists as usize != n {
        bail!("Dovecot INBOX has {exists} messages, expected {n}");
    }

    let conn = Smtp::connect(smtp, None).await?;
    let op_f = measure(
        &op,
        args,
        work,
        Deliverer::Smtp {
            conn,
            from: "ann@example.onion".into(),
            to: bob.address.clone(),
        },
    )
    .await?;
    let dv_f = measure(
        &dv,
        args,
        work,
        Deliverer::Maildir {
            dir: dc.maildir.clone(),
            uid: dc.uid,
        },
    )
    .await?;
    table(args, &op_f, &dv_f)
}

fn table(args: &Args, op: &Figures, dv: &Figures) -> anyhow::Result<String> {
    let n = args.messages;
    let hits = |f: fn(usize) -> bool| (0..n).filter(|&i| f(i)).count();
    let mut t = String::new();
    writeln!(
        t,
        "| {n} messages | onionpost | dovecot | dovecot / onionpost |"
    )?;
    writeln!(t, "| --- | ---: | ---: | ---: |")?;
    let mut row = |what: String, a: f64, b: f64, unit: &str, scale: f64| {
        writeln!(
            t,
            "| {what} | {:.1} {unit} | {:.1} {unit} | {:.2} |",
            a * scale,
            b * scale,
            b / a
        )
    };
    row(
        "UID FETCH 1:* (FLAGS ENVELOPE)".into(),
        op.fetch,
        dv.fetch,
        "ms",
        1000.0,
    )?;
    row(
        format!(
            "UID SEARCH SUBJECT \"{}\" ({} hits)",
            corpus::SUBJECT_WORD,
            hits(corpus::subject_hit)
        ),
        op.subject,
        dv.subject,
        "ms",
        1000.0,
    )?;
    row(
        format!(
            "UID SEARCH BODY \"{}\" ({} hits)",
            corpus::BODY_WORD,
            hits(corpus::body_hit)
        ),
        op.body,
        dv.body,
        "ms",
        1000.0,
    )?;
    if let (Some(a), Some(b)) = (op.mbsync, dv.mbsync) {
        row(
            "mbsync, full pull into an empty Maildir".into(),
            a.0,
            b.0,
            "s",
            1.0,
        )?;
        row(
            "mbsync, re-run (nothing to transfer)".into(),
            a.1,
            b.1,
            "ms",
            1000.0,
        )?;
    }
    for (what, a, b) in [
        (
            "IDLE: durable store -> EXISTS",
            &op.idle.from_durable,
            &dv.idle.from_durable,
        ),
        (
            "IDLE: delivery start -> EXISTS",
            &op.idle.from_start,
            &dv.idle.from_start,
        ),
    ] {
        let (am, ax) = idle::median_max(a);
        let (bm, bx) = idle::median_max(b);
        let ratio = if am > 0.0 && bm > 0.0 {
            format!("{:.2}", bm / am)
        } else {
            "-".into()
        };
        writeln!(
            t,
            "| {what}, median / max of {} | {am:.2} / {ax:.2} ms | {bm:.2} / {bx:.2} ms | {ratio} |",
            a.len()
        )?;
    }
    Ok(t)
}
