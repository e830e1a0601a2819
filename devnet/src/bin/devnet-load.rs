//! `devnet-load`: a load generator and latency meter for a running devnet.
//!
//! Pre-signs fresh `register_identity` transactions, submits them over gRPC round-robin to
//! every validator at a fixed offered rate (open loop, bounded concurrency), and timestamps
//! each one's commit from validator 0's event stream. Reports committed transactions per
//! second, submit-to-commit latency percentiles, block statistics, and the CPU time each
//! validator process used (from /proc), which says where the machine's time went.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ed25519_consensus::SigningKey;
use onionpost_devnet::load;
use onionpost_ledger::testkit::Signer;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser)]
#[command(
    name = "devnet-load",
    about = "Offer a steady transaction load to a running devnet and measure it"
)]
struct Args {
    /// The devnet directory (`onionpost-devnet init/up`).
    #[arg(long)]
    dir: PathBuf,
    /// Offered transactions per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Most submissions in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The committed height of a validator.
async fn tip(client: &mut LedgerClient<tonic::transport::Channel>) -> Result<u64> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    Ok(status.anchor.unwrap_or_default().height)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let m = load(&args.dir)?;
    let total = (args.rate * args.seconds) as usize;
    eprintln!("signing {total} transactions...");
    let txs: Vec<(pb::SignedTx, [u8; 32])> = (0..total as u64)
        .map(|i| {
            let mut seed = [0x77u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            seed[8..16].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
            let raw = Signer::new(SigningKey::from(seed), &m.chain_id, 0)
                .sign(Action::RegisterIdentity(Default::default()));
            (
                pb::SignedTx::decode(raw.as_slice()).expect("just encoded"),
                onionpost_proto::tx::tx_hash(&raw),
            )
        })
        .collect();

    let mut clients = Vec::new();
    for v in &m.validators {
        clients.push(
            LedgerClient::connect(format!("http://{}", v.grpc))
                .await
                .with_context(|| format!("{} is not reachable; is the devnet up?", v.moniker))?,
        );
    }
    let pids: Vec<String> = m
        .validators
        .iter()
        .filter_map(|v| std::fs::read_to_string(v.home.join("validator.pid")).ok())
        .map(|p| p.trim().to_owned())
        .collect();
    let cpu_before: Vec<f64> = pids.iter().map(|p| cpu_seconds(p).unwrap_or(0.0)).collect();
    let start_height = tip(&mut clients[0]).await?;

    // Commit times from validator 0's events. A subscriber that falls behind the server's
    // broadcast buffer is cut off; it then resubscribes from the last height it saw, which
    // the server replays from storage (those commits are timed late: conservative).
    let committed: Arc<Mutex<HashMap<[u8; 32], Instant>>> = Arc::default();
    {
        let committed = committed.clone();
        let mut client = clients[0].clone();
        tokio::spawn(async move {
            let mut from = start_height + 1;
            loop {
                if let Ok(stream) = client
                    .stream_events(pb::EventsQuery { from_height: from })
                    .await
                {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(e)) = stream.message().await {
                        from = e.height;
                        if let Ok(h) = <[u8; 32]>::try_from(e.tx_hash.as_slice()) {
                            committed.lock().await.entry(h).or_insert_with(Instant::now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    eprintln!(
        "offering {} tx/s for {} s to {} validators...",
        args.rate,
        args.seconds,
        m.validators.len()
    );
    let submitted: Arc<Mutex<HashMap<[u8; 32], Instant>>> = Arc::default();
    let rejected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(args.concurrency));
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tasks = Vec::with_capacity(total);
    for (i, (tx, hash)) in txs.into_iter().enumerate() {
        let due = t0 + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let mut client = clients[i % clients.len()].clone();
        let submitted = submitted.clone();
        let rejected = rejected.clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            match client.submit_tx(tx).await {
                Ok(a) if a.get_ref().code == 0 => {
                    submitted.lock().await.insert(hash, at);
                }
                _ => {
                    rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let offered_for = t0.elapsed();
    // Wait for the stragglers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = {
            let s = submitted.lock().await;
            let c = committed.lock().await;
            s.keys().all(|h| c.contains_key(h))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after: Vec<f64> = pids.iter().map(|p| cpu_seconds(p).unwrap_or(0.0)).collect();
    let end_height = tip(&mut clients[0]).await?;

    let s = submitted.lock().await;
    let c = committed.lock().await;
    let mut lat: Vec<f64> = s
        .iter()
        .filter_map(|(h, at)| {
            c.get(h)
                .map(|done| done.duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let last_commit = s
        .keys()
        .filter_map(|h| c.get(h))
        .max()
        .copied()
        .unwrap_or(t0);
    let window = last_commit
        .duration_since(t0)
        .as_secs_f64()
        .max(offered_for.as_secs_f64());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let blocks = end_height - start_height;
    // What the chain holds, counted from the blocks themselves.
    let mut in_blocks = 0usize;
    for h in start_height + 1..=end_height {
        if let Ok(c) = clients[0].get_commit(pb::CommitQuery { height: h }).await {
            in_blocks +=
                pb::Block::decode(c.into_inner().block.as_slice()).map_or(0, |b| b.txs.len());
        }
    }
    println!(
        "validators={} offered_tx_per_s={} seconds={} submitted_ok={} rejected={} committed={}",
        m.validators.len(),
        args.rate,
        args.seconds,
        s.len(),
        rejected.load(std::sync::atomic::Ordering::Relaxed),
        lat.len()
    );
    println!(
        "committed_tx_per_s={:.0} txs_in_blocks={} latency_ms_p50={:.0} p99={:.0} max={:.0}",
        lat.len() as f64 / window,
        in_blocks,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "blocks={} blocks_per_s={:.1} tx_per_block={:.1}",
        blocks,
        blocks as f64 / window,
        lat.len() as f64 / blocks.max(1) as f64
    );
    let cpu: Vec<String> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| format!("{:.1}", a - b))
        .collect();
    println!(
        "validator_cpu_seconds=[{}] over {:.1} s wall (2 cores = {:.0} cpu-s available)",
        cpu.join(", "),
        window,
        window * 2.0
    );
    Ok(())
}
