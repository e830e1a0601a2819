//! `onionpost-ledger`: runs the ledger application.
//!
//! `abci` serves the ABCI 2.0 socket protocol, so CometBFT (`--proxy_app tcp://ADDR`) drives
//! it unchanged, and the gRPC `Ledger` service for mail nodes, clients and auditors.
//! `solo` produces blocks itself from its mempool, without consensus: a one-process ledger
//! for development and demos.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use onionpost_ledger::LedgerApp;
use onionpost_ledger::grpc::LedgerService;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "onionpost-ledger",
    version,
    about = "The onionpost ledger: identities, keys, trust and list membership, with proofs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the ABCI 2.0 socket protocol for a consensus engine (e.g. CometBFT) and the gRPC
    /// Ledger service. State lives in HOME/data; kill it at any moment and it restarts at its
    /// last committed height.
    Abci {
        /// Directory for the ledger's database (created if missing).
        #[arg(long, env = "ONIONPOST_LEDGER_HOME")]
        home: PathBuf,
        /// Address the ABCI socket server listens on.
        #[arg(long, default_value = "127.0.0.1:26658")]
        listen: SocketAddr,
        /// Address the gRPC Ledger service listens on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        grpc: SocketAddr,
    },
    /// Run as a validator: the Malachite consensus engine drives this ledger in-process and
    /// the gRPC Ledger service (with commit certificates) runs beside it. HOME holds
    /// config.toml, genesis.json and validator.key (see `onionpost-devnet init`).
    Validator {
        /// The validator's home directory.
        #[arg(long, env = "ONIONPOST_LEDGER_HOME")]
        home: PathBuf,
    },
    /// Development mode without consensus: this process alone turns its mempool into blocks
    /// (FinalizeBlock + Commit through the same ABCI application) and serves gRPC. Not fault
    /// tolerant; use a validator set for anything shared.
    Solo {
        /// Directory for the ledger's database (created if missing).
        #[arg(long, env = "ONIONPOST_LEDGER_HOME")]
        home: PathBuf,
        /// Genesis `app_state` JSON (see docs/ledger.md); read on the first start only.
        #[arg(long)]
        genesis: PathBuf,
        /// Chain id; read on the first start only.
        #[arg(long, default_value = "onionpost-solo")]
        chain_id: String,
        /// Address the gRPC Ledger service listens on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        grpc: SocketAddr,
        /// Milliseconds between blocks (a block is made only when transactions wait, or
        /// every 20 intervals to advance the block time).
        #[arg(long, default_value_t = 200)]
        block_ms: u64,
    },
}

/// The log filter when `RUST_LOG` is not set. libp2p-gossipsub warns of every message it
/// cannot forward to a slow peer with the whole message in Debug form (1.3 MB of text for a
/// 256 KiB proposal part): under a peer's flood that wrote megabytes of log per second, a
/// disk filled from outside. Dropping those forwards is gossipsub's bound working; only its
/// errors are logged.
const DEFAULT_LOG_FILTER: &str = "info,libp2p_gossipsub=error";

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Abci { home, listen, grpc } => run_abci(home, listen, grpc),
        Command::Validator { home } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(onionpost_ledger::validator::node::run(&home))
                .with_context(|| format!("validator in {}", home.display()))
        }
        Command::Solo {
            home,
            genesis,
            chain_id,
            grpc,
            block_ms,
        } => run_solo(home, genesis, chain_id, grpc, block_ms),
    }
}

async fn serve_grpc(app: LedgerApp, listener: tokio::net::TcpListener) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(LedgerService::new(app).into_server())
        .serve_with_incoming(onionpost_ledger::grpc::incoming(listener))
        .await
        .context("gRPC server failed")
}

