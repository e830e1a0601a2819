//! `node-bench smtp` (the default): mail from node A to node B over loopback (10 KB
//! messages, several concurrent submission connections) and IMAP FETCH of 1,000 whole
//! messages, for onionpost and, in the same run, for two Postfix instances (A relaying to B)
//! and Dovecot (IMAP on a copy of B's Maildir).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::dovecot::{self, Dovecot};
use crate::imap::Imap;
use crate::procs::{count_files, free_port, wait_port};
use crate::{node, postfix, smtp};

/// Sizes of the A -> B and FETCH runs.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages to send A -> B.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Concurrent submission connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10 * 1024)]
    pub size: usize,
    /// Messages fetched over IMAP in one FETCH.
    #[arg(long, default_value_t = 1000)]
    pub fetch: usize,
    /// Skip the Postfix/Dovecot comparison. (Set BENCH_KEEP=1 to keep the work directory.)
    #[arg(long)]
    pub no_postfix: bool,
    /// The onionpost-node binary (default: next to this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
}

impl Args {
    /// The load these sizes describe.
    pub fn load(&self) -> Load {
        Load {
            messages: self.messages,
            connections: self.connections,
            size: self.size,
        }
    }
}

/// How many messages of what size, over how many concurrent connections.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Messages to send.
    pub messages: usize,
    /// Concurrent SMTP connections.
    pub connections: usize,
    /// Message size in bytes.
    pub size: usize,
}

/// Message `i` of a run: about `size` bytes, a unique Message-ID.
pub fn make_message(from: &str, to: &str, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}-{}@bench>\r\n\r\n",
        std::process::id()
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while m.len() + line.len() <= size {
        m.push_str(line);
    }
    m.into_bytes()
}

/// Sends all messages of `load` over its connections (authenticated if `auth` is given),
/// then waits until `delivered()` has grown by their number. Returns messages per second.
pub async fn throughput(
    args: &Load,
    port: u16,
    auth: Option<(String, String)>,
    from: &str,
    to: &str,
    delivered: impl Fn() -> usize,
) -> anyhow::Result<f64> {
    throughput_of(args, port, auth, from, to, Ok, delivered).await
}

