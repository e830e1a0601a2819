//! `node-bench gateway`: relay throughput of the onionpost gateway (`onionpost-gateway`)
//! side by side with Postfix relays, in one run on loopback, both directions.
//!
//! - **Inbound** (the outside world to a participant): an outside sender sends N messages
//!   (DKIM-signed by `outside.test`, its SPF and DMARC records in dnsmasq) to `bob@gw.test`
//!   over C concurrent SMTP connections to the relay, which hands them to
//!   participant B (an `onionpost-node`, direct transport) as `bob@<B's onion>`; the clock
//!   stops when the last is stored in B's Maildir. The relay is the gateway (`gw.test`
//!   mapped to B's identity), then, with a fresh B, a Postfix instance doing the same
//!   (`virtual_alias_maps`: `bob@gw.test bob@<onion>`, `transport_maps`: the onion to B's
//!   port).
//! - **Outbound** (a participant to the outside world): N messages submitted to the
//!   sender's first hop for `carol@outside.test`, relayed once more and stored in the
//!   Maildir of a receiving Postfix C (`virtual(8)`). onionpost: participant A (submission,
//!   its spool) -> the gateway (MX of `outside.test` looked up in dnsmasq, delivered to C's
//!   port) -> C. Postfix: instance A (`relayhost`) -> relay R (`transport_maps`) -> C.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::procs::{count_files, free_port, wait_port};
use onionpost_node::gateway::dkim::Dkim;

use crate::smtp_suite::{Load, throughput, throughput_of};
use crate::{node, postfix};

/// Sizes and binaries of the gateway runs.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages relayed in each direction by each relay.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Concurrent SMTP connections of the sender.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10 * 1024)]
    pub size: usize,
    /// Only the Postfix relays (no onionpost gateway).
    #[arg(long)]
    pub no_gateway: bool,
    /// Only the inbound direction.
    #[arg(long)]
    pub inbound_only: bool,
    /// The onionpost-node binary (default: next to this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// The onionpost-gateway binary (default: next to this one).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
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

/// The outside sender of the inbound runs.
pub const OUTSIDE_SENDER: &str = "carol@outside.test";
/// The outside recipient of the outbound runs.
pub const OUTSIDE_RCPT: &str = "carol@outside.test";
/// The gateway's mail domain.
pub const GW_DOMAIN: &str = "gw.test";

/// A participant node B receiving on an SMTP port: its process, identity and Maildir.
pub struct Participant {
    _run: crate::procs::Kill,
    /// Its identity `bob`.
    pub id: node::Identity,
    /// Its SMTP port.
    pub smtp: u16,
    /// Its INBOX's `cur/`, where stored messages are.
    pub cur: PathBuf,
}

/// Starts participant B (identity `bob`) in `home`, receiving on a free SMTP port, with
/// `extra` appended to its configuration.
pub fn participant(bin: &Path, home: &Path, extra: &str) -> anyhow::Result<Participant> {
    let id = node::new_identity(bin, home, "bob")?;
    let (smtp, imap) = (free_port(), free_port());
    let cfg = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp}\"\n[imap]\nlisten = \"127.0.0.1:{imap}\"\n\
         [transport]\nkind = \"direct\"\n{extra}"
    );
    let run = node::run(bin, home, &cfg)?;
    wait_port(imap, "participant B")?;
    wait_port(smtp, "participant B")?;
    Ok(Participant {
        _run: run,
        cur: node::maildir(home, "bob").join("cur"),
        id,
        smtp,
    })
}

/// Inbound through a Postfix relay: sender -> Postfix (`bob@gw.test` aliased to B's
/// address, routed to B's port) -> B.
async fn postfix_inbound(args: &Args, work: &Path) -> anyhow::Result<f64> {
    let bin = node::binary(args.node_bin.as_deref())?;
    let b = participant(&bin, &work.join("pf-in-b"), "")?;
    let dir = work.join("pf-in-relay");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("virtual"),
        format!("bob@{GW_DOMAIN} {}\n", b.id.address),
    )?;
    let transport = postfix::relay_config(&dir, &[(b.id.onion().to_string(), b.smtp)])?;
    let extra = format!(
        "virtual_alias_domains = {GW_DOMAIN}\nvirtual_alias_maps = texthash:{}\n{transport}",
        dir.join("virtual").display()
    );
    let port = free_port();
    let _relay = postfix::start(&dir, "relay.gw.test", port, &extra)?;
    let to = format!("bob@{GW_DOMAIN}");
    let signer = outside_signer(work)?;
    throughput_of(
        &args.load(),
        port,
        None,
        OUTSIDE_SENDER,
        &to,
        |m| Ok(signer.sign(&m)?),
        || count_files(&b.cur),
    )
    .await
}

