//! `node-bench`: the mail node against Debian's Postfix and Dovecot, side by side in one run
//! on loopback, printing markdown tables with ratios (BENCHMARKS.md has the method and the
//! figures).
//!
//! - `node-bench smtp` (also what `node-bench` without a subcommand runs, with the same
//!   flags): mail from node A to node B against two Postfix instances, and FETCH of whole
//!   messages against Dovecot ([`smtp_suite`]).
//! - `node-bench imap`: 10,000 messages in one mailbox; UID FETCH of envelopes, SEARCH by
//!   header and body, a full mbsync, IDLE wake-up latency, against Dovecot on a copy of
//!   the same Maildir ([`imap_suite`]).
//! - `node-bench gateway`: relay throughput of the onionpost gateway against Postfix
//!   relays, inbound and outbound ([`gateway_suite`]).
//!
//! Build and run (as root, with Debian's `postfix`, `dovecot-imapd` and `isync`):
//! `cargo build --release --workspace --features onionpost-devnet/compose-tests --bin onionpost-node
//! --bin node-bench && $CARGO_TARGET_DIR/release/node-bench imap`.
//! Set `BENCH_KEEP=1` to keep the work directory.

mod corpus;
mod dnsmasq;
mod dovecot;
mod gateway;
mod gateway_suite;
mod idle;
mod imap;
mod imap_suite;
mod mbsync;
mod node;
mod postfix;
mod procs;
mod smtp;
mod smtp_suite;

use clap::{Parser, Subcommand};

/// Benchmark onionpost against Postfix and Dovecot on loopback.
#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    suite: Option<Suite>,
    // Without a subcommand: the `smtp` suite with these flags.
    #[command(flatten)]
    smtp: smtp_suite::Args,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// A -> B throughput against Postfix, FETCH of whole messages against Dovecot.
    Smtp(smtp_suite::Args),
    /// FETCH ENVELOPE, SEARCH, mbsync and IDLE on 10,000 messages against Dovecot.
    Imap(imap_suite::Args),
    /// Relay throughput of the onionpost gateway against Postfix relays, both directions.
    Gateway(gateway_suite::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().to_path_buf();
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("keeping {}", tmp.keep().display());
    }
    // Postfix's and Dovecot's unprivileged users must reach the work directory.
    procs::run(std::process::Command::new("chmod").arg("755").arg(&work))?;
    let report = match cli.suite.unwrap_or(Suite::Smtp(cli.smtp)) {
        Suite::Smtp(args) => smtp_suite::run(&args, &work).await?,
        Suite::Imap(args) => imap_suite::run(&args, &work).await?,
        Suite::Gateway(args) => gateway_suite::run(&args, &work).await?,
    };
    print!("{report}");
    Ok(())
}
