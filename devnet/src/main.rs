//! `onionpost-devnet`: create, start, inspect and stop a local onionpost validator network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use onionpost_devnet::{
    InitOptions, init, load, start_validator, status, stop_validator, wait_ready,
};

#[derive(Parser)]
#[command(
    name = "onionpost-devnet",
    version,
    about = "A local onionpost validator network on 127.0.0.x"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create validator keys, a genesis and configs in DIR.
    Init {
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Number of initial admins of the governing list (their keys: DIR/admin-<i>.key).
        #[arg(long, default_value_t = 1)]
        admins: usize,
        /// Directory of the devnet.
        #[arg(long)]
        dir: PathBuf,
        /// Chain id.
        #[arg(long, default_value = "onionpost-devnet")]
        chain_id: String,
        /// Validator i listens on 127.0.0.(10+i): BASE_PORT (consensus) and BASE_PORT+1 (gRPC).
        #[arg(long, default_value_t = 26600)]
        base_port: u16,
        /// Target milliseconds between blocks.
        #[arg(long, default_value_t = 100)]
        block_ms: u64,
    },
    /// Start every validator in the background and wait until each answers.
    Up {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Height, app hash and peers of every validator.
    Status {
        #[arg(long)]
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop every validator.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// A private Tor network on 127.0.0.1 for onion-transport nodes.
    Tor {
        #[command(subcommand)]
        command: TorCommand,
    },
    /// The compose devnet: validators, a private Tor network and mail nodes as containers
    /// (docker-compose.yml; images from docker/build-images.sh).
    Compose {
        #[command(subcommand)]
        command: ComposeCommand,
    },
    /// Readiness checks, run inside the compose devnet's containers as health checks.
    Health {
        #[command(subcommand)]
        command: HealthCommand,
    },
}

#[derive(Subcommand)]
enum ComposeCommand {
    /// Write validator homes and genesis, Tor keys and torrcs, mail node homes with one
    /// identity each (alice, bob, carol) and their configs, for docker-compose.yml to mount.
    Init {
        /// Directory of the compose devnet (docker-compose.yml's default: ./devnet-compose).
        #[arg(long, default_value = "devnet-compose")]
        dir: PathBuf,
        /// Compose project: containers are PROJECT-<service>, the network PROJECT-devnet.
        #[arg(long, default_value = "onionpost")]
        project: String,
        /// The /24 the containers live on (first three octets).
        #[arg(long, default_value = "10.89.0")]
        subnet: String,
        /// Target milliseconds between blocks.
        #[arg(long, default_value_t = 200)]
        block_ms: u64,
        /// Tor key cache kept between runs (default: $ONIONPOST_TOR_KEYS or
        /// /var/tmp/onionpost-tor-keys-v1).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum HealthCommand {
    /// Healthy when the validator's height advances.
    Validator {
        #[arg(long, default_value = "/home/validator")]
        home: PathBuf,
        /// How long to wait for the next block.
        #[arg(long, default_value_t = 8)]
        within_secs: u64,
    },
    /// Healthy when an authority's consensus lists this tor.
    Tor {
        #[arg(long, default_value = "/network.json")]
        network: PathBuf,
        #[arg(long)]
        nickname: String,
    },
    /// Healthy when every identity's onion service answers SMTP through the Tor client at
    /// SOCKS.
    Node {
        #[arg(long, default_value = "/home/node")]
        home: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9050")]
        socks: std::net::SocketAddr,
        /// How long one connection may take.
        #[arg(long, default_value_t = 20)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum TorCommand {
    /// Start 3 authorities and the relays, wait for a full consensus, write DIR/network.json
    /// and DIR/node-transport.toml (for `onionpost-node` configs), then supervise in the
    /// foreground until interrupted, `tor down`, or a tor dies (all tors stop with it).
    Up {
        /// Directory for this run's data (recreated).
        #[arg(long)]
        dir: PathBuf,
        /// Non-authority relays.
        #[arg(long, default_value_t = 3)]
        relays: usize,
        /// Key cache kept between runs (default: $ONIONPOST_TOR_KEYS or
        /// /var/tmp/onionpost-tor-keys-v1).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Stop the network that `tor up --dir DIR` supervises.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fill a key cache with the keys of 3 authorities and RELAYS relays (what is missing
    /// is generated with tor-gencert and tor); the compose devnet runs this in its tor image.
    Keys {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value_t = 3)]
        relays: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Init {
            validators,
            admins,
            dir,
            chain_id,
            base_port,
            block_ms,
        } => {
            let m = init(
                &dir,
                &InitOptions {
                    validators,
                    admins,
                    chain_id,
                    base_port,
                    block_ms,
                },
            )?;
            println!("devnet {} in {}", m.chain_id, dir.display());
            for v in &m.validators {
                println!(
                    "  {}  consensus {}  gRPC {}  home {}",
                    v.moniker,
                    v.p2p,
                    v.grpc,
                    v.home.display()
                );
            }
            for k in &m.admin_keys {
                println!("  admin key {}", k.display());
            }
            println!("next: onionpost-devnet up --dir {}", dir.display());
        }
        Command::Up { dir } => {
            let m = load(&dir)?;
            for v in &m.validators {
                stop_validator(v)?;
                let child = start_validator(v)?;
                println!("started {} (pid {})", v.moniker, child.id());
            }
            wait_ready(&m, Duration::from_secs(60)).await?;
            for v in &m.validators {
                println!("{} gRPC at http://{}", v.moniker, v.grpc);
            }
        }
        Command::Status { dir, json } => {
            let m = load(&dir)?;
            let containers = onionpost_devnet::compose::container_states(&dir)?;
            let mut rows = Vec::new();
            for v in &m.validators {
                let row = match status(v).await {
                    Ok(s) => {
                        let a = s.anchor.unwrap_or_default();
                        serde_json::json!({"moniker": v.moniker, "up": true, "height": a.height,
                            "app_hash": hex::encode(&a.root), "peers": s.peers, "mempool": s.mempool_size, "grpc": v.grpc})
                    }
                    Err(e) => {
                        serde_json::json!({"moniker": v.moniker, "up": false, "error": format!("{e:#}"), "grpc": v.grpc})
                    }
                };
                rows.push(row);
            }
            if let Some(cs) = &containers {
                for (row, (_, state)) in rows.iter_mut().zip(cs) {
                    row["container"] = serde_json::to_value(state)?;
                }
            }
            if json {
                match &containers {
                    None => println!("{}", serde_json::to_string_pretty(&rows)?),
                    Some(cs) => {
                        let all: Vec<_> = cs
                            .iter()
                            .map(|(s, st)| serde_json::json!({"service": s.service, "container": s.container, "ip": s.ip, "state": st}))
                            .collect();
                        println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &serde_json::json!({"validators": rows, "containers": all})
                            )?
                        );
                    }
                }
            } else {
                for r in rows {
                    if r["up"] == true {
                        println!(
                            "{:<14} height {:>6}  app hash {}  peers {}  mempool {}",
                            r["moniker"].as_str().unwrap_or(""),
                            r["height"],
                            r["app_hash"].as_str().unwrap_or(""),
                            r["peers"],
                            r["mempool"]
                        );
                    } else {
                        println!(
                            "{:<14} DOWN ({})",
                            r["moniker"].as_str().unwrap_or(""),
                            r["error"].as_str().unwrap_or("")
                        );
                    }
                }
                if let Some(cs) = &containers {
                    println!("containers:");
                    for (s, st) in cs {
                        println!(
                            "  {:<14} {:<15} {:<8} {:<10} {}",
                            s.service,
                            s.ip,
                            st.status,
                            if st.health.is_empty() {
                                "-"
                            } else {
                                &st.health
                            },
                            if st.connected || st.status == "absent" {
                                ""
                            } else {
                                "(cut off the network)"
                            }
                        );
                    }
                }
            }
        }
        Command::Down { dir } => {
            let m = load(&dir)?;
            for v in &m.validators {
                if stop_validator(v)? {
                    println!("stopped {}", v.moniker);
                }
            }
        }
        Command::Tor { command } => tor_command(command).await?,
        Command::Compose { command } => compose_command(command)?,
        Command::Health { command } => health_command(command).await?,
    }
    Ok(())
}

