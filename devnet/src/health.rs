//! Readiness checks, run inside the compose devnet's containers as their Docker health checks
//! (`onionpost-devnet health validator|tor|node`). Each returns what it saw when healthy and
//! an error saying what is missing otherwise.

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

/// A mail node is healthy when it runs and every identity's onion service is published:
/// arti reports it `Running` or `DegradedReachable`, or it has already served a stream
/// (arti says `DegradedUnreachable` for about a minute after launch while its descriptor
/// upload is rate-limited, although the service is reachable).
pub fn node(home: &Path) -> Result<String> {
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
    let mut waiting = Vec::new();
    for (onion, svc) in &tor.services {
        let published = matches!(svc.state.as_str(), "Running" | "DegradedReachable")
            || svc.inbound_streams > 0;
        if !published {
            waiting.push(format!("{onion}: {} (client {})", svc.state, svc.bootstrap));
        }
    }
    if tor.services.len() < status.identities.len() {
        bail!(
            "{} identities but {} onion services",
            status.identities.len(),
            tor.services.len()
        );
    }
    if !waiting.is_empty() {
        bail!("not published yet: {}", waiting.join("; "));
    }
    Ok(format!(
        "{} onion service(s) published; queue {} message(s)",
        tor.services.len(),
        status.queue.messages
    ))
}
