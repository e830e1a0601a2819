//! Auditing a chain from genesis, trusting nothing a server says, and playing the
//! key-directory auditor.
//!
//! [`audit`] walks every block from the checkpoint (or genesis) to the latest one, checking
//! each certificate against the validator set derived from genesis (see [`crate::chain`]),
//! and keeps the checkpoint, so the next run costs only the new blocks. It then checks key
//! histories: for each identity it audits, the history is verified at every height where a
//! certified block carries a key transaction signed by that identity, and at the last
//! certified height of every run, and each time compared with everything proven before
//! ([`crate::KeyDirectory`]). Any entry that changed or vanished is reported as a
//! [`Rewrite`].
//!
//! "All identities" is the set this auditor can name without trusting anyone: the
//! identities registered at genesis, and every signer of a transaction in a certified
//! block (a key history only ever changes through its owner's own transactions).

use futures::StreamExt;
use onionpost_proto::v1::{self as pb, tx_body::Action};
use prost::Message;

use crate::IdentityKey;
use crate::chain::{CertifiedRoot, VerifiedBlock};
use crate::error::Error;
use crate::grpc::GrpcLedger;
use crate::keydir::{Growth, Rewrite};
use crate::ledger::At;

/// Which key histories to audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAudit {
    /// None: only the chain of certificates.
    Skip,
    /// Every identity the auditor can name (see the module documentation).
    All,
    /// These identities.
    Identities(Vec<IdentityKey>),
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Last block to verify (default: the latest the servers report).
    pub to: Option<u64>,
    /// Which key histories to check.
    pub keys: KeyAudit,
}

/// What an audit established.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// The last block verified before this run (0: this run started at genesis).
    pub resumed_from: u64,
    /// The last block verified now.
    pub height: u64,
    /// The latest certified app hash (of `height - 1`).
    pub certified: CertifiedRoot,
    /// Validator-set changes found in this run: the first height each new set decides,
    /// and its size.
    pub set_changes: Vec<(u64, usize)>,
    /// Key histories checked at the final height.
    pub identities_checked: usize,
    /// Key-history checks made in all (at key transactions and at the final height).
    pub key_checks: usize,
    /// Histories that gained entries since they were last checked.
    pub histories_grown: usize,
    /// Entries that did not stay as they were proven.
    pub rewrites: Vec<Rewrite>,
}

/// The signer of an encoded transaction, and whether it may change the signer's key
/// history (a key action, or an action this build does not know).
fn key_actor(tx: &[u8]) -> Option<(IdentityKey, bool)> {
    let signed = pb::SignedTx::decode(tx).ok()?;
    let signer: IdentityKey = signed.signer.as_slice().try_into().ok()?;
    let body = pb::TxBody::decode(signed.body.as_slice()).ok()?;
    let keys = matches!(
        body.action,
        None | Some(Action::BindKey(_) | Action::RotateKey(_) | Action::RevokeKey(_))
    );
    Some((signer, keys))
}

/// Audits the chain behind `ledger` (which must use the certified policy) and writes its
/// checkpoint. `progress` is called with each verified block's height.
pub async fn audit(
    ledger: &GrpcLedger,
    opts: &AuditOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<AuditReport, Error> {
    let start = ledger
        .chain()
        .ok_or_else(|| Error::Config("an audit needs the certified policy (a genesis)".into()))?;
    let resumed_from = start.height();
    let mut actors: Vec<(u64, IdentityKey, bool)> = Vec::new();
    let mut observe = |b: &VerifiedBlock| {
        actors.extend(
            b.txs
                .iter()
                .filter_map(|tx| key_actor(tx))
                .map(|(who, keys)| (b.height, who, keys)),
        );
        progress(b.height);
    };
    let synced = ledger.sync_to(opts.to, &mut observe).await;

    let audited = |who: &IdentityKey| match &opts.keys {
        KeyAudit::Skip => false,
        KeyAudit::All => true,
        KeyAudit::Identities(ids) => ids.contains(who),
    };
    match &opts.keys {
        KeyAudit::Skip => {}
        KeyAudit::All => {
            for who in ledger.genesis_identities() {
                ledger.track_identity(*who);
            }
            for (_, who, _) in &actors {
                ledger.track_identity(*who);
            }
        }
        KeyAudit::Identities(ids) => {
            for who in ids {
                ledger.track_identity(*who);
            }
        }
    }
    // Checks at the heights of key transactions in the blocks verified (even if a later
    // block failed: what was verified stays verified, and goes into the checkpoint).
    ledger
        .with_pending(|pending| {
            pending.extend(
                actors
                    .iter()
                    .filter(|(_, who, keys)| *keys && audited(who))
                    .map(|(h, who, _)| (*h, *who)),
            );
            pending.sort();
            pending.dedup();
        })
        .await;
    let certified = match synced {
        Ok(c) => c,
        Err(e) => {
            ledger.save_checkpoint().await?;
            return Err(e);
        }
    };
    let chain = ledger.chain().ok_or(Error::NothingCertified)?;
    let set_changes = chain
        .set_history()
        .iter()
        .filter(|(from, _)| *from > resumed_from + 1)
        .map(|(from, set)| (*from, set.len()))
        .collect();
    // Those of the last block wait for the next run, when its app hash is certified.
    let mut due = ledger
        .with_pending(|pending| {
            let later = pending.split_off(pending.partition_point(|(h, _)| *h <= certified.height));
            std::mem::replace(pending, later)
        })
        .await
        .unwrap_or_default();
    let finals: Vec<IdentityKey> = match &opts.keys {
        KeyAudit::Skip => Vec::new(),
        KeyAudit::All => ledger.key_directory().tracked().copied().collect(),
        KeyAudit::Identities(ids) => ids.clone(),
    };
    let identities_checked = finals.len();
    due.extend(finals.into_iter().map(|who| (certified.height, who)));

    let results: Vec<Result<Result<Growth, Rewrite>, Error>> = futures::stream::iter(due)
        .map(|(h, who)| async move {
            let v = ledger.identity_with_digests(&who, At::Height(h)).await?;
            Ok(ledger.observe_keys(&who, v.height, &v.value.1))
        })
        .buffered(16)
        .collect()
        .await;
    let mut report = AuditReport {
        resumed_from,
        height: chain.height(),
        certified,
        set_changes,
        identities_checked,
        key_checks: results.len(),
        histories_grown: 0,
        rewrites: Vec::new(),
    };
    for r in results {
        match r? {
            Ok(Growth::Grew { .. }) => report.histories_grown += 1,
            Ok(_) => {}
            Err(rewrite) => report.rewrites.push(rewrite),
        }
    }
    ledger.save_checkpoint().await?;
    Ok(report)
}
