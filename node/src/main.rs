//! `onionpost-node`: manage identities and run the mail node.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use onionpost_node::config::Config;
use onionpost_node::identity::IdentityStore;
use onionpost_node::node::{self, Node, Status};

/// The onionpost mail node: serverless e-mail between onion addresses.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Node home directory (identities, mailboxes, queue). Default: the platform data
    /// directory, e.g. ~/.local/share/onionpost.
    #[arg(long, global = true, env = "ONIONPOST_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list and show identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Run the node (SMTP in and out, IMAP, submission) until killed.
    Run {
        /// Configuration file (TOML); see the `config` module docs.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show identities, listeners and queue length of the node in this home.
    Status,
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Create an identity with a fresh key; prints its address and the IMAP/submission
    /// password, which is shown only this once.
    New {
        /// Local part of the address: a-z, 0-9, '.', '_', '-'.
        name: String,
    },
    /// List identities and their addresses.
    List,
    /// Show one identity's address.
    Show {
        /// Identity name.
        name: String,
    },
}

fn default_home() -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir()
        .context("no platform data directory; pass --home")?
        .join("onionpost"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    match cli.command {
        Command::Identity { command } => identity(&home, command),
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let config = Config::load(&config)?;
            onionpost_node::fsutil::create_dir_mode(&home, 0o700)
                .with_context(|| format!("creating {}", home.display()))?;
            let node = Arc::new(Node::open(&home, config)?);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(node::run(node))?;
            Ok(())
        }
        Command::Status => status(&home),
    }
}

fn identity(home: &std::path::Path, command: IdentityCommand) -> anyhow::Result<()> {
    let store = IdentityStore::new(home);
    match command {
        IdentityCommand::New { name } => {
            onionpost_node::fsutil::create_dir_mode(home, 0o700)
                .with_context(|| format!("creating {}", home.display()))?;
            let (id, password) = store.create(&name)?;
            println!("address:  {}", id.address());
            println!("login:    {}", id.address());
            println!("password: {password}");
            eprintln!("(the password is shown only now; it is stored as a salted hash)");
        }
        IdentityCommand::List => {
            for id in store.list()? {
                println!("{}\t{}", id.name, id.address());
            }
        }
        IdentityCommand::Show { name } => {
            let id = store.load(&name)?;
            println!("{}", id.address());
        }
    }
    Ok(())
}

fn status(home: &std::path::Path) -> anyhow::Result<()> {
    let path = node::status_path(home);
    let running = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Status>(&b).ok())
        .filter(|s| std::path::Path::new(&format!("/proc/{}", s.pid)).exists());
    match running {
        Some(s) => {
            println!("node: running (pid {})", s.pid);
            println!("identities:");
            for a in &s.identities {
                println!("  {a}");
            }
            println!("listeners:");
            for (k, v) in &s.listeners {
                println!("  {k}: {v}");
            }
            println!("queue: {} message(s)", s.queue_length);
            if let Some(t) = &s.tor {
                println!("tor: {} network, bootstrap {}", t.network, t.bootstrap);
                println!(
                    "  outbound onion connections: {} ok, {} failed",
                    t.outbound_ok, t.outbound_failed
                );
                for (onion, state) in &t.services {
                    let inbound = t.inbound_streams.get(onion).copied().unwrap_or(0);
                    println!("  onion service {onion}: {state}, {inbound} inbound stream(s)");
                }
            }
        }
        None => {
            if !home.exists() {
                bail!("no node home at {}", home.display());
            }
            println!("node: not running");
            println!("identities:");
            for id in IdentityStore::new(home).list()? {
                println!("  {}", id.address());
            }
            println!("listeners: none");
            let queue = onionpost_node::spool::Spool::open(&home.join("spool"))?.len()?;
            println!("queue: {queue} message(s)");
        }
    }
    Ok(())
}
