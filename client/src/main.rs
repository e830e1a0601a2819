//! `onionpost`: the command line for people. Keys, ledger transactions, and queries whose
//! proofs are verified before anything is printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
mod cli_audit;
mod cli_query;

use onionpost::{address, identity_key_path, node_home, parse_identity, read_key, write_new_key};
use onionpost_ledger_client::verify;
use onionpost_proto::tx::{action_name, sign};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use sha2::Digest;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "onionpost",
    version,
    about = "onionpost identities, ledger transactions and verified queries",
    long_about = "Every query answer carries Merkle proofs; onionpost verifies them before printing. \
                  With --genesis the proofs are checked against app hashes certified by validators derived \
                  from the chain's genesis (walking the chain from a local checkpoint, as onionpost audit does); \
                  with --trusted-root HEIGHT:HASH against a root you trust; with neither, against the app hash \
                  the server states, which shows only that the answer is consistent with that state."
)]
struct Cli {
    /// A mail node's home directory: with --identity, sign as one of its identities (the
    /// identity's key is its onion address and its ledger account). Default: the node's
    /// default home (`$XDG_DATA_HOME/onionpost`, or `~/.local/share/onionpost`).
    #[arg(long, env = "ONIONPOST_HOME")]
    home: Option<PathBuf>,
    /// Sign as this identity of the mail node at --home, instead of a --key file
    /// (`onionpost --home DIR --identity NAME tx ...`).
    #[arg(long = "identity", id = "signer_identity", env = "ONIONPOST_IDENTITY")]
    identity: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or show identity keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign a transaction and submit it to the ledger.
    Tx(TxArgs),
    /// Read the ledger; every answer's proofs are verified.
    Query(cli_query::QueryArgs),
    /// Audit a validator network from its genesis, trusting no server: verify every
    /// block's commit certificate against validator sets derived from genesis and proven
    /// state, resuming from a local checkpoint, and check that key histories only grew.
    Audit(cli_audit::AuditArgs),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a new identity key into FILE (mode 0600; never overwrites).
    New {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Print a key file's onion address and public key.
    Show {
        /// The key file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct Ledger {
    /// gRPC address of a ledger node.
    #[arg(
        long,
        env = "ONIONPOST_LEDGER",
        default_value = "http://127.0.0.1:9090"
    )]
    ledger: String,
}

#[derive(Args)]
struct TxArgs {
    #[command(flatten)]
    ledger: Ledger,
    /// The signer's key file (or sign as a node identity with --home and --identity).
    #[arg(long, env = "ONIONPOST_KEY")]
    key: Option<PathBuf>,
    /// Return once submitted instead of waiting (up to 30 s) for the transaction to commit.
    #[arg(long)]
    no_wait: bool,
    #[command(subcommand)]
    action: TxAction,
}