/// The outside sender's DKIM key (RSA 2048, selector `out`, `outside.test`), the same
/// file for every run of this process: its signer, whose DNS record the gateway's
/// resolver serves.
pub fn outside_signer(work: &Path) -> anyhow::Result<Dkim> {
    let key = work.join("outside-dkim.pem");
    if !key.exists() {
        let st = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            anyhow::bail!("openssl genrsa failed: {st}");
        }
    }
    Ok(Dkim::load(&key, "outside.test", "out")?)
}

/// The receiving Postfix C of the outbound runs (mailbox `carol@outside.test`), and the
/// directory its messages land in.
pub fn receiver(work: &Path, tag: &str) -> anyhow::Result<(postfix::Instance, PathBuf)> {
    let dir = work.join(format!("{tag}-c"));
    let vmail = work.join(format!("{tag}-vmail"));
    let mailbox = postfix::mailbox_config(&dir, &vmail, &[OUTSIDE_RCPT.to_string()])?;
    let inst = postfix::start(&dir, "mx.outside.test", free_port(), &mailbox)?;
    Ok((inst, vmail.join("outside.test/carol/new")))
}

/// Outbound through Postfix: sender -> A (`relayhost` R) -> R (`transport_maps`
/// `outside.test` to C) -> C.
async fn postfix_outbound(args: &Args, work: &Path) -> anyhow::Result<f64> {
    let (c, new) = receiver(work, "pf-out")?;
    let dir_r = work.join("pf-out-relay");
    let relay = postfix::relay_config(&dir_r, &[("outside.test".to_string(), c.port())])?;
    let r = postfix::start(&dir_r, "relay.gw.test", free_port(), &relay)?;
    let a = postfix::start(
        &work.join("pf-out-a"),
        "a.test",
        free_port(),
        &format!("relayhost = [127.0.0.1]:{}", r.port()),
    )?;
    throughput(
        &args.load(),
        a.port(),
        None,
        "alice@a.test",
        OUTSIDE_RCPT,
        || count_files(&new),
    )
    .await
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One row of the report.
struct Row {
    what: String,
    gateway: Option<f64>,
    postfix: f64,
}

/// Runs the suite in `work`; returns the markdown table.
pub async fn run(args: &Args, work: &Path) -> anyhow::Result<String> {
    let load = format!(
        "{} x {} B, {} conns",
        args.messages, args.size, args.connections
    );
    let load_start = loadavg();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let gateway = if args.no_gateway {
        None
    } else {
        match crate::gateway::binary(args.gateway_bin.as_deref()) {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("onionpost gateway not measured: {e:#}"));
                None
            }
        }
    };

    eprintln!("inbound, Postfix relay: {load} ...");
    let pf = postfix_inbound(args, work).await?;
    let gw = match &gateway {
        Some(bin) => {
            eprintln!("inbound, onionpost gateway: {load} ...");
            Some(crate::gateway::inbound(args, bin, work).await?)
        }
        None => None,
    };
    rows.push(Row {
        what: format!("inbound: outside -> relay -> participant, msgs/s ({load})"),
        gateway: gw,
        postfix: pf,
    });
    if !args.inbound_only {
        eprintln!("outbound, Postfix relays: {load} ...");
        let pf = postfix_outbound(args, work).await?;
        let gw = match &gateway {
            Some(bin) => {
                eprintln!("outbound, onionpost gateway: {load} ...");
                Some(crate::gateway::outbound(args, bin, work).await?)
            }
            None => None,
        };
        rows.push(Row {
            what: format!("outbound: sender -> first hop -> relay -> outside MX, msgs/s ({load})"),
            gateway: gw,
            postfix: pf,
        });
    }

    let mut report = String::new();
    writeln!(
        report,
        "| measurement | onionpost gateway | postfix | ratio |"
    )?;
    writeln!(report, "| --- | ---: | ---: | ---: |")?;
    for r in rows {
        match r.gateway {
            Some(g) => writeln!(
                report,
                "| {} | {g:.0} | {:.0} | {:.2} |",
                r.what,
                r.postfix,
                g / r.postfix
            )?,
            None => writeln!(report, "| {} | - | {:.0} | - |", r.what, r.postfix)?,
        }
    }
    writeln!(
        report,
        "\nload average (/proc/loadavg) at the start: {load_start}; at the end: {}",
        loadavg()
    )?;
    for n in notes {
        writeln!(report, "\n{n}")?;
    }
    Ok(report)
}