async fn tor_command(command: TorCommand) -> Result<()> {
    use anyhow::Context;
    use onionpost_devnet::tor::{TorNetwork, TorNetworkConfig};
    match command {
        TorCommand::Up { dir, relays, keys } => {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing {}", dir.display()))?;
            }
            let mut cfg = TorNetworkConfig::new(&dir);
            cfg.relays = relays;
            if let Some(k) = keys {
                cfg.key_cache = k;
            }
            let mut net = tokio::task::spawn_blocking(move || TorNetwork::start(&cfg))
                .await?
                .context("starting the private Tor network")?;
            let snippet = dir.join("node-transport.toml");
            std::fs::write(
                &snippet,
                format!("[transport]\nkind = \"onion\"\n{}", net.node_config_toml()),
            )
            .with_context(|| format!("writing {}", snippet.display()))?;
            std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string())
                .context("writing supervisor.pid")?;
            println!(
                "private Tor network ready in {:.1} s: {} nodes; node transport config in {}",
                net.info().bootstrap_secs,
                net.info().nodes.len(),
                snippet.display()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => net.check()?,
                }
            }
            drop(net);
            let _ = std::fs::remove_file(dir.join("supervisor.pid"));
            println!("private Tor network stopped");
        }
        TorCommand::Down { dir } => {
            let pidfile = dir.join("supervisor.pid");
            let pid = std::fs::read_to_string(&pidfile)
                .with_context(|| format!("no running network: reading {}", pidfile.display()))?;
            let status = std::process::Command::new("kill")
                .arg(pid.trim())
                .status()
                .context("running kill")?;
            anyhow::ensure!(status.success(), "kill {} failed", pid.trim());
            for _ in 0..50 {
                if !pidfile.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("stopped the private Tor network in {}", dir.display());
        }
        TorCommand::Keys { keys, relays } => {
            let mut cfg = TorNetworkConfig::new(&keys);
            cfg.key_cache = keys.clone();
            let got = tokio::task::spawn_blocking(move || {
                onionpost_devnet::tor::ensure_keys(&cfg, relays)
            })
            .await??;
            println!("{} nodes' keys in {}", got.len(), keys.display());
        }
    }
    Ok(())
}