#[derive(Subcommand)]
enum TxAction {
    /// Register the signer as an identity (its first transaction).
    Register {
        /// Optional display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Bind an OpenPGP public key (binary file) as the signer's end-to-end key.
    BindKey { file: PathBuf },
    /// Replace the signer's end-to-end key.
    RotateKey { file: PathBuf },
    /// Revoke the signer's active end-to-end key.
    RevokeKey {
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Name the identities that hold the signer's mail while it is offline.
    MailboxHosts { hosts: Vec<String> },
    /// Vouch for an identity (level 1 = marginal, 2 = full).
    Trust {
        identity: String,
        #[arg(long, default_value_t = 1)]
        level: u32,
        /// Unix time after which the statement lapses (0 = never).
        #[arg(long, default_value_t = 0)]
        expires_at: u64,
    },
    /// Withdraw a trust statement.
    Untrust { identity: String },
    /// Create a list; the signer becomes its admin.
    CreateList { list: String },
    /// Add a member (signer must be a list admin).
    AddMember { list: String, identity: String },
    /// Remove a member (an admin, or the member itself).
    RemoveMember { list: String, identity: String },
    /// Make a member an admin (applies only where one admin's approval is enough; otherwise
    /// use `propose add-admin`).
    AddAdmin { list: String, identity: String },
    /// Take admin rights away: your own at once; another admin's only where one approval is
    /// enough (otherwise use `propose remove-admin`).
    RemoveAdmin { list: String, identity: String },
    /// Propose a change that several admins must approve; prints the proposal id. It counts
    /// as your approval and expires 86,400 blocks later.
    #[command(subcommand)]
    Propose(ProposeAction),
    /// Approve an open proposal (you must have been an admin of its list when it was made).
    Approve {
        /// The proposal id `propose` printed.
        id: u64,
    },
}

#[derive(Subcommand)]
enum ProposeAction {
    /// Make a member of LIST an admin.
    AddAdmin { list: String, identity: String },
    /// Remove an admin of LIST.
    RemoveAdmin { list: String, identity: String },
    /// Set how many admins of LIST must approve an admin change (0 = more than half).
    AdminApprovals { list: String, approvals: u32 },
    /// Change the validator set (decided by the governing list's admins).
    Validators {
        /// HEX_PUBLIC_KEY:POWER (power 0 removes the validator); repeat for several.
        #[arg(long = "set", required = true)]
        updates: Vec<String>,
    },
}

async fn connect(l: &Ledger) -> Result<LedgerClient<Channel>> {
    LedgerClient::connect(l.ledger.clone())
        .await
        .with_context(|| format!("cannot reach the ledger at {}", l.ledger))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let signer = Signer {
        home: cli.home,
        identity: cli.identity,
    };
    match cli.command {
        Command::Key(KeyCommand::New { file }) => {
            let key = write_new_key(&file)?;
            let pk = key.verification_key().to_bytes();
            println!("address    {}", address(&pk));
            println!("public key {}", hex::encode(pk));
            println!("key file   {} (keep it secret)", file.display());
        }
        Command::Key(KeyCommand::Show { file }) => {
            let pk = read_key(&file)?.verification_key().to_bytes();
            println!("address    {}", address(&pk));
            println!("public key {}", hex::encode(pk));
        }
        Command::Tx(args) => run_tx(args, &signer).await?,
        Command::Audit(args) => {
            if !cli_audit::run(args).await? {
                std::process::exit(2);
            }
        }
        Command::Query(args) => {
            if !cli_query::run(args).await? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn e2e_key(file: &PathBuf) -> Result<pb::E2eKey> {
    let public_key =
        std::fs::read(file).with_context(|| format!("cannot read key file {}", file.display()))?;
    Ok(pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key,
    })
}

fn id_bytes(s: &str) -> Result<Vec<u8>> {
    Ok(parse_identity(s)?.to_vec())
}

/// The change a `propose` subcommand names.
fn proposed_change(change: ProposeAction) -> Result<pb::change::Kind> {
    Ok(match change {
        ProposeAction::AddAdmin { list, identity } => pb::change::Kind::AddAdmin(pb::AddAdmin {
            list,
            admin: id_bytes(&identity)?,
        }),
        ProposeAction::RemoveAdmin { list, identity } => {
            pb::change::Kind::RemoveAdmin(pb::RemoveAdmin {
                list,
                admin: id_bytes(&identity)?,
            })
        }
        // The rest of the policy is filled in from the list's record once connected.
        ProposeAction::AdminApprovals { list, approvals } => {
            pb::change::Kind::SetListPolicy(pb::SetListPolicy {
                list,
                policy: Some(pb::ListPolicy {
                    admin_approvals: approvals,
                    ..Default::default()
                }),
            })
        }
        ProposeAction::Validators { updates } => {
            let updates = updates
                .iter()
                .map(|u| {
                    let (key, power) = u
                        .split_once(':')
                        .with_context(|| format!("{u:?} is not HEX_PUBLIC_KEY:POWER"))?;
                    let pub_key = hex::decode(key)
                        .ok()
                        .filter(|k| k.len() == 32)
                        .with_context(|| format!("{key:?} is not a 64-hex-digit public key"))?;
                    let power = power
                        .parse()
                        .with_context(|| format!("{power:?} is not a voting power"))?;
                    Ok(pb::ValidatorUpdate { pub_key, power })
                })
                .collect::<Result<_>>()?;
            pb::change::Kind::ValidatorUpdate(pb::ProposeValidatorUpdate { updates })
        }
    })
}

/// Who signs: a key file, or an identity of a mail node's home.
struct Signer {
    home: Option<PathBuf>,
    identity: Option<String>,
}

impl Signer {
    fn key(&self, key_file: Option<&PathBuf>) -> Result<ed25519_consensus::SigningKey> {
        match (key_file, &self.identity) {
            (Some(file), None) => read_key(file),
            (None, Some(name)) => {
                let home = match &self.home {
                    Some(h) => h.clone(),
                    None => node_home()?,
                };
                read_key(&identity_key_path(&home, name)?)
                    .with_context(|| format!("signing as identity {name:?} of {}", home.display()))
            }
            (None, None) => bail!(
                "say who signs: --key FILE, or --identity NAME (with --home DIR) for an identity of a mail node"
            ),
            (Some(_), Some(_)) => bail!("--key and --identity exclude each other"),
        }
    }
}

async fn run_tx(args: TxArgs, signer: &Signer) -> Result<()> {
    let key = signer.key(args.key.as_ref())?;
    let me = key.verification_key().to_bytes();
    let action = match args.action {
        TxAction::Register { name } => {
            Action::RegisterIdentity(pb::RegisterIdentity { display_name: name })
        }
        TxAction::BindKey { file } => Action::BindKey(pb::BindKey {
            key: Some(e2e_key(&file)?),
        }),
        TxAction::RotateKey { file } => Action::RotateKey(pb::RotateKey {
            new_key: Some(e2e_key(&file)?),
        }),
        TxAction::RevokeKey { reason } => Action::RevokeKey(pb::RevokeKey {
            key_id: vec![],
            reason,
        }),
        TxAction::MailboxHosts { hosts } => Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: hosts.iter().map(|h| id_bytes(h)).collect::<Result<_>>()?,
        }),
        TxAction::Trust {
            identity,
            level,
            expires_at,
        } => Action::SignTrust(pb::SignTrust {
            target: id_bytes(&identity)?,
            level,
            expires_at,
        }),
        TxAction::Untrust { identity } => Action::RevokeTrust(pb::RevokeTrust {
            target: id_bytes(&identity)?,
        }),
        TxAction::CreateList { list } => Action::CreateList(pb::CreateList {
            name: list,
            policy: None,
        }),
        TxAction::AddMember { list, identity } => Action::AddMember(pb::AddMember {
            list,
            member: id_bytes(&identity)?,
        }),
        TxAction::RemoveMember { list, identity } => Action::RemoveMember(pb::RemoveMember {
            list,
            member: id_bytes(&identity)?,
        }),
        TxAction::AddAdmin { list, identity } => Action::AddAdmin(pb::AddAdmin {
            list,
            admin: id_bytes(&identity)?,
        }),
        TxAction::RemoveAdmin { list, identity } => Action::RemoveAdmin(pb::RemoveAdmin {
            list,
            admin: id_bytes(&identity)?,
        }),
        TxAction::Propose(change) => Action::Propose(pb::Propose {
            change: Some(pb::Change {
                kind: Some(proposed_change(change)?),
            }),
        }),
        TxAction::Approve { id } => Action::Approve(pb::Approve { proposal_id: id }),
    };
    let mut client = connect(&args.ledger).await?;
    let (chain_id, submitted_at, record) = own_record(&mut client, &me).await?;
    let nonce = record.as_ref().map_or(0, |r| r.next_nonce);
    let action = match action {
        // The revocation names the active key, read from the verified record.
        Action::RevokeKey(mut r) => {
            let active = record
                .as_ref()
                .and_then(|r| r.active_key.as_ref())
                .context("this identity has no active end-to-end key to revoke")?;
            r.key_id = sha2::Sha256::digest(&active.public_key).to_vec();
            Action::RevokeKey(r)
        }
        // A policy proposal keeps the list's other settings, read from its verified record.
        Action::Propose(pb::Propose {
            change:
                Some(pb::Change {
                    kind: Some(pb::change::Kind::SetListPolicy(mut p)),
                }),
        }) => {
            let approvals = p.policy.map_or(0, |p| p.admin_approvals);
            let mut policy = current_policy(&mut client, &p.list).await?;
            policy.admin_approvals = approvals;
            p.policy = Some(policy);
            Action::Propose(pb::Propose {
                change: Some(pb::Change {
                    kind: Some(pb::change::Kind::SetListPolicy(p)),
                }),
            })
        }
        a => a,
    };
    let name = action_name(&action);
    let tx = sign(&key, &chain_id, nonce, action);
    let ans = client.submit_tx(tx).await?.into_inner();
    let ans_hash = ans.tx_hash.clone();
    if ans.code != 0 {
        bail!(
            "the ledger rejected {name} (code {}): {}",
            ans.code,
            ans.log
        );
    }
    println!(
        "submitted {name} as {} nonce {nonce}: tx {}",
        address(&me),
        hex::encode(&ans.tx_hash)
    );
    if args.no_wait {
        return Ok(());
    }
    // Committed once the signer's nonce moved past this one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, height, record) = own_record(&mut client, &me).await?;
        let next = record.map_or(0, |r| r.next_nonce);
        if next > nonce {
            println!("committed at height {height}");
            // Applied transactions leave an event; a rejected one only spends its nonce.
            return if let Some(event) =
                applied(&mut client, &ans_hash, submitted_at + 1, height).await?
            {
                println!("applied");
                if ["propose", "propose_validator_update"].contains(&event.kind.as_str())
                    && let Ok(id) = <[u8; 8]>::try_from(event.subject.as_slice())
                {
                    println!("proposal {}", u64::from_be_bytes(id));
                }
                Ok(())
            } else {
                bail!(
                    "{name} was included at or before height {height} but the state machine rejected it (its nonce is spent); query the state to see why"
                )
            };
        }
        if Instant::now() > deadline {
            bail!("not committed after 30 s; is a block producer running?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The policy of `list` now (verified against the stated app hash).
async fn current_policy(client: &mut LedgerClient<Channel>, list: &str) -> Result<pb::ListPolicy> {
    // Height 0 asks for the latest state; the answer states the height and app hash it is
    // from, and the proof is checked against those (asking for the height a status call just
    // gave races a new block when that height is 0, which on the wire means "latest").
    let ans = client
        .get_list(pb::ListQuery {
            list: list.to_owned(),
            height: 0,
        })
        .await?
        .into_inner();
    let (height, root) = verify::stated_anchor(&ans)?;
    let record = verify::list_record(&root, height, list, &ans)?
        .with_context(|| format!("there is no list {list:?}"))?;
    Ok(record.policy.unwrap_or_default())
}

/// The chain id, the latest height, and `me`'s identity record at that height (verified
/// against the height's app hash).
async fn own_record(
    client: &mut LedgerClient<Channel>,
    me: &[u8; 32],
) -> Result<(String, u64, Option<pb::IdentityRecord>)> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    // Asked at height 0 (the latest) and checked against the anchor the answer states: see
    // `current_policy`.
    let ans = client
        .get_identity(pb::IdentityQuery {
            identity: me.to_vec(),
            height: 0,
        })
        .await?
        .into_inner();
    let (height, root) = verify::stated_anchor(&ans)?;
    Ok((
        status.chain_id,
        height,
        verify::identity_record(&root, height, me, &ans)?,
    ))
}

/// The event the transaction `hash` produced in heights `from..=to`, if it was applied.
async fn applied(
    client: &mut LedgerClient<Channel>,
    hash: &[u8],
    from: u64,
    to: u64,
) -> Result<Option<pb::LedgerEvent>> {
    let mut events = client
        .stream_events(pb::EventsQuery { from_height: from })
        .await?
        .into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), events.message()).await {
            Ok(Ok(Some(e))) if e.tx_hash == hash => return Ok(Some(e)),
            Ok(Ok(Some(e))) if e.height > to => return Ok(None),
            Ok(Ok(Some(_))) => continue,
            // Stream ended or no later event within 3 s: every height up to `to` was replayed.
            _ => return Ok(None),
        }
    }
}
