//! A DNS server for loopback tests and benches: Debian's `dnsmasq` (package
//! `dnsmasq-base`, which has no system service) on `127.0.0.1:<port>`, serving only the
//! records it is given, killed when dropped.
//!
//! Shared by `node-bench` and the node's tests (`node/tests/support/outside.rs` includes
//! this file), so it uses nothing of either crate: std and anyhow only.
//!
//! It forwards nothing (`--no-resolv`, no `/etc/hosts`); every top-level domain that a
//! record names is answered locally, so a name of those without a record is NXDOMAIN
//! (names under other top-level domains are REFUSED).

// Each of the two crates that include this file uses part of it.
#![allow(dead_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `domain MX preference host`.
    Mx {
        /// The mail domain.
        domain: String,
        /// The exchanger's host name (give it an [`Record::A`] too).
        host: String,
        /// Lower is tried first.
        preference: u16,
    },
    /// `name A address`.
    A {
        /// The host name.
        name: String,
        /// Its IPv4 address.
        address: Ipv4Addr,
    },
    /// `name TXT text`; text longer than 255 bytes is served as several strings of one
    /// record, which a DKIM or SPF reader concatenates.
    Txt {
        /// The owner name (`_dmarc.example.test`, `sel._domainkey.example.test`...).
        name: String,
        /// The whole text.
        text: String,
    },
}

impl Record {
    fn name(&self) -> &str {
        match self {
            Record::Mx { domain, .. } => domain,
            Record::A { name, .. } | Record::Txt { name, .. } => name,
        }
    }

    /// The line of a dnsmasq configuration file that serves this record.
    pub fn conf_line(&self) -> String {
        match self {
            Record::Mx {
                domain,
                host,
                preference,
            } => format!("mx-host={domain},{host},{preference}"),
            Record::A { name, address } => format!("host-record={name},{address}"),
            Record::Txt { name, text } => {
                let parts: Vec<String> = text
                    .as_bytes()
                    .chunks(255)
                    .map(|c| {
                        let s = String::from_utf8_lossy(c);
                        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                format!("txt-record={name},{}", parts.join(","))
            }
        }
    }
}

/// A running dnsmasq; killed (and reaped) when dropped.
pub struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// The top-level domains that `records` name (`test` if none).
fn tlds(records: &[Record]) -> Vec<&str> {
    let mut tlds: Vec<&str> = records
        .iter()
        .filter_map(|r| r.name().trim_end_matches('.').rsplit('.').next())
        .collect();
    if tlds.is_empty() {
        tlds.push("test");
    }
    tlds.sort_unstable();
    tlds.dedup();
    tlds
}

/// The dnsmasq configuration serving `records` (and a TXT record `_ready.<tld>` = "ready"
/// for each top-level domain, which readiness checks query).
pub fn config(records: &[Record]) -> String {
    let mut conf = String::new();
    for tld in tlds(records) {
        conf += &format!("local=/{tld}/\ntxt-record=_ready.{tld},\"ready\"\n");
    }
    for r in records {
        conf += &r.conf_line();
        conf.push('\n');
    }
    conf
}

impl Dnsmasq {
    /// Starts dnsmasq on `127.0.0.1:port` with `records`, its configuration and log in
    /// `dir`; returns once it has answered a query (`ready` tells whether a TXT answer
    /// from `127.0.0.1:port` arrived: callers pass a real resolver, so readiness is an
    /// answered query, never a pause). Gives up after 20 s.
    pub fn start(
        dir: &Path,
        port: u16,
        records: &[Record],
        mut ready: impl FnMut(u16, &str) -> bool,
    ) -> anyhow::Result<Dnsmasq> {
        fs::create_dir_all(dir)?;
        let conf = dir.join("dnsmasq.conf");
        fs::write(&conf, config(records))?;
        let log = dir.join("dnsmasq.log");
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .arg(format!("--port={port}"))
            .args([
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file",
                "--user=root",
                "--log-queries",
                "--cache-size=0",
            ])
            .arg(format!("--log-facility={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dnsmasq (is Debian's dnsmasq-base installed?)")?;
        let mut d = Dnsmasq {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
        };
        let probe = format!("_ready.{}", tlds(records)[0]);
        let start = Instant::now();
        loop {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let mut err = String::new();
                if let Some(mut e) = d.child.take().and_then(|mut c| c.stderr.take()) {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("dnsmasq on port {port} exited ({st}): {err}{}", d.log());
            }
            if ready(port, &probe) {
                return Ok(d);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "dnsmasq on port {port} answered no query within 20 s; its log:\n{}",
                    d.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its UDP and TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log (one line per query with `--log-queries`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Kills it and waits for its exit. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