fn run_solo(
    home: PathBuf,
    genesis: PathBuf,
    chain_id: String,
    grpc: SocketAddr,
    block_ms: u64,
) -> Result<()> {
    use tendermint_abci::Application;
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the home directory {}", home.display()))?;
    let app = LedgerApp::open(&home.join("data"))?;
    if app.storage().committed().is_none() {
        let app_state = std::fs::read(&genesis)
            .with_context(|| format!("cannot read the genesis file {}", genesis.display()))?;
        onionpost_ledger::genesis::AppGenesis::from_json(&app_state)
            .with_context(|| format!("{} is not a usable genesis", genesis.display()))?;
        app.init_chain(tendermint_proto::v0_38::abci::RequestInitChain {
            chain_id: chain_id.clone(),
            app_state_bytes: app_state.into(),
            initial_height: 1,
            ..Default::default()
        });
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen for gRPC on {grpc}"))?;
        let grpc_addr = listener.local_addr()?;
        let committed = app.storage().committed().expect("genesis written above");
        info!(grpc = %grpc_addr, chain_id = %committed.chain_id, height = committed.height, "solo ledger listening");
        println!("listening grpc={grpc_addr}");
        let producer = app.clone();
        tokio::task::spawn_blocking(move || produce_blocks(producer, block_ms));
        serve_grpc(app, listener).await
    })
}

/// The solo block producer: every interval, the waiting transactions become a block.
fn produce_blocks(app: LedgerApp, block_ms: u64) {
    use tendermint_abci::Application;
    let mut idle = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(block_ms));
        let txs: Vec<Vec<u8>> = app.mempool().peek(4 << 20);
        idle += 1;
        if txs.is_empty() && idle < 20 {
            continue;
        }
        idle = 0;
        let height = app.storage().committed().map_or(1, |c| c.height + 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let res = app.finalize_block(tendermint_proto::v0_38::abci::RequestFinalizeBlock {
            txs: txs.into_iter().map(Into::into).collect(),
            height: height as i64,
            time: Some(tendermint_proto::google::protobuf::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: 0,
            }),
            ..Default::default()
        });
        app.commit();
        let rejected = res.tx_results.iter().filter(|r| r.code != 0).count();
        info!(height, txs = res.tx_results.len(), rejected, app_hash = %hex::encode(&res.app_hash), "block committed");
    }
}

fn run_abci(home: PathBuf, listen: SocketAddr, grpc: SocketAddr) -> Result<()> {
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the home directory {}", home.display()))?;
    let app = LedgerApp::open(&home.join("data"))?;

    let server = tendermint_abci::ServerBuilder::default()
        .bind(listen, app.clone())
        .with_context(|| format!("cannot listen for ABCI on {listen}"))?;
    let abci_addr = server.local_addr();
    std::thread::Builder::new()
        .name("abci".into())
        .spawn(move || {
            // Without its ABCI server the process is useless to its engine: exit loudly.
            if let Err(e) = server.listen() {
                tracing::error!("ABCI server failed: {e}");
                std::process::exit(1);
            }
        })
        .context("cannot start the ABCI thread")?;

    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen for gRPC on {grpc}"))?;
        let grpc_addr = listener.local_addr()?;
        info!(abci = %abci_addr, grpc = %grpc_addr, "ledger listening");
        // One line on stdout that scripts and tests can wait for.
        println!("listening abci={abci_addr} grpc={grpc_addr}");
        serve_grpc(app, listener).await
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::DEFAULT_LOG_FILTER;

    /// A log writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_default_filter_drops_gossipsubs_warnings_and_keeps_the_rest() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "libp2p_gossipsub::behaviour", "Send Queue full. Could not send Forward");
            tracing::error!(target: "libp2p_gossipsub::behaviour", "a gossipsub error");
            tracing::info!(target: "arc_malachitebft_core_consensus", "Starting new height");
            tracing::warn!(target: "onionpost_ledger::validator::host", "dropped proposal parts");
            tracing::debug!(target: "onionpost_ledger::validator::host", "a debug line");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("Send Queue full"), "{text}");
        for kept in [
            "a gossipsub error",
            "Starting new height",
            "dropped proposal parts",
        ] {
            assert!(text.contains(kept), "{kept:?} missing from:\n{text}");
        }
        assert!(!text.contains("a debug line"), "{text}");
    }
}
