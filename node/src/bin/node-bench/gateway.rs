//! The onionpost gateway (`onionpost-gateway`) as `node-bench gateway` runs it: a home
//! made by `init`, a `gateway.toml` on loopback (direct transport to the participants'
//! nodes, dnsmasq as its resolver, the receiving Postfix's port as its MX port), `run`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::dnsmasq::{Dnsmasq, Record};
use onionpost_node::gateway::dkim::Dkim;

use crate::gateway_suite::{
    Args, GW_DOMAIN, OUTSIDE_RCPT, OUTSIDE_SENDER, outside_signer, participant, receiver,
};
use crate::node;
use crate::procs::{Kill, count_files, free_port, wait_port};
use crate::smtp_suite::{throughput, throughput_of};

/// The last 30 lines of a log file.
fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The `onionpost-gateway` binary: `given`, or the one next to this binary; an error if
/// it does not exist (not built yet).
pub fn binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let b = match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("onionpost-gateway"),
    };
    if !b.exists() {
        bail!("no gateway binary at {}", b.display());
    }
    Ok(b)
}

/// dnsmasq on a free port serving `records`, ready (a query answered by `dig`) on return.
fn dns(work: &Path, tag: &str, records: &[Record]) -> anyhow::Result<Dnsmasq> {
    Dnsmasq::start(&work.join(tag), free_port(), records, |port, name| {
        Command::new("dig")
            .args(["+short", "+time=1", "+tries=1", "@127.0.0.1", "-p"])
            .arg(port.to_string())
            .args([name, "TXT"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ready"))
    })
}

/// The outside sender's domain as DNS shows it: its MX (the receiving Postfix on
/// 127.0.0.1), SPF allowing 127.0.0.1, DMARC p=none, and the DKIM key of `signer`.
fn outside_records(signer: &Dkim) -> Vec<Record> {
    let (name, text) = signer.dns_record();
    vec![
        Record::Txt { name, text },
        Record::Mx {
            domain: "outside.test".into(),
            host: "mx.outside.test".into(),
            preference: 10,
        },
        Record::A {
            name: "mx.outside.test".into(),
            address: std::net::Ipv4Addr::LOCALHOST,
        },
        Record::Txt {
            name: "outside.test".into(),
            text: "v=spf1 ip4:127.0.0.1 -all".into(),
        },
        Record::Txt {
            name: "_dmarc.outside.test".into(),
            text: "v=DMARC1; p=none".into(),
        },
    ]
}

/// A running gateway and the ports it listens on.
struct Gateway {
    _run: Kill,
    onion: String,
    public: u16,
    participants: u16,
}

/// Initialises a gateway home in `home` (its key); returns its onion host name.
fn init_gateway(bin: &Path, home: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--home")
        .arg(home)
        .arg("init")
        .output()
        .with_context(|| format!("running {} init", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let onion = text
        .lines()
        .find_map(|l| l.strip_prefix("onion:").map(|v| v.trim().to_string()))
        .with_context(|| format!("`onionpost-gateway init` printed no onion: ({text:?})"))?;
    Ok(onion)
}

/// Runs the gateway initialised in `home` (onion `onion`) serving `participant` (`name`,
/// address), delivering to `routes` (onion, port), with `mx_port` for outbound mail and
/// the resolver on `dns_port`; ready (both listeners accept) on return.
fn start_gateway(
    bin: &Path,
    (home, onion): (&Path, String),
    participant: (&str, &str),
    routes: &[(String, u16)],
    dns_port: u16,
    mx_port: u16,
) -> anyhow::Result<Gateway> {
    // The gateway signs what it sends out (a 2048-bit RSA key, as most domains publish).
    let key = home.join("dkim.pem");
    let st = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("openssl genrsa failed: {st}");
    }
    let (public, participants) = (free_port(), free_port());
    let mut cfg = format!(
        "domain = \"{GW_DOMAIN}\"\nhostname = \"mx.{GW_DOMAIN}\"\n\
         [public]\nlisten = \"127.0.0.1:{public}\"\n\
         [participants]\nlisten = \"127.0.0.1:{participants}\"\n\
         [[participant]]\nname = \"{}\"\naddress = \"{}\"\n\
         [dkim]\nselector = \"og\"\nkey = \"{}\"\n\
         [dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\
         [relay]\nmx_port = {mx_port}\nstarttls = \"opportunistic\"\nconcurrency = 32\n\
         [limits]\nmessages_per_hour = 1000000000\nburst = 1000000000\n\
         [queue]\nconcurrency = 32\n\
         [transport]\nkind = \"direct\"\n[transport.direct]\n",
        participant.0,
        participant.1,
        key.display()
    );
    for (onion, port) in routes {
        cfg += &format!("\"{onion}\" = \"127.0.0.1:{port}\"\n");
    }
    let file = home.join("gateway.toml");
    fs::write(&file, cfg)?;
    let log = fs::File::create(home.join("gateway.log"))?;
    let run = Kill(
        Command::new(bin)
            .arg("--home")
            .arg(home)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    wait_port(public, "gateway (public)")?;
    wait_port(participants, "gateway (participants)")?;
    Ok(Gateway {
        _run: run,
        onion,
        public,
        participants,
    })
}

/// Inbound through the gateway: the outside sender -> the gateway's public port
/// (`bob@gw.test`, SPF/DKIM/DMARC checked against dnsmasq) -> participant B. Messages
/// per second.
pub async fn inbound(args: &Args, bin: &Path, work: &Path) -> anyhow::Result<f64> {
    let node_bin = node::binary(args.node_bin.as_deref())?;
    let home = work.join("gw-in-gateway");
    let onion = init_gateway(bin, &home)?;
    // B keeps the Authentication-Results of its configured gateway (and only those).
    let b = participant(
        &node_bin,
        &work.join("gw-in-b"),
        &format!("[gateway]\nonion = \"{onion}\"\n"),
    )?;
    let signer = outside_signer(work)?;
    let dns = dns(work, "gw-in-dns", &outside_records(&signer))?;
    let gw = start_gateway(
        bin,
        (&home, onion),
        ("bob", &b.id.address),
        &[(b.id.onion().to_string(), b.smtp)],
        dns.port(),
        free_port(),
    )?;
    let to = format!("bob@{GW_DOMAIN}");
    let rate = throughput_of(
        &args.load(),
        gw.public,
        None,
        OUTSIDE_SENDER,
        &to,
        |m| Ok(signer.sign(&m)?),
        || count_files(&b.cur),
    )
    .await;
    rate.with_context(|| {
        format!(
            "inbound through the gateway; its log ends:\n{}",
            log_tail(&work.join("gw-in-gateway/gateway.log"))
        )
    })
}

/// Outbound through the gateway: participant A (submission) -> the gateway's
/// participants port (signed by A) -> the MX of `outside.test` from dnsmasq, the
/// receiving Postfix C. Messages per second.
pub async fn outbound(args: &Args, bin: &Path, work: &Path) -> anyhow::Result<f64> {
    let node_bin = node::binary(args.node_bin.as_deref())?;
    let (c, new) = receiver(work, "gw-out")?;
    let dns = dns(work, "gw-out-dns", &outside_records(&outside_signer(work)?))?;
    let home_a = work.join("gw-out-a");
    let a = node::new_identity(&node_bin, &home_a, "alice")?;
    let home = work.join("gw-out-gateway");
    let onion = init_gateway(bin, &home)?;
    let gw = start_gateway(
        bin,
        (&home, onion),
        ("alice", &a.address),
        &[],
        dns.port(),
        c.port(),
    )?;
    let sub_a = free_port();
    let cfg_a = format!(
        "[submission]\nlisten = \"127.0.0.1:{sub_a}\"\n[queue]\nconcurrency = 32\n\
         [gateway]\nonion = \"{}\"\n\
         [transport]\nkind = \"direct\"\n[transport.direct]\n\"{}\" = \"127.0.0.1:{}\"\n",
        gw.onion, gw.onion, gw.participants
    );
    let _a = node::run(&node_bin, &home_a, &cfg_a)?;
    wait_port(sub_a, "participant A")?;
    let rate = throughput(
        &args.load(),
        sub_a,
        Some((a.address.clone(), a.password.clone())),
        &a.address,
        OUTSIDE_RCPT,
        || count_files(&new),
    )
    .await;
    rate.with_context(|| {
        format!(
            "outbound through the gateway; its log ends:\n{}\nthe receiving Postfix's:\n{}",
            log_tail(&work.join("gw-out-gateway/gateway.log")),
            c.maillog()
        )
    })
}
