//! `onionpost-node`: manage identities and run the mail node.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use onionpost_node::config::Config;
use onionpost_node::e2e::keyring::Keyring;
use onionpost_node::identity::IdentityStore;
use onionpost_node::ledger::{self, NodeLedger};
use onionpost_node::runtime::{self, control, status};

/// The onionpost mail node: serverless e-mail between onion addresses.
///
/// Each identity is an ed25519 key whose public key is its onion address; the node publishes
/// one onion service per identity and carries mail between them over Tor. Local mail clients
/// use IMAP and SMTP submission on loopback.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
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
    /// Create, list, show and delete identities (a running node picks up changes at once).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Run the node (onion services, SMTP in and out, IMAP, submission) until SIGTERM or
    /// SIGINT, then shut down gracefully.
    Run {
        /// Configuration file (TOML); see the `config` module docs for every setting.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the live state of the node on this home: identities, listeners and their
    /// connections, onion services, queue. Changes nothing.
    Status,
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Create an identity with a fresh key and OpenPGP key; prints its address, the
    /// IMAP/submission password (shown only this once) and the OpenPGP fingerprint. With
    /// `--config` naming a `[ledger]`, the identity is registered on the ledger too (its key
    /// is its ledger account) and its OpenPGP key bound there.
    New {
        /// Local part of the address: a-z, 0-9, '.', '_', '-'.
        name: String,
        /// The node's configuration file; if it has `[ledger]`, register the identity there.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Register an identity on the ledger of `[ledger]`, signed with the identity's own key
    /// (so its onion address is its ledger account), and bind its OpenPGP key; waits until
    /// verified state shows both. What is there already is left alone.
    Register {
        /// Identity name.
        name: String,
        /// The node's configuration file (its `[ledger]` table).
        #[arg(long)]
        config: PathBuf,
    },
    /// Bind the identity's OpenPGP key on the ledger (BindKey, or RotateKey if another key is
    /// bound), signed with the identity's key; waits until verified state shows it.
    Bind {
        /// Identity name.
        name: String,
        /// The node's configuration file (its `[ledger]` table).
        #[arg(long)]
        config: PathBuf,
    },
    /// Give the identity a new OpenPGP key: bound on the ledger first (RotateKey), then used.
    /// Old keys stay in its keyring, so mail encrypted to them still decrypts.
    RotateKey {
        /// Identity name.
        name: String,
        /// The node's configuration file (its `[ledger]` table).
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke the identity's OpenPGP key on the ledger (RevokeKey): nothing it signs from
    /// now on verifies, and mail to the identity goes signed only. `identity rotate-key`
    /// then binds a new key.
    RevokeKey {
        /// Identity name.
        name: String,
        /// The node's configuration file (its `[ledger]` table).
        #[arg(long)]
        config: PathBuf,
        /// Why (recorded on the ledger, at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show, or with `--set` / `--clear` change, the identity's mailbox hosts on the ledger:
    /// the identities that hold its (end-to-end encrypted) mail while its node is offline.
    /// Changes are SetMailboxHosts signed with the identity's key; waits until verified state
    /// shows them.
    Hosts {
        /// Identity name.
        name: String,
        /// The node's configuration file (its `[ledger]` table).
        #[arg(long)]
        config: PathBuf,
        /// The hosts, in order of preference: onion host names (`<56 chars>.onion`) or
        /// addresses at them. Each must be registered on the ledger.
        #[arg(long, num_args = 1.., conflicts_with = "clear")]
        set: Vec<String>,
        /// Name no hosts.
        #[arg(long)]
        clear: bool,
    },
    /// Print the identity's OpenPGP certificate (public key), ASCII-armored.
    ExportKey {
        /// Identity name.
        name: String,
    },
    /// List identities and their addresses.
    List,
    /// Show one identity's address.
    Show {
        /// Identity name.
        name: String,
    },
    /// Delete an identity: the node stops serving it (mail to it then bounces). Its key and
    /// mailbox are moved to `<home>/deleted/`, not destroyed.
    Delete {
        /// Identity name.
        name: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

/// The one runtime of a command-line run: the ledger client keeps its gRPC channels, which
/// live on the runtime that opened them, across the steps of one command (register, then
/// bind).
fn cli_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(RT.get_or_init(|| rt))
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
                // Colours only on a terminal: a log file gets plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let config = Config::load(&config)?;
            onionpost_node::fsutil::create_dir_mode(&home, 0o700)
                .with_context(|| format!("creating {}", home.display()))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(runtime::run(&home, config))?;
            Ok(())
        }
        Command::Status => status(&home),
    }
}

/// Tells a running node to re-read its identities; says what happened.
fn reload(home: &Path) -> anyhow::Result<()> {
    match control::request(home, &control::Request::Reload) {
        Ok(control::Answer::Reloaded { added, removed }) => {
            for a in added {
                println!("now served by the running node: {a}");
            }
            for a in removed {
                println!("no longer served by the running node: {a}");
            }
            Ok(())
        }
        Ok(control::Answer::Error(e)) => bail!("the running node could not reload: {e}"),
        Ok(other) => bail!("unexpected answer from the running node: {other:?}"),
        Err(control::ControlError::NotRunning) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn identity(home: &Path, command: IdentityCommand) -> anyhow::Result<()> {
    let store = IdentityStore::new(home);
    match command {
        IdentityCommand::New { name, config } => {
            // Check the configuration before creating anything.
            let ledger = match &config {
                Some(path) => open_ledger(home, path)?,
                None => NodeLedger::none(),
            };
            onionpost_node::fsutil::create_dir_mode(home, 0o700)
                .with_context(|| format!("creating {}", home.display()))?;
            let (id, password) = store.create(&name)?;
            let cert = Keyring::of(&id).current()?;
            println!("address:  {}", id.address());
            println!("login:    {}", id.address());
            println!("password: {password}");
            println!("openpgp:  {}", cert.fingerprint());
            eprintln!("(the password is shown only now; it is stored as a salted hash)");
            reload(home)?;
            if ledger.client().is_ok() {
                register_identity(&ledger, &id)?;
                bind_identity_key(&ledger, &id)?;
            }
        }
        IdentityCommand::Register { name, config } => {
            let id = store.load(&name)?;
            let ledger = open_ledger(home, &config)?;
            if ledger.client().is_err() {
                bail!(
                    "{} has no [ledger] table: say which ledger to register on (endpoints, chain_id, genesis)",
                    config.display()
                );
            }
            register_identity(&ledger, &id)?;
            bind_identity_key(&ledger, &id)?;
        }
        IdentityCommand::Bind { name, config } => {
            let id = store.load(&name)?;
            let ledger = configured_ledger(home, &config)?;
            bind_identity_key(&ledger, &id)?;
        }
        IdentityCommand::RotateKey { name, config } => {
            let id = store.load(&name)?;
            let ledger = configured_ledger(home, &config)?;
            let ring = Keyring::of(&id);
            let old = ring.current()?;
            let new = ring.prepare_rotation()?;
            bind(&ledger, &id, &new)?;
            ring.make_current(&new)?;
            println!(
                "rotated: {} now uses OpenPGP key {} (was {}; kept for old mail)",
                id.address(),
                new.fingerprint(),
                old.fingerprint()
            );
        }
        IdentityCommand::RevokeKey {
            name,
            config,
            reason,
        } => {
            let id = store.load(&name)?;
            let ledger = configured_ledger(home, &config)?;
            let key = id.signing_key()?;
            let done = cli_runtime()?
                .block_on(ledger::revoke_key(
                    &ledger,
                    &key,
                    &reason,
                    std::time::Duration::from_secs(60),
                ))
                .with_context(|| format!("revoking the OpenPGP key of {}", id.address()))?;
            match done {
                Some(h) => println!(
                    "revoked: the OpenPGP key of {} at height {h}; `identity rotate-key` binds a new one",
                    id.address()
                ),
                None => println!(
                    "no OpenPGP key of {} is bound; nothing to revoke",
                    id.address()
                ),
            }
        }
        IdentityCommand::Hosts {
            name,
            config,
            set,
            clear,
        } => {
            let id = store.load(&name)?;
            let ledger = configured_ledger(home, &config)?;
            if set.is_empty() && !clear {
                show_hosts(&ledger, &id)?;
            } else {
                set_hosts(&ledger, &id, &set)?;
            }
        }
        IdentityCommand::ExportKey { name } => {
            let id = store.load(&name)?;
            print!("{}", Keyring::of(&id).current()?.public().to_armored()?);
        }
        IdentityCommand::List => {
            for id in store.list()? {
                println!("{}\t{}", id.name, id.address());
            }
        }
        IdentityCommand::Show { name } => {
            let id = store.load(&name)?;
            println!("{}", id.address());
            if let Some(fpr) = Keyring::of(&id).current_fingerprint()? {
                println!("openpgp {fpr}");
            }
        }
        IdentityCommand::Delete { name, yes } => {
            if !yes {
                bail!("deleting {name} stops its mail; run again with --yes to confirm");
            }
            let moved = store.delete(&name)?;
            println!(
                "deleted {name}; its key and mailbox are in {}",
                moved.display()
            );
            reload(home)?;
        }
    }
    Ok(())
}

/// The ledger of `config`, which must have a `[ledger]` table.
fn configured_ledger(home: &Path, config: &Path) -> anyhow::Result<NodeLedger> {
    let ledger = open_ledger(home, config)?;
    if ledger.client().is_err() {
        bail!(
            "{} has no [ledger] table: say which ledger to use (endpoints, chain_id, genesis)",
            config.display()
        );
    }
    Ok(ledger)
}

/// Binds the identity's current OpenPGP key on the ledger and says what happened.
fn bind_identity_key(
    ledger: &NodeLedger,
    id: &onionpost_node::identity::Identity,
) -> anyhow::Result<()> {
    let cert = Keyring::of(id).current()?;
    bind(ledger, id, &cert)
}

/// Binds `cert` to `id` on the ledger (signed by the identity's key).
fn bind(
    ledger: &NodeLedger,
    id: &onionpost_node::identity::Identity,
    cert: &onionpost_e2e::SecretCert,
) -> anyhow::Result<()> {
    let key = id.signing_key()?;
    let bytes = cert.public().to_bytes()?;
    let outcome = cli_runtime()?
        .block_on(ledger::bind_key(
            ledger,
            &key,
            &bytes,
            std::time::Duration::from_secs(60),
        ))
        .with_context(|| format!("binding the OpenPGP key of {} on the ledger", id.address()))?;
    let fpr = cert.fingerprint();
    match outcome {
        ledger::Binding::Bound(h) => println!("bound: OpenPGP key {fpr} at height {h}"),
        ledger::Binding::Rotated(h) => {
            println!("bound: OpenPGP key {fpr} at height {h}, replacing the earlier key")
        }
        ledger::Binding::Already(h) => {
            println!("bound: OpenPGP key {fpr} already, as of height {h}")
        }
    }
    Ok(())
}

/// An onion host name, or an address at one, as a ledger identity.
fn host_key(host: &str) -> anyhow::Result<[u8; 32]> {
    let domain = host.rsplit_once('@').map_or(host, |(_, d)| d);
    let onion: onionpost_proto::onion::OnionAddress = domain
        .parse()
        .map_err(|e| anyhow::anyhow!("{host:?} is not an onion host name or address: {e}"))?;
    Ok(onion.public_key())
}

/// Prints the identity's mailbox hosts as verified on the ledger.
fn show_hosts(ledger: &NodeLedger, id: &onionpost_node::identity::Identity) -> anyhow::Result<()> {
    let who = id.onion.public_key();
    let v = cli_runtime()?
        .block_on(ledger::mailbox_hosts(
            ledger,
            &who,
            std::time::Duration::from_secs(60),
        ))
        .with_context(|| format!("reading the mailbox hosts of {}", id.address()))?;
    if v.value.is_empty() {
        println!("hosts: none (as of height {})", v.height);
    }
    for h in &v.value {
        let onion = onionpost_proto::onion::OnionAddress::from_public_key(*h);
        println!("host: {} (as of height {})", onion.hostname(), v.height);
    }
    Ok(())
}

/// Names `hosts` as the identity's mailbox hosts on the ledger and says what happened.
fn set_hosts(
    ledger: &NodeLedger,
    id: &onionpost_node::identity::Identity,
    hosts: &[String],
) -> anyhow::Result<()> {
    let keys = hosts
        .iter()
        .map(|h| host_key(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key = id.signing_key()?;
    let outcome = cli_runtime()?
        .block_on(ledger::set_mailbox_hosts(
            ledger,
            &key,
            &keys,
            std::time::Duration::from_secs(60),
        ))
        .with_context(|| format!("setting the mailbox hosts of {}", id.address()))?;
    let names: Vec<String> = keys
        .iter()
        .map(|k| onionpost_proto::onion::OnionAddress::from_public_key(*k).hostname())
        .collect();
    let list = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" ")
    };
    match outcome {
        ledger::HostsOutcome::Set(h) => {
            println!("hosts set: {} -> {list} at height {h}", id.address())
        }
        ledger::HostsOutcome::Already(h) => println!(
            "hosts set: {} -> {list} already, as of height {h}",
            id.address()
        ),
    }
    Ok(())
}

fn open_ledger(home: &Path, config: &Path) -> anyhow::Result<NodeLedger> {
    let cfg = Config::load(config)?;
    Ok(NodeLedger::open(home, cfg.ledger.as_ref())?)
}

/// Registers `id` on the ledger with its own key and says what happened.
fn register_identity(
    ledger: &NodeLedger,
    id: &onionpost_node::identity::Identity,
) -> anyhow::Result<()> {
    let key = id.signing_key()?;
    let outcome = cli_runtime()?
        .block_on(ledger::register(
            ledger,
            &key,
            &id.name,
            std::time::Duration::from_secs(60),
        ))
        .with_context(|| format!("registering {} on the ledger", id.address()))?;
    let pk = hex::encode(key.verification_key().to_bytes());
    match outcome {
        ledger::Registration::Registered(h) => {
            println!(
                "registered: {} (ledger account {pk}) at height {h}",
                id.address()
            )
        }
        ledger::Registration::Already(h) => println!(
            "registered: {} (ledger account {pk}) already, as of height {h}",
            id.address()
        ),
    }
    Ok(())
}

fn status(home: &Path) -> anyhow::Result<()> {
    match control::request(home, &control::Request::Status) {
        Ok(control::Answer::Status(s)) => {
            print!("{}", status::render(&s));
            return Ok(());
        }
        Ok(other) => bail!("unexpected answer from the running node: {other:?}"),
        Err(control::ControlError::NotRunning) => {}
        Err(e) => return Err(e.into()),
    }
    if !home.exists() {
        bail!("no node home at {}", home.display());
    }
    // Not running: read what is on disk, changing nothing.
    println!("node: not running");
    println!("identities:");
    for id in IdentityStore::new(home).list()? {
        println!("  {}", id.address());
    }
    println!("listeners: none");
    let queue = onionpost_node::spool::Spool::count(&home.join("spool"))?;
    println!("queue: {queue} message(s)");
    let mut alerts = Vec::new();
    for id in IdentityStore::new(home).list()? {
        let state = onionpost_node::e2e::watch::load(&onionpost_node::e2e::watch::path_of(&id))?;
        alerts.extend(state.alerts.into_iter().map(|a| a.text));
    }
    let mut text = String::new();
    status::render_alerts(&mut text, &alerts);
    print!("{text}");
    Ok(())
}