/// [`throughput`] of messages passed through `prepare` first (DKIM-signed by the outside
/// sender, say), all prepared before the clock starts.
pub async fn throughput_of(
    args: &Load,
    port: u16,
    auth: Option<(String, String)>,
    from: &str,
    to: &str,
    prepare: impl Fn(Vec<u8>) -> anyhow::Result<Vec<u8>>,
    delivered: impl Fn() -> usize,
) -> anyhow::Result<f64> {
    let mut batches = Vec::new();
    for c in 0..args.connections {
        let msgs: Vec<Vec<u8>> = (0..args.messages)
            .filter(|i| i % args.connections == c)
            .map(|i| prepare(make_message(from, to, i, args.size)))
            .collect::<anyhow::Result<_>>()?;
        batches.push(msgs);
    }
    let before = delivered();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for msgs in batches {
        tasks.push(tokio::spawn(smtp::send_all(
            port,
            auth.clone(),
            from.into(),
            to.into(),
            msgs,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while delivered() < before + args.messages {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} delivered",
                delivered() - before,
                args.messages
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(args.messages as f64 / start.elapsed().as_secs_f64())
}

/// Logs in, selects INBOX and fetches messages 1..=n with BODY.PEEK[]; returns seconds and
/// bytes of message data.
async fn imap_fetch(port: u16, user: &str, pass: &str, n: usize) -> anyhow::Result<(f64, usize)> {
    let mut c = Imap::connect(port).await?;
    c.login(user, pass).await?;
    c.command("SELECT INBOX").await?;
    let start = Instant::now();
    let reply = c
        .command(&format!("FETCH 1:{n} (FLAGS BODY.PEEK[])"))
        .await?;
    let secs = start.elapsed().as_secs_f64();
    let fetched = reply.fetches().count();
    if fetched != n {
        bail!("fetched {fetched} of {n}");
    }
    c.logout().await?;
    Ok((secs, reply.literal_bytes))
}

/// One warm-up FETCH (Dovecot builds its index, the page cache fills), then the best of three.
async fn best_fetch(port: u16, user: &str, pass: &str, n: usize) -> anyhow::Result<(f64, usize)> {
    let mut best = imap_fetch(port, user, pass, n).await?;
    best.0 = f64::MAX;
    for _ in 0..3 {
        let r = imap_fetch(port, user, pass, n).await?;
        if r.0 < best.0 {
            best = r;
        }
    }
    Ok(best)
}

struct Results {
    rate: f64,
    fetch_secs: f64,
    fetch_bytes: usize,
}

async fn bench_onionpost(args: &Args, work: &Path) -> anyhow::Result<(Results, PathBuf)> {
    let bin = node::binary(args.node_bin.as_deref())?;
    let (home_a, home_b) = (work.join("op-a"), work.join("op-b"));
    let a = node::new_identity(&bin, &home_a, "alice")?;
    let b = node::new_identity(&bin, &home_b, "bob")?;
    let (smtp_b, sub_a, imap_b) = (free_port(), free_port(), free_port());
    let cfg_a = format!(
        "[submission]\nlisten = \"127.0.0.1:{sub_a}\"\n[queue]\nconcurrency = 32\n\
         [transport]\nkind = \"direct\"\n[transport.direct]\n\"{}\" = \"127.0.0.1:{smtp_b}\"\n",
        b.onion()
    );
    let cfg_b = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp_b}\"\n[imap]\nlisten = \"127.0.0.1:{imap_b}\"\n\
         [transport]\nkind = \"direct\"\n"
    );
    let _b = node::run(&bin, &home_b, &cfg_b)?;
    let _a = node::run(&bin, &home_a, &cfg_a)?;
    wait_port(sub_a, "onionpost A")?;
    wait_port(imap_b, "onionpost B")?;
    let maildir = node::maildir(&home_b, "bob");
    let cur = maildir.join("cur");
    let rate = throughput(
        &args.load(),
        sub_a,
        Some((a.address.clone(), a.password.clone())),
        &a.address,
        &b.address,
        || count_files(&cur),
    )
    .await?;
    let total = count_files(&cur);
    let n = args.fetch.min(total);
    let (fetch_secs, fetch_bytes) = best_fetch(imap_b, &b.address, &b.password, n).await?;
    Ok((
        Results {
            rate,
            fetch_secs,
            fetch_bytes,
        },
        maildir,
    ))
}

async fn bench_postfix(args: &Args, work: &Path, maildir: &Path) -> anyhow::Result<Results> {
    let (pa, pb) = (free_port(), free_port());
    let (dir_a, dir_b) = (work.join("pf-a"), work.join("pf-b"));
    let vmail = work.join("pf-vmail");
    let mailbox = postfix::mailbox_config(&dir_b, &vmail, &["bob@b.test".to_string()])?;
    let _b = postfix::start(&dir_b, "b", pb, &mailbox)?;
    let _a = postfix::start(&dir_a, "a", pa, &format!("relayhost = [127.0.0.1]:{pb}"))?;
    let cur = vmail.join("b.test/bob/new");
    let rate = throughput(&args.load(), pa, None, "alice@a.test", "bob@b.test", || {
        count_files(&cur)
    })
    .await?;

    // Dovecot on a copy of onionpost's Maildir (identical messages).
    let dc = Dovecot::start(&work.join("dovecot"), maildir)?;
    let n = args.fetch.min(count_files(&dc.maildir.join("cur")));
    let (fetch_secs, fetch_bytes) = best_fetch(dc.port, "bob", dovecot::PASSWORD, n).await?;
    Ok(Results {
        rate,
        fetch_secs,
        fetch_bytes,
    })
}

/// Runs the suite in `work`; returns the markdown table.
pub async fn run(args: &Args, work: &Path) -> anyhow::Result<String> {
    eprintln!(
        "onionpost: {} x {} bytes over {} connections ...",
        args.messages, args.size, args.connections
    );
    let (op, maildir) = bench_onionpost(args, work).await?;
    let mut report = String::new();
    writeln!(
        report,
        "| measurement | onionpost | postfix/dovecot | ratio |"
    )?;
    writeln!(report, "| --- | ---: | ---: | ---: |")?;
    let op_fetch = args.fetch as f64 / op.fetch_secs;
    if args.no_postfix {
        writeln!(
            report,
            "| A->B msgs/s ({} B, {} conns) | {:.0} | - | - |",
            args.size, args.connections, op.rate
        )?;
        writeln!(
            report,
            "| IMAP FETCH {} msgs, msgs/s | {:.0} | - | - |",
            args.fetch, op_fetch
        )?;
    } else {
        eprintln!("postfix/dovecot ...");
        let pf = bench_postfix(args, work, &maildir).await?;
        let pf_fetch = args.fetch as f64 / pf.fetch_secs;
        writeln!(
            report,
            "| A->B msgs/s ({} B, {} conns) | {:.0} | {:.0} | {:.2} |",
            args.size,
            args.connections,
            op.rate,
            pf.rate,
            op.rate / pf.rate
        )?;
        writeln!(
            report,
            "| IMAP FETCH {} msgs (BODY.PEEK[]), msgs/s | {:.0} | {:.0} | {:.2} |",
            args.fetch,
            op_fetch,
            pf_fetch,
            op_fetch / pf_fetch
        )?;
        eprintln!(
            "fetched bytes: onionpost {} dovecot {}",
            op.fetch_bytes, pf.fetch_bytes
        );
    }
    Ok(report)
}
