//! Auditing a ledger from its genesis, trusting nothing a server says.
//!
//! Walks heights 1..=H: each block's commit certificate is checked against a validator set
//! the auditor derived itself, never the one the server reports. Heights 1 and 2 use the
//! genesis validators; the set of height h+1 is the ledger's `validators` record at height
//! h-1, proven against the app hash of h-1, which block h (just verified) certifies in its
//! `last_app_hash`. At the end every certified app hash is a root the auditor can pass as
//! `--trusted-root` to check any other answer.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use onionpost_proto::consensus::verify_commit;
use onionpost_proto::keys;
use onionpost_proto::proof::verify_record;
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{self as pb, ValidatorUpdate};
use serde::Deserialize;
use tonic::transport::Channel;

/// The part of a validator's `genesis.json` an auditor needs.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditGenesis {
    /// The chain id.
    pub chain_id: String,
    /// The genesis validators.
    pub validators: Vec<GenesisValidator>,
}

/// A genesis validator.
#[derive(Debug, Clone, Deserialize)]
pub struct GenesisValidator {
    /// ed25519 public key, hex.
    pub pub_key: String,
    /// Voting power.
    pub power: u64,
}

impl AuditGenesis {
    /// Reads a `genesis.json` (other fields are ignored).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).context("not a genesis.json with chain_id and validators")
    }

    fn validator_set(&self) -> Result<Vec<ValidatorUpdate>> {
        self.validators
            .iter()
            .map(|v| {
                Ok(ValidatorUpdate {
                    pub_key: hex::decode(&v.pub_key).with_context(|| {
                        format!("genesis validator key {:?} is not hex", v.pub_key)
                    })?,
                    power: v.power,
                })
            })
            .collect()
    }
}

/// What an audit established.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// The last height whose certificate was verified.
    pub height: u64,
    /// App hash of every height 0..height, each certified by the next block.
    pub certified_roots: BTreeMap<u64, [u8; 32]>,
    /// Heights at which the validator set changed, with the new set's size.
    pub set_changes: Vec<(u64, usize)>,
}

/// Audits heights 1..=`to` (default: the latest decided height) of the ledger behind
/// `client`. `progress` is called after each verified height.
pub async fn audit(
    client: &mut LedgerClient<Channel>,
    genesis: &AuditGenesis,
    to: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<AuditReport> {
    let top = match to {
        Some(h) => h,
        None => {
            let latest = client
                .get_commit(pb::CommitQuery { height: 0 })
                .await?
                .into_inner();
            latest
                .certificate
                .context("the latest commit has no certificate")?
                .height
        }
    };
    let genesis_set = genesis.validator_set()?;
    let mut sets: BTreeMap<u64, Vec<ValidatorUpdate>> = BTreeMap::new();
    sets.insert(1, genesis_set.clone());
    sets.insert(2, genesis_set);
    let mut roots = BTreeMap::new();
    let mut set_changes = Vec::new();
    for h in 1..=top {
        let commit = client
            .get_commit(pb::CommitQuery { height: h })
            .await
            .with_context(|| format!("fetching the commit of height {h}"))?
            .into_inner();
        if commit.chain_id != genesis.chain_id {
            bail!(
                "the server is on chain {:?}, the genesis says {:?}",
                commit.chain_id,
                genesis.chain_id
            );
        }
        let set = sets.get(&h).expect("derived before it is needed");
        let cert = commit
            .certificate
            .as_ref()
            .context("a commit without a certificate")?;
        let block = verify_commit(&genesis.chain_id, set, &commit.block, cert)
            .with_context(|| format!("height {h}"))?;
        let root: [u8; 32] = block
            .last_app_hash
            .as_slice()
            .try_into()
            .with_context(|| format!("block {h} names an app hash that is not 32 bytes"))?;
        roots.insert(h - 1, root);
        // The set of h+1 is the validators record at h-1 (genesis's for h+1 <= 2).
        if h >= 2 && h < top {
            let ans = client
                .get_validator_set(pb::HeightQuery { height: h - 1 })
                .await?
                .into_inner();
            let anchor = ans.anchor.context("an answer without an anchor")?;
            if anchor.height != h - 1 {
                bail!(
                    "asked for the validator set at {}, the server answered for {}",
                    h - 1,
                    anchor.height
                );
            }
            let proven: pb::ValidatorSet = verify_record(
                &root,
                &keys::validators(),
                ans.validators
                    .as_ref()
                    .context("an answer without a proof")?,
            )
            .with_context(|| format!("the validator set at height {}", h - 1))?
            .context("the ledger has no validator set")?;
            let next: Vec<ValidatorUpdate> = proven
                .validators
                .into_iter()
                .filter(|v| v.power > 0)
                .collect();
            if sets.get(&h).is_none_or(|prev| !same_set(prev, &next)) {
                set_changes.push((h + 1, next.len()));
            }
            sets.insert(h + 1, next);
        }
        progress(h);
    }
    Ok(AuditReport {
        height: top,
        certified_roots: roots,
        set_changes,
    })
}

fn same_set(a: &[ValidatorUpdate], b: &[ValidatorUpdate]) -> bool {
    let key = |v: &[ValidatorUpdate]| {
        let mut k: Vec<(Vec<u8>, u64)> = v.iter().map(|u| (u.pub_key.clone(), u.power)).collect();
        k.sort();
        k
    };
    key(a) == key(b)
}
