//! `onionpost`: the command line for people. Keys, ledger transactions, and queries whose
//! proofs are verified before anything is printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use onionpost::{
    Membership, TrustedRoot, address, parse_identity, read_key, root_of, verified_identity,
    verified_key_history, verified_members, verified_membership, write_new_key,
};
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
                  Without --trusted-root the proofs are checked against the app hash the server states, \
                  which shows the answer is consistent with that state; pass --trusted-root HEIGHT:HASH \
                  (from your own validator or a commit certificate) to check against a root you trust."
)]
struct Cli {
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
    Query(QueryArgs),
    /// Audit a validator network from its genesis: verify every block's commit certificate
    /// against validator sets derived from genesis and proven state (never the server's
    /// word), and print the certified app hashes.
    Audit {
        #[command(flatten)]
        ledger: Ledger,
        /// The chain's genesis.json (chain id and initial validators).
        #[arg(long)]
        genesis: PathBuf,
        /// Last height to audit (default: the latest decided one).
        #[arg(long)]
        to: Option<u64>,
    },
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
    /// The signer's key file.
    #[arg(long, env = "ONIONPOST_KEY")]
    key: PathBuf,
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
    /// Make a member an admin.
    AddAdmin { list: String, identity: String },
    /// Take admin rights away.
    RemoveAdmin { list: String, identity: String },
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    ledger: Ledger,
    /// Height to read at (default: latest).
    #[arg(long, default_value_t = 0)]
    height: u64,
    /// Check proofs against this app hash instead of the server's: HEIGHT:HEX.
    #[arg(long, value_parser = parse_trusted_root)]
    trusted_root: Option<TrustedRoot>,
    #[command(subcommand)]
    what: Query,
}

#[derive(Subcommand)]
enum Query {
    /// Chain id, height and app hash.
    Status,
    /// An identity's record.
    Identity { identity: String },
    /// Is IDENTITY a member of LIST? Exit status 0 if yes, 1 if not.
    Member { list: String, identity: String },
    /// All members of a list.
    Members { list: String },
    /// Every binding, rotation and revocation of an identity's end-to-end keys.
    Keys { identity: String },
    /// A decided block and its commit certificate (validators only), verified: more than two
    /// thirds of the voting power signed it. The block names the app hash of the height
    /// before it, so this certifies that app hash for --trusted-root.
    Commit {
        /// Height of the block (default: the latest decided one).
        height: Option<u64>,
    },
}

fn parse_trusted_root(s: &str) -> Result<TrustedRoot, String> {
    let (h, r) = s.split_once(':').ok_or("expected HEIGHT:HEX")?;
    let height = h.parse().map_err(|_| format!("{h:?} is not a height"))?;
    let root = hex::decode(r)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the app hash must be 64 hex characters")?;
    Ok(TrustedRoot { height, root })
}

