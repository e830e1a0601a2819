//! `onionpost query`: reads of the ledger through `onionpost-ledger-client`, printed only
//! after their proofs verified, with what the app hash they verified against rests on.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use onionpost::{address, default_checkpoint, parse_identity};
use onionpost_ledger_client::{
    At, Basis, Config, Direction, Genesis, GrpcLedger, Ledger, Membership, PathLimits, RootPolicy,
    TrustPath, TrustedRoot, Verified,
};
use onionpost_proto::v1 as pb;

/// The ledger servers to ask.
#[derive(Args)]
pub struct Endpoints {
    /// gRPC address of a ledger server; repeat it (or separate with commas) to give
    /// several, tried in turn when one is unreachable or lies.
    #[arg(
        long = "ledger",
        env = "ONIONPOST_LEDGER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9090"
    )]
    pub urls: Vec<String>,
}

/// What answers are checked against.
#[derive(Args)]
pub struct TrustArgs {
    /// The chain's genesis.json: check answers against app hashes certified by validators
    /// derived from it (walking the chain from the checkpoint, as `onionpost audit` does).
    #[arg(long, env = "ONIONPOST_GENESIS", conflicts_with = "trusted_root")]
    pub genesis: Option<PathBuf>,
    /// The checkpoint file (default: under $XDG_STATE_HOME/onionpost/, named by chain).
    #[arg(long, requires = "genesis")]
    pub checkpoint: Option<PathBuf>,
    /// Check answers against this app hash instead: HEIGHT:HEX.
    #[arg(long, value_parser = parse_trusted_root)]
    pub trusted_root: Option<TrustedRoot>,
}

impl TrustArgs {
    /// The ledger client these arguments ask for.
    pub fn client(&self, endpoints: &Endpoints) -> Result<GrpcLedger> {
        let (policy, checkpoint) = match (&self.genesis, self.trusted_root) {
            (Some(path), _) => {
                let genesis = Genesis::load(path)?;
                let checkpoint = match &self.checkpoint {
                    Some(c) => c.clone(),
                    None => default_checkpoint(&genesis)?,
                };
                (RootPolicy::Certified(genesis), Some(checkpoint))
            }
            (None, Some(t)) => (RootPolicy::Pinned(t), None),
            (None, None) => (RootPolicy::ServerStated, None),
        };
        let mut config = Config::new(endpoints.urls.clone(), policy);
        config.checkpoint = checkpoint;
        Ok(GrpcLedger::new(config)?)
    }
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(flatten)]
    trust: TrustArgs,
    /// Height to read at (default: the latest verified one).
    #[arg(long, default_value_t = 0)]
    height: u64,
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
    /// The trust statements an identity signed (or, with --incoming, received).
    Trust {
        identity: String,
        /// Statements others signed about IDENTITY.
        #[arg(long)]
        incoming: bool,
    },
    /// A shortest chain of unexpired trust statements FROM -> ... -> TO.
    TrustPath {
        from: String,
        to: String,
        /// Most statements on the path (1-6).
        #[arg(long, default_value_t = 4)]
        depth: u32,
        /// Least level of every statement (0 any, 1 marginal, 2 full).
        #[arg(long, default_value_t = 0)]
        min_level: u32,
    },
    /// A decided block and its commit certificate (validators only), verified: more than two
    /// thirds of the voting power signed it. With --genesis, against the validator set
    /// derived from genesis (then it certifies the app hash of the height before it);
    /// without, against the set the server claims.
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

/// The line that says what an answer was verified against.
fn verified<T>(v: &Verified<T>) {
    let basis = match v.basis {
        Basis::Certified => format!(
            "certified by block {} against the validator set derived from genesis",
            v.height + 1
        ),
        Basis::Pinned => "the trusted root".into(),
        Basis::ServerStated => "as stated by the server; pass --genesis to verify it".into(),
    };
    println!(
        "verified: proofs check against app hash {} at height {} ({basis})",
        hex::encode(v.root),
        v.height
    );
}

fn key(bytes: &[u8]) -> String {
    <[u8; 32]>::try_from(bytes).map_or_else(|_| hex::encode(bytes), |k| address(&k))
}

