//! `onionpost audit`: the chain of certificates from genesis, resumed from a checkpoint,
//! and the key-directory audit (key histories only grow).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use onionpost::{address, default_checkpoint, parse_identity};
use onionpost_ledger_client::audit::{AuditOptions, KeyAudit, audit};
use onionpost_ledger_client::{Config, Genesis, GrpcLedger, RootPolicy};

use crate::cli_query::Endpoints;

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The chain's genesis.json (chain id and initial validators).
    #[arg(long, env = "ONIONPOST_GENESIS")]
    genesis: PathBuf,
    /// The checkpoint file: read to resume, written at the end (default: under
    /// $XDG_STATE_HOME/onionpost/, named by chain).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Last height to audit (default: the latest decided one).
    #[arg(long)]
    to: Option<u64>,
    /// Check the key histories of every identity the chain names (genesis identities and
    /// every transaction signer).
    #[arg(long, conflicts_with = "identity")]
    all_keys: bool,
    /// Check the key history of this identity (repeatable).
    #[arg(long)]
    identity: Vec<String>,
}

/// Runs the audit; `Ok(false)` if a key history was rewritten.
pub async fn run(args: AuditArgs) -> Result<bool> {
    let genesis = Genesis::load(&args.genesis)?;
    let chain_id = genesis.chain_id.clone();
    let checkpoint = match args.checkpoint {
        Some(c) => c,
        None => default_checkpoint(&genesis)?,
    };
    let keys = if args.all_keys {
        KeyAudit::All
    } else if args.identity.is_empty() {
        KeyAudit::Skip
    } else {
        KeyAudit::Identities(
            args.identity
                .iter()
                .map(|s| parse_identity(s))
                .collect::<Result<_>>()?,
        )
    };
    let mut config = Config::new(args.endpoints.urls, RootPolicy::Certified(genesis));
    config.checkpoint = Some(checkpoint.clone());
    let ledger = GrpcLedger::new(config)?;
    let started = Instant::now();
    let mut progress = |h: u64| {
        if h.is_multiple_of(1000) {
            eprintln!("audited block {h} ({:.1?})", started.elapsed());
        }
    };
    let opts = AuditOptions { to: args.to, keys };
    let report = audit(&ledger, &opts, &mut progress).await?;
    let elapsed = started.elapsed();
    if report.resumed_from > 0 {
        println!(
            "resumed from the checkpoint at block {} ({})",
            report.resumed_from,
            checkpoint.display()
        );
    }
    println!(
        "audited blocks 1..={} of chain {chain_id} ({} new in {elapsed:.2?}): every block is certified by more than two thirds of a validator set derived from genesis and proven state",
        report.height,
        report.height - report.resumed_from,
    );
    for (h, n) in &report.set_changes {
        println!("validator set changed at height {h}: {n} validators");
    }
    if opts.keys != KeyAudit::Skip {
        println!(
            "key directory: {} identities checked at height {} ({} checks), {} histories grew, {}",
            report.identities_checked,
            report.certified.height,
            report.key_checks,
            report.histories_grown,
            if report.rewrites.is_empty() {
                "no entry rewritten".to_owned()
            } else {
                format!("{} REWRITTEN", report.rewrites.len())
            }
        );
    }
    for r in &report.rewrites {
        println!("REWRITE {}: {r}", address(&r.identity));
    }
    let (h, root) = (report.certified.height, hex::encode(report.certified.root));
    println!("certified app hash of height {h}: {root}");
    println!("use it: onionpost query --height {h} --trusted-root {h}:{root} ...");
    println!("checkpoint: {}", checkpoint.display());
    if report.height == 0 {
        bail!("the chain has no decided block yet");
    }
    Ok(report.rewrites.is_empty())
}
