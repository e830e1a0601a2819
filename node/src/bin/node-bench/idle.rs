//! IDLE wake-up latency: a client idles on INBOX, one message is delivered, and the clock
//! runs until the client reads `* n EXISTS`.
//!
//! Two timers per sample, both ending when the client has read the EXISTS:
//! - from *durable*: for onionpost, the moment the sender read the 250 to its final dot
//!   (the node answers 250 only once the message is fsynced); for Dovecot, the moment the
//!   message file is fsynced, renamed into `new/` and `new/` is fsynced (how an MDA
//!   delivers to a Maildir). The push may precede the 250 (the node wakes idlers as soon as
//!   the store is durable, then answers), so this one can be negative;
//! - from *start*: the moment the delivery began (the sender wrote the message text after
//!   its 354; the MDA began writing the file).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, fchown};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::imap::Imap;
use crate::smtp::Smtp;

/// How one sample's message gets to the server.
pub enum Deliverer {
    /// Over the node's SMTP listener; the connection stays open between samples.
    Smtp {
        /// The open connection.
        conn: Smtp,
        /// MAIL FROM.
        from: String,
        /// RCPT TO.
        to: String,
    },
    /// Straight into a Maildir, as an MDA does.
    Maildir {
        /// The Maildir.
        dir: PathBuf,
        /// Owner of the files (the server's mail user).
        uid: u32,
    },
}

/// Latencies of the samples, in milliseconds.
#[derive(Debug, Default)]
pub struct Latency {
    /// From the durable store (the 250, or the Maildir rename and fsync) to the EXISTS.
    pub from_durable: Vec<f64>,
    /// From the start of the delivery to the EXISTS.
    pub from_start: Vec<f64>,
}

/// Median and maximum.
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s.last().copied().unwrap_or(f64::NAN))
}

fn ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(earlier.duration_since(later).as_secs_f64() * 1000.0),
    }
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Ann <ann@example.onion>\r\nTo: Bob <bob@example.onion>\r\n\
         Subject: idle sample {n}\r\nMessage-ID: <idle-{n}-{}@bench.invalid>\r\n\r\n\
         A message to wake an idling client.\r\n",
        std::process::id()
    )
    .into_bytes()
}

/// Writes `bytes` into `dir/new/` durably: file written and fsynced in `tmp/`, renamed,
/// `new/` fsynced.
fn maildir_deliver(dir: &Path, uid: u32, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join("tmp").join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    fchown(&f, Some(uid), Some(uid))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join("new").join(name))?;
    fs::File::open(dir.join("new"))?.sync_all()
}

impl Deliverer {
    /// Delivers message `n`; returns (start, durable).
    async fn deliver(&mut self, n: usize) -> anyhow::Result<(Instant, Instant)> {
        let msg = message(n);
        match self {
            Deliverer::Smtp { conn, from, to } => {
                conn.begin(from, to).await?;
                let start = Instant::now();
                conn.finish(&msg).await?;
                Ok((start, Instant::now()))
            }
            Deliverer::Maildir { dir, uid } => {
                let (dir, uid) = (dir.clone(), *uid);
                let name = format!("{}.P{}Q{n}.bench", std::process::id(), rand_u32());
                let stamps = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                    let start = Instant::now();
                    maildir_deliver(&dir, uid, &name, &msg)?;
                    Ok((start, Instant::now()))
                })
                .await??;
                Ok(stamps)
            }
        }
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `samples` deliveries to the INBOX of `user` on the IMAP server on `port`, each while
/// the client idles.
pub async fn measure(
    port: u16,
    user: &str,
    pass: &str,
    mut deliverer: Deliverer,
    samples: usize,
) -> anyhow::Result<Latency> {
    let mut c = Imap::connect(port).await?;
    c.login(user, pass).await?;
    let mut exists = c.select_inbox().await?;
    let mut lat = Latency::default();
    for n in 0..samples {
        let tag = c.idle().await?;
        // The reader runs on its own task so that it stamps the EXISTS the moment it
        // arrives, whatever the deliverer is doing.
        let reader = tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), c.wait_exists(exists + 1)).await;
            (c, r)
        });
        let (start, durable) = deliverer.deliver(n).await?;
        let (back, r) = reader.await?;
        c = back;
        let (now_exists, pushed) = r
            .context("no EXISTS within 10 s of the delivery")?
            .context("idling")?;
        if now_exists != exists + 1 {
            bail!("EXISTS {now_exists} after one delivery to {exists} messages");
        }
        exists = now_exists;
        lat.from_durable.push(ms(pushed, durable));
        lat.from_start.push(ms(pushed, start));
        c.done(&tag).await?;
    }
    if let Deliverer::Smtp { conn, .. } = deliverer {
        conn.quit().await?;
    }
    c.logout().await?;
    Ok(lat)
}