/// Runs a query; `Ok(false)` when the answer is a (proven) "no".
pub async fn run(args: QueryArgs) -> Result<bool> {
    let ledger = args.trust.client(&args.endpoints)?;
    let at = match args.height {
        0 => At::Latest,
        h => At::Height(h),
    };
    let found = match args.what {
        Query::Commit { height } => commit(&ledger, height.unwrap_or(0)).await?,
        Query::Status => {
            let v = ledger.root(at).await?;
            let chain_id = match ledger.chain() {
                Some(c) => c.chain_id().to_owned(),
                None => ledger.server_status().await?.chain_id,
            };
            println!(
                "chain {chain_id} height {} app hash {}",
                v.height,
                hex::encode(v.root)
            );
            verified(&v);
            true
        }
        Query::Identity { identity } => {
            let who = parse_identity(&identity)?;
            let v = ledger.identity(&who, at).await?;
            match &v.value {
                None => println!("{} is not registered", address(&who)),
                Some(i) => {
                    let r = &i.record;
                    println!("identity   {}", address(&who));
                    println!("name       {:?}", r.display_name);
                    println!("registered height {}", r.registered_height);
                    println!("next nonce {}", r.next_nonce);
                    let bound = if i.active_key().is_some() {
                        "bound"
                    } else {
                        "none"
                    };
                    println!("e2e key    {bound}");
                    for m in &i.mailbox_hosts {
                        println!("mailbox host {}", address(m));
                    }
                }
            }
            verified(&v);
            v.value.is_some()
        }
        Query::Member { list, identity } => {
            let who = parse_identity(&identity)?;
            let v = ledger.membership(&list, &who, at).await?;
            match &v.value {
                Membership::UnknownList => println!("no list named {list:?}"),
                Membership::NotMember { .. } => {
                    println!("{} is NOT a member of {list}", address(&who))
                }
                Membership::Member { record, .. } => println!(
                    "{} is a member of {list} since height {}",
                    address(&who),
                    record.added_height
                ),
            }
            verified(&v);
            v.value.is_member()
        }
        Query::Members { list } => {
            let v = ledger.list(&list, at).await?;
            match &v.value {
                None => println!("no list named {list:?}"),
                Some(l) => {
                    println!(
                        "list {} ({} members, {} admins)",
                        l.record.name,
                        l.members.len(),
                        l.record.admins.len()
                    );
                    for m in &l.members {
                        let admin = if l.is_admin(m) { "  (admin)" } else { "" };
                        println!("  {}{admin}", address(m));
                    }
                }
            }
            verified(&v);
            v.value.is_some()
        }
        Query::Keys { identity } => {
            let who = parse_identity(&identity)?;
            let v = ledger.identity(&who, at).await?;
            let entries = v
                .value
                .as_ref()
                .map_or(&[][..], |i| i.key_history.as_slice());
            println!(
                "{} key history entries for {}",
                entries.len(),
                address(&who)
            );
            for e in entries {
                let kind =
                    pb::key_history_entry::Kind::try_from(e.kind).map_or("?", |k| k.as_str_name());
                let reason = if e.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", e.reason)
                };
                println!(
                    "  #{} {kind} key {} at height {}{reason}",
                    e.seq,
                    hex::encode(&e.key_id),
                    e.height
                );
            }
            verified(&v);
            true
        }
        Query::Trust { identity, incoming } => {
            let who = parse_identity(&identity)?;
            let dir = if incoming {
                Direction::Incoming
            } else {
                Direction::Outgoing
            };
            let v = ledger.trust(&who, dir, at).await?;
            println!(
                "{} trust statements {} {}",
                v.value.len(),
                if incoming { "about" } else { "by" },
                address(&who)
            );
            for s in &v.value {
                let expiry = match s.expires_at {
                    0 => "never expires".to_owned(),
                    t => format!("expires at {t}"),
                };
                println!(
                    "  {} -> {} level {} since height {}, {expiry}",
                    key(&s.from),
                    key(&s.to),
                    s.level,
                    s.signed_height
                );
            }
            verified(&v);
            true
        }
        Query::TrustPath {
            from,
            to,
            depth,
            min_level,
        } => {
            let (from, to) = (parse_identity(&from)?, parse_identity(&to)?);
            let limits = PathLimits {
                max_depth: depth,
                min_level,
            };
            let v = ledger.trust_path(&from, &to, limits, at).await?;
            let found = match &v.value {
                TrustPath::NotFound => {
                    println!(
                        "the server found no trust path (a server can hide a path, never invent one)"
                    );
                    false
                }
                TrustPath::Found {
                    statements,
                    block_time,
                } => {
                    println!(
                        "trust path of {} statements, unexpired at block time {block_time}",
                        statements.len()
                    );
                    for s in statements {
                        println!("  {} -> {} level {}", key(&s.from), key(&s.to), s.level);
                    }
                    true
                }
            };
            verified(&v);
            found
        }
    };
    ledger.save_checkpoint().await?;
    Ok(found)
}

async fn commit(ledger: &GrpcLedger, height: u64) -> Result<bool> {
    let c = ledger
        .check_commit(height)
        .await
        .context("checking the commit certificate")?;
    let b = &c.block;
    println!(
        "block {} decided in round {}: {} of {} validators signed (total power {})",
        b.height,
        c.certificate.round,
        c.certificate.signatures.len(),
        c.validators.len(),
        c.validators.total_power()
    );
    println!(
        "block hash {}  txs {}  time {}",
        hex::encode(b.hash),
        b.txs.len(),
        b.time
    );
    let (h, root) = (b.certifies.height, hex::encode(b.certifies.root));
    if c.derived {
        let through = ledger.chain().map_or(0, |ch| ch.height());
        println!(
            "certified: app hash of height {h} is {root} (validator set derived from genesis; checkpoint at block {through})"
        );
        println!("use it: onionpost query --height {h} --trusted-root {h}:{root} ...");
    } else {
        println!(
            "signed by more than two thirds of the validator set as the server claims it, not one derived from genesis: \
             the app hash it names for height {h}, {root}, is not certified; pass --genesis (or run onionpost audit) to derive the set"
        );
    }
    Ok(true)
}