fn compose_command(command: ComposeCommand) -> Result<()> {
    use onionpost_devnet::compose::{self, ComposeOptions};
    match command {
        ComposeCommand::Init {
            dir,
            project,
            subnet,
            block_ms,
            keys,
        } => {
            let mut opts = ComposeOptions {
                project,
                subnet: compose::parse_subnet(&subnet)?,
                block_ms,
                ..Default::default()
            };
            if let Some(k) = keys {
                opts.key_cache = k;
            }
            let m = compose::init(&dir, &opts)?;
            println!(
                "compose devnet {} in {} (network {}, {})",
                m.project,
                dir.display(),
                m.network,
                m.subnet
            );
            for s in m.validators.iter().chain(&m.tor) {
                println!("  {:<12} {}", s.service, s.ip);
            }
            for n in &m.nodes {
                for id in &n.identities {
                    println!(
                        "  {:<12} {}  {}  password {}",
                        n.service.service, n.service.ip, id.address, id.password
                    );
                }
            }
            println!(
                "next: docker-compose --env-file {} up -d",
                dir.join(compose::COMPOSE_ENV).display()
            );
        }
    }
    Ok(())
}

async fn health_command(command: HealthCommand) -> Result<()> {
    use onionpost_devnet::health;
    let seen = match command {
        HealthCommand::Validator { home, within_secs } => {
            health::validator(&home, Duration::from_secs(within_secs)).await?
        }
        HealthCommand::Tor { network, nickname } => health::tor(&network, &nickname)?,
        HealthCommand::Node {
            home,
            socks,
            timeout_secs,
        } => health::node(&home, socks, Duration::from_secs(timeout_secs))?,
    };
    println!("healthy: {seen}");
    Ok(())
}
