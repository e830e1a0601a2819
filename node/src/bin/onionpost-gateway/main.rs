//! `onionpost-gateway`: the gateway between onionpost participants and ordinary e-mail.
//!
//! Its own process on the node library, so that clearnet code never runs inside a
//! participant's node. See docs/gateway.md and `onionpost_node::gateway`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use onionpost_node::clock::{Clock, SystemClock};
use onionpost_node::config::TransportKind;
use onionpost_node::gateway::Gateway;
use onionpost_node::gateway::config::GatewayConfig;
use onionpost_node::gateway::dkim::Dkim;
use onionpost_node::gateway::inbound::PublicService;
use onionpost_node::gateway::outbound::ParticipantService;
use onionpost_node::gateway::relay::Relay;
use onionpost_node::gateway::tls;
use onionpost_node::identity::{Identity, IdentityStore};
use onionpost_node::listener::{self, ConnectionLimit, ListenerSpec};
use onionpost_node::onion::{OnionTransport, StreamHandler};
use onionpost_node::queue::Queue;
use onionpost_node::runtime::lock::HomeLock;
use onionpost_node::smtp::server::{self, BUSY, Timing};
use onionpost_node::smtp::session::{Mode, SessionConfig};
use onionpost_node::transport::{DirectTransport, Transport};
use onionpost_proto::onion::OnionAddress;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The gateway between onionpost participants and ordinary e-mail: never an open relay.
///
/// Participants it serves (listed in its configuration, each `name@<onion>` with a public
/// address `name@<domain>`) send ordinary e-mail through it: their node signs each copy
/// with the identity's key, the gateway checks the signature (no connection is trusted,
/// loopback and onion alike), rewrites the sender to the public address, removes whatever
/// names the participant's onion or other identities, signs with DKIM and delivers to the
/// recipient's MX (STARTTLS where offered). Mail from the internet to `name@<domain>` goes
/// to the participant's onion, with SPF, DKIM and DMARC results in Authentication-Results.
/// Anything else is refused.
///
/// Start: `onionpost-gateway --home DIR init` (creates the gateway's key; prints the onion
/// address participants put in their node's `[gateway] onion`), then
/// `onionpost-gateway --home DIR run --config gateway.toml`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Gateway home directory (its key, its queue). Default: the platform data directory,
    /// e.g. ~/.local/share/onionpost-gateway.
    #[arg(long, global = true, env = "ONIONPOST_GATEWAY_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the gateway's key (an ed25519 key: its onion address) unless it exists, and
    /// print the onion address for participants' `[gateway] onion`.
    Init,
    /// Print the gateway's onion address.
    Address,
    /// Print the DKIM DNS record for the key of `[dkim]`: `<name> TXT "<value>"`.
    DkimRecord {
        /// The gateway's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check the configuration file and print what it serves.
    Check {
        /// The gateway's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the gateway until SIGTERM or SIGINT, then shut down gracefully.
    Run {
        /// The gateway's configuration file (TOML); see docs/gateway.md.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The name of the gateway's key in its home's identity store.
const KEY_NAME: &str = "gateway";

fn default_home() -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir()
        .context("no data directory on this platform: pass --home")?
        .join("onionpost-gateway"))
}

fn identity(home: &Path) -> anyhow::Result<Identity> {
    IdentityStore::new(home).load(KEY_NAME).with_context(|| {
        format!(
            "no gateway key in {}: run `onionpost-gateway init` first",
            home.display()
        )
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    match cli.command {
        Command::Init => {
            let store = IdentityStore::new(&home);
            let id = match store.load(KEY_NAME) {
                Ok(id) => id,
                Err(_) => {
                    store
                        .create(KEY_NAME)
                        .with_context(|| format!("creating the gateway key in {}", home.display()))?
                        .0
                }
            };
            println!("onion: {}", id.onion.hostname());
            Ok(())
        }
        Command::Address => {
            println!("{}", identity(&home)?.onion.hostname());
            Ok(())
        }
        Command::DkimRecord { config } => {
            let cfg = GatewayConfig::load(&config)?;
            let Some(d) = &cfg.dkim else {
                bail!("{} has no [dkim] table", config.display());
            };
            let (name, value) = Dkim::load(&d.key, &cfg.domain, &d.selector)?.dns_record();
            println!("{name}. TXT \"{value}\"");
            Ok(())
        }
        Command::Check { config } => {
            let cfg = GatewayConfig::load(&config)?;
            println!("domain: {}", cfg.domain);
            for p in &cfg.participant {
                println!("serves: {} <- {}", cfg.public_address(p), p.address);
            }
            Ok(())
        }
        Command::Run { config } => {
            let cfg = GatewayConfig::load(&config)?;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(run(&home, cfg))
        }
    }
}

fn session(cfg: &GatewayConfig, hostname: String) -> SessionConfig {
    SessionConfig {
        mode: Mode::Inbound,
        hostname,
        max_message_size: cfg.limits.max_message_size,
        max_recipients: cfg.limits.max_recipients,
        max_line_length: 1000,
    }
}

async fn run(home: &Path, cfg: GatewayConfig) -> anyhow::Result<()> {
    let _lock = HomeLock::acquire(home).context("locking the gateway home")?;
    let id = identity(home)?;
    let queue = Arc::new(
        Queue::open(&home.join("spool"))
            .with_context(|| format!("opening the queue in {}", home.join("spool").display()))?,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let key = id.signing_key().context("reading the gateway's key")?;
    let g = Gateway::new(cfg.clone(), key, queue, clock)?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let timing = Timing {
        idle: std::time::Duration::from_secs(cfg.limits.idle_timeout_secs),
        deadline: std::time::Duration::from_secs(cfg.limits.session_timeout_secs),
    };

    if let Some(addr) = cfg.public.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the public listener on {addr}"))?;
        let (g2, stop, sc) = (
            g.clone(),
            shutdown.clone(),
            session(&cfg, cfg.hostname().to_string()),
        );
        let tls = match (&cfg.public.tls_cert, &cfg.public.tls_key) {
            (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
            _ => None,
        };
        tokio::spawn(listener::serve(
            l,
            ListenerSpec {
                name: "public",
                limit: ConnectionLimit::new(cfg.limits.max_connections),
                busy: BUSY,
            },
            shutdown.clone(),
            tasks.clone(),
            move |stream, peer| {
                let svc = PublicService::new(g2.clone(), peer.ip(), tls.clone());
                let (stop, sc) = (stop.clone(), sc.clone());
                async move {
                    if let Err(e) = svc.serve(stream, sc, timing, &stop).await {
                        tracing::debug!(%peer, "public session ended: {e}");
                    }
                }
            },
        ));
        tracing::info!(%addr, domain = %cfg.domain, starttls = cfg.public.tls_cert.is_some(), "public listener");
    }
    // Towards participants the gateway names only its onion, never its public host name.
    let participant_session = session(&cfg, id.onion.hostname());
    if let Some(addr) = cfg.participants.listen {
        if !addr.ip().is_loopback() {
            bail!("[participants] listen must be a loopback address, not {addr}");
        }
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the participants' listener on {addr}"))?;
        let svc = Arc::new(ParticipantService(g.clone()));
        let (stop, sc) = (shutdown.clone(), participant_session.clone());
        tokio::spawn(listener::serve(
            l,
            ListenerSpec {
                name: "participants",
                limit: ConnectionLimit::new(cfg.limits.max_connections),
                busy: BUSY,
            },
            shutdown.clone(),
            tasks.clone(),
            move |stream, _| {
                let (svc, stop, sc) = (svc.clone(), stop.clone(), sc.clone());
                async move {
                    if let Err(e) = server::handle(stream, &*svc, sc, timing, &stop).await {
                        tracing::debug!("participant session ended: {e}");
                    }
                }
            },
        ));
        tracing::info!(%addr, "participants' loopback listener (no trust: signatures required)");
    }

    match cfg.transport.kind {
        TransportKind::Direct => {
            let mut map = HashMap::new();
            for (name, addr) in &cfg.transport.direct {
                let onion: OnionAddress = name
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[transport.direct] {name:?}: {e}"))?;
                map.insert(onion, *addr);
            }
            start_relay(&g, Arc::new(DirectTransport::new(map)), &shutdown, &tasks);
        }
        TransportKind::Onion => {
            let limit = ConnectionLimit::new(cfg.limits.max_connections);
            let serve_onion = cfg.participants.onion;
            let (svc, stop, tracked, sc) = (
                Arc::new(ParticipantService(g.clone())),
                shutdown.clone(),
                tasks.clone(),
                participant_session.clone(),
            );
            let handler: StreamHandler = Arc::new(move |_onion, mut stream| {
                let (svc, stop, sc, limit) = (svc.clone(), stop.clone(), sc.clone(), limit.clone());
                Box::pin(tracked.track_future(async move {
                    if !serve_onion {
                        return;
                    }
                    let Some(_permit) = limit.try_acquire() else {
                        let _ = stream.write_all(BUSY).await;
                        let _ = stream.flush().await;
                        return;
                    };
                    if let Err(e) = server::handle(stream, &*svc, sc, timing, &stop).await {
                        tracing::debug!("participant onion session ended: {e}");
                    }
                }))
            });
            let t = OnionTransport::new(&cfg.transport.onion, &home.join("arti"), handler);
            t.add(&id).context("starting the gateway's onion service")?;
            start_relay(&g, t, &shutdown, &tasks);
        }
    }
    tracing::info!(onion = %id.onion, participants = cfg.participant.len(), "gateway running");

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            "drain time over; exiting (interrupted deliveries will be retried)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn start_relay<T: Transport>(
    g: &Arc<Gateway>,
    transport: Arc<T>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) {
    let relay = Relay::new(g.clone(), transport);
    tokio::spawn(relay.run(shutdown.clone(), tasks.clone()));
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
