//! Readiness checks, run inside the compose devnet's containers as their Docker health checks
//! (`onionpost-devnet health validator|tor|node`). Each returns what it saw when healthy and
//! an error saying what is missing otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use onionpost_ledger::validator::config::ValidatorConfig;
use onionpost_node::runtime::control::{self, Answer, Request};
use onionpost_proto::v1::GetStatusRequest;
use onionpost_proto::v1::ledger_client::LedgerClient;

use crate::tor::{NetworkInfo, fetch_consensus_nicknames};

async fn height(grpc: std::net::SocketAddr) -> Result<u64> {
    let mut c = LedgerClient::connect(format!("http://{grpc}"))
        .await
        .with_context(|| format!("no gRPC answer on {grpc}"))?;
    let s = c.get_status(GetStatusRequest {}).await?.into_inner();
    Ok(s.anchor.map_or(0, |a| a.height))
}

/// A validator is healthy when its height advances within `within`: it answers gRPC *and*
/// takes part in a chain that decides blocks (a validator cut off from a quorum is not).
pub async fn validator(home: &Path, within: Duration) -> Result<String> {
    let cfg = ValidatorConfig::load(home)?;
    let deadline = Instant::now() + within;
    let first = height(cfg.grpc_listen).await?;
    loop {
        let now = height(cfg.grpc_listen).await?;
        if now > first {
            return Ok(format!("height {first} -> {now}"));
        }
        if Instant::now() >= deadline {
            bail!("height stuck at {now} for {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tor is healthy when some authority's consensus lists it (for an authority: it votes,
/// and the others agree that it exists).
pub fn tor(network: &Path, nickname: &str) -> Result<String> {
    let bytes = std::fs::read(network).with_context(|| format!("reading {}", network.display()))?;
    let net: NetworkInfo = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is corrupt", network.display()))?;
    let mut problems = Vec::new();
    for a in net.authorities() {
        let addr = a.dir_addr.context("an authority without a DirPort")?;
        match fetch_consensus_nicknames(addr) {
            Ok(listed) if listed.iter().any(|n| n == nickname) => {
                return Ok(format!(
                    "{}'s consensus lists {nickname} among {} relays",
                    a.nickname,
                    listed.len()
                ));
            }
            Ok(listed) => problems.push(format!("{} lists only {listed:?}", a.nickname)),
            Err(e) => problems.push(format!("{}: {e}", a.nickname)),
        }
    }
    bail!("no consensus lists {nickname}: {}", problems.join("; "))
}

/// A mail node is healthy when it runs and every identity's onion service is published and
/// reachable: through the Tor client at `socks` (a C tor next to the node in its container),
/// its port 25 answers with an SMTP greeting. arti's own view is not enough: it reports a
/// fresh service `DegradedUnreachable` for minutes while the service already serves.
pub fn node(home: &Path, socks: SocketAddr, timeout: Duration) -> Result<String> {
    let status = match control::request(home, &Request::Status)? {
        Answer::Status(s) => s,
        other => bail!("unexpected answer from the node: {other:?}"),
    };
    if status.identities.is_empty() {
        bail!("the node hosts no identity");
    }
    let tor = status
        .tor
        .context("the node runs no onion transport (direct transport?)")?;
    let mut seen = Vec::new();
    for address in &status.identities {
        let host = address.rsplit('@').next().unwrap_or(address);
        let state = tor
            .services
            .get(host)
            .map_or("no service", |s| s.state.as_str());
        let greeting = smtp_greeting(socks, host, timeout)
            .with_context(|| format!("{host} (arti: {state}) is not reachable over Tor"))?;
        seen.push(format!("{host} answers {greeting:?} (arti: {state})"));
    }
    Ok(seen.join("; "))
}

/// Connects to `host:25` through the SOCKS5 proxy `socks` and returns the first line the
/// server sends, which must be an SMTP 220 greeting. (SOCKS5 CONNECT by name, RFC 1928:
/// five lines of protocol, so by hand.)
fn smtp_greeting(socks: SocketAddr, host: &str, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&socks, Duration::from_secs(2))
        .with_context(|| format!("no Tor client at {socks}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&[5, 1, 0])?; // version 5, one method: no authentication
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply)?;
    if reply != [5, 0] {
        bail!("the SOCKS proxy refused: {reply:?}");
    }
    let name = host.as_bytes();
    let len = u8::try_from(name.len()).context("host name too long")?;
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(name);
    req.extend_from_slice(&25u16.to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .context("waiting for the SOCKS reply")?;
    if head[1] != 0 {
        bail!("the Tor client could not connect (SOCKS reply {})", head[1]);
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l)?;
            l[0] as usize + 2
        }
        t => bail!("bad SOCKS address type {t}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip)?;
    let mut line = String::new();
    BufReader::new(&mut s)
        .read_line(&mut line)
        .context("waiting for the SMTP greeting")?;
    let line = line.trim_end().to_string();
    if !line.starts_with("220") {
        bail!("answered {line:?}, not an SMTP greeting");
    }
    let _ = s.write_all(b"QUIT\r\n");
    Ok(line)
}