async fn connect(l: &Ledger) -> Result<LedgerClient<Channel>> {
    LedgerClient::connect(l.ledger.clone())
        .await
        .with_context(|| format!("cannot reach the ledger at {}", l.ledger))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
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
        Command::Tx(args) => run_tx(args).await?,
        Command::Audit {
            ledger,
            genesis,
            to,
        } => {
            let text = std::fs::read(&genesis)
                .with_context(|| format!("cannot read {}", genesis.display()))?;
            let genesis = onionpost::audit::AuditGenesis::from_json(&text)?;
            let mut client = connect(&ledger).await?;
            let started = Instant::now();
            let report = onionpost::audit::audit(&mut client, &genesis, to, |h| {
                if h % 500 == 0 {
                    eprintln!("audited {h} heights ({:.0?})", started.elapsed());
                }
            })
            .await?;
            println!(
                "audited heights 1..={} of chain {}: every block is certified by more than two thirds of a validator set derived from genesis and proven state",
                report.height, genesis.chain_id
            );
            for (h, n) in &report.set_changes {
                println!("validator set changed at height {h}: {n} validators");
            }
            if let Some((h, root)) = report.certified_roots.last_key_value() {
                println!("certified app hash of height {h}: {}", hex::encode(root));
                println!(
                    "use it: onionpost query --height {h} --trusted-root {h}:{} ...",
                    hex::encode(root)
                );
            }
        }
        Command::Query(args) => {
            if !run_query(args).await? {
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

async fn run_tx(args: TxArgs) -> Result<()> {
    let key = read_key(&args.key)?;
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
            return if applied(&mut client, &ans_hash, submitted_at + 1, height).await? {
                println!("applied");
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
    let (root, height) = root_of(status.anchor.as_ref(), None)?;
    let ans = client
        .get_identity(pb::IdentityQuery {
            identity: me.to_vec(),
            height,
        })
        .await?
        .into_inner();
    Ok((status.chain_id, height, verified_identity(&root, me, &ans)?))
}

/// Whether the transaction `hash` produced an event in heights `from..=to`.
async fn applied(
    client: &mut LedgerClient<Channel>,
    hash: &[u8],
    from: u64,
    to: u64,
) -> Result<bool> {
    let mut events = client
        .stream_events(pb::EventsQuery { from_height: from })
        .await?
        .into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), events.message()).await {
            Ok(Ok(Some(e))) if e.tx_hash == hash => return Ok(true),
            Ok(Ok(Some(e))) if e.height > to => return Ok(false),
            Ok(Ok(Some(_))) => continue,
            // Stream ended or no later event within 3 s: every height up to `to` was replayed.
            _ => return Ok(false),
        }
    }
}

async fn run_query(args: QueryArgs) -> Result<bool> {
    let mut client = connect(&args.ledger).await?;
    let h = args.height;
    let trusted = args.trusted_root.as_ref();
    let verified = |root: [u8; 32], height: u64| {
        println!(
            "verified: proofs check against app hash {} at height {height}{}",
            hex::encode(root),
            if trusted.is_some() {
                " (trusted root)"
            } else {
                " (as stated by the server)"
            }
        )
    };
    match args.what {
        Query::Commit { height } => {
            let ans = client
                .get_commit(pb::CommitQuery {
                    height: height.unwrap_or(0),
                })
                .await?
                .into_inner();
            let cert = ans
                .certificate
                .as_ref()
                .context("the answer has no certificate")?;
            let block = onionpost_proto::consensus::verify_commit(
                &ans.chain_id,
                &ans.validators,
                &ans.block,
                cert,
            )?;
            let total: u64 = ans.validators.iter().map(|v| v.power).sum();
            println!(
                "block {} of chain {} decided in round {}: {} of {} validators signed (total power {total})",
                block.height,
                ans.chain_id,
                cert.round,
                cert.signatures.len(),
                ans.validators.len()
            );
            println!(
                "block hash {}  txs {}  time {}",
                hex::encode(&cert.block_hash),
                block.txs.len(),
                block.time
            );
            println!(
                "certified: app hash of height {} is {}",
                block.height.saturating_sub(1),
                hex::encode(&block.last_app_hash)
            );
            println!(
                "use it: onionpost query --height {} --trusted-root {}:{} ...",
                block.height.saturating_sub(1),
                block.height.saturating_sub(1),
                hex::encode(&block.last_app_hash)
            );
            println!(
                "note: the validator set is the one the server reports for that height; it is the ledger's validators record two heights earlier"
            );
        }
        Query::Status => {
            let s = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            let (root, height) = root_of(s.anchor.as_ref(), trusted)?;
            println!(
                "chain {} height {height} app hash {} mempool {}",
                s.chain_id,
                hex::encode(root),
                s.mempool_size
            );
        }
        Query::Identity { identity } => {
            let who = parse_identity(&identity)?;
            let ans = client
                .get_identity(pb::IdentityQuery {
                    identity: who.to_vec(),
                    height: h,
                })
                .await?
                .into_inner();
            let (root, height) = root_of(ans.anchor.as_ref(), trusted)?;
            match verified_identity(&root, &who, &ans)? {
                None => {
                    println!("{} is not registered", address(&who));
                    verified(root, height);
                    return Ok(false);
                }
                Some(r) => {
                    println!("identity   {}", address(&who));
                    println!("name       {:?}", r.display_name);
                    println!("registered height {}", r.registered_height);
                    println!("next nonce {}", r.next_nonce);
                    println!(
                        "e2e key    {}",
                        if r.active_key.is_some() {
                            "bound"
                        } else {
                            "none"
                        }
                    );
                    for m in &r.mailbox_hosts {
                        println!(
                            "mailbox host {}",
                            address(&m.as_slice().try_into().context("bad host key")?)
                        );
                    }
                }
            }
            verified(root, height);
        }
        Query::Member { list, identity } => {
            let who = parse_identity(&identity)?;
            let ans = client
                .check_membership(pb::MembershipQuery {
                    list: list.clone(),
                    identity: who.to_vec(),
                    height: h,
                })
                .await?
                .into_inner();
            let (root, height) = root_of(ans.anchor.as_ref(), trusted)?;
            let m = verified_membership(&root, &list, &who, &ans)?;
            match &m {
                Membership::UnknownList => println!("no list named {list:?}"),
                Membership::NotMember => println!("{} is NOT a member of {list}", address(&who)),
                Membership::Member(r) => println!(
                    "{} is a member of {list} since height {}",
                    address(&who),
                    r.added_height
                ),
            }
            verified(root, height);
            return Ok(matches!(m, Membership::Member(_)));
        }
        Query::Members { list } => {
            let ans = client
                .list_members(pb::ListQuery {
                    list: list.clone(),
                    height: h,
                })
                .await?
                .into_inner();
            let (root, height) = root_of(ans.anchor.as_ref(), trusted)?;
            match verified_members(&root, &list, &ans)? {
                None => {
                    println!("no list named {list:?}");
                    verified(root, height);
                    return Ok(false);
                }
                Some(onionpost::VerifiedList {
                    record: rec,
                    members,
                }) => {
                    println!(
                        "list {} ({} members, {} admins)",
                        rec.name,
                        members.len(),
                        rec.admins.len()
                    );
                    for m in members {
                        let admin = rec.admins.iter().any(|a| a.as_slice() == m);
                        println!("  {}{}", address(&m), if admin { "  (admin)" } else { "" });
                    }
                }
            }
            verified(root, height);
        }
        Query::Keys { identity } => {
            let who = parse_identity(&identity)?;
            let ans = client
                .get_key_history(pb::IdentityQuery {
                    identity: who.to_vec(),
                    height: h,
                })
                .await?
                .into_inner();
            let (root, height) = root_of(ans.anchor.as_ref(), trusted)?;
            let entries = verified_key_history(&root, &who, &ans)?;
            println!(
                "{} key history entries for {}",
                entries.len(),
                address(&who)
            );
            for e in entries {
                let kind =
                    pb::key_history_entry::Kind::try_from(e.kind).map_or("?", |k| k.as_str_name());
                println!(
                    "  #{} {kind} key {} at height {}{}",
                    e.seq,
                    hex::encode(&e.key_id),
                    e.height,
                    if e.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", e.reason)
                    }
                );
            }
            verified(root, height);
        }
    }
    Ok(true)
}
