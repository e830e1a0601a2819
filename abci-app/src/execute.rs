//! The ledger's state machine, free of I/O: transactions in, a write set and events out.
//!
//! [`execute_block`] takes a read-only view of the committed state ([`StateRead`]), the block's
//! context and its raw transactions. It batch-verifies every signature, then applies each
//! transaction in order to an [`Overlay`] and returns a [`BlockOutcome`]: per-transaction
//! results, the sorted write set for the storage layer to commit, validator-set updates and
//! events. Nothing here reads a clock, a random number (see [`verify_batch`]) or iterates an
//! unordered map, so every replica fed the same blocks computes the same writes.

use std::collections::BTreeMap;

use ed25519_consensus::batch;
use onionpost_proto::keys;
use onionpost_proto::onion::OnionAddress;
use onionpost_proto::tx::{DecodedTx, action_name};
use onionpost_proto::v1::{
    BlockInfo, IdentityRecord, IdentitySet, LedgerEvent, ValidatorUpdate, tx_body::Action,
};
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::TxError;

mod e2e_keys;
mod governance;
mod identities;
mod lists;
mod mailbox;
mod trust;
mod validators;

pub use e2e_keys::e2e_key_id;
pub use governance::{PROPOSAL_LIFETIME_BLOCKS, required_approvals};

/// Largest encoded transaction accepted.
pub const MAX_TX_BYTES: usize = 16 * 1024;
/// Largest end-to-end public key accepted.
pub const MAX_E2E_KEY_BYTES: usize = 8 * 1024;
/// Most mailbox hosts an identity may name.
pub const MAX_MAILBOX_HOSTS: usize = 8;
/// Most trust statements one identity may have signed and not revoked.
pub const MAX_TRUST_OUTGOING: usize = 1_000;
/// Most trust statements one identity may receive.
pub const MAX_TRUST_INCOMING: usize = 10_000;
/// Most members of a list.
pub const MAX_LIST_MEMBERS: usize = 10_000;
/// Most admins of a list.
pub const MAX_LIST_ADMINS: usize = 64;
/// Most validator updates in one proposal.
pub const MAX_VALIDATOR_UPDATES: usize = 16;
/// Largest voting power of one validator.
pub const MAX_VOTING_POWER: u64 = 1_000_000;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 64;
/// Longest revocation reason, in bytes.
pub const MAX_REASON: usize = 256;

/// A storage read failed. Fatal for the block: the node must stop rather than guess.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading ledger state failed: {0}")]
pub struct ReadError(pub String);

/// Read access to committed state.
pub trait StateRead {
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError>;
}

impl StateRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// A sorted write set: `None` deletes the key.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Uncommitted writes layered over committed state, with per-transaction rollback.
pub struct Overlay<'a, R: ?Sized> {
    base: &'a R,
    committed: WriteSet,
    tx: WriteSet,
}

impl<'a, R: StateRead + ?Sized> Overlay<'a, R> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a R) -> Self {
        Self::with_writes(base, WriteSet::new())
    }

    /// An overlay over `base` that starts with earlier `writes` (e.g. the mempool's check state).
    pub fn with_writes(base: &'a R, writes: WriteSet) -> Self {
        Self {
            base,
            committed: writes,
            tx: WriteSet::new(),
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        if let Some(v) = self.tx.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.committed.get(key) {
            return Ok(v.clone());
        }
        self.base.get(key)
    }

    fn get_record<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, ExecError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => M::decode(bytes.as_slice()).map(Some).map_err(|e| {
                ExecError::Read(ReadError(format!(
                    "state value at {:?} is corrupt: {e}",
                    String::from_utf8_lossy(key)
                )))
            }),
        }
    }

    fn put<M: Message>(&mut self, key: Vec<u8>, record: &M) {
        self.tx.insert(key, Some(record.encode_to_vec()));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.tx.insert(key, None);
    }

    /// Keeps the current transaction's writes.
    pub fn commit_tx(&mut self) {
        let tx = std::mem::take(&mut self.tx);
        self.committed.extend(tx);
    }

    /// Drops the current transaction's writes.
    pub fn discard_tx(&mut self) {
        self.tx.clear();
    }

    /// All kept writes.
    pub fn into_writes(mut self) -> WriteSet {
        self.discard_tx();
        self.committed
    }
}

/// What a transaction's application failed on: a rejection, or a read failure that aborts
/// the whole block.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The transaction is rejected; the block goes on.
    #[error(transparent)]
    Rejected(#[from] TxError),
    /// Storage failed; the block cannot be executed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Where a block stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockContext {
    /// This ledger's chain id.
    pub chain_id: String,
    /// The block's height.
    pub height: u64,
    /// The block's time (from the proposer, agreed by consensus), Unix seconds.
    pub time: u64,
}

/// The result of one transaction.
#[derive(Debug, Clone)]
pub struct TxOutcome {
    /// SHA-256 of the transaction's bytes as sent.
    pub hash: [u8; 32],
    /// `Ok` or why it was rejected.
    pub result: Result<(), TxError>,
}

/// Everything a block did.
#[derive(Debug, Clone, Default)]
pub struct BlockOutcome {
    /// One per transaction, in block order.
    pub tx_results: Vec<TxOutcome>,
    /// The state writes, sorted by key.
    pub writes: WriteSet,
    /// Validator-set changes approved in this block (the engine applies them at h+2).
    pub validator_updates: Vec<ValidatorUpdate>,
    /// One event per successful transaction.
    pub events: Vec<LedgerEvent>,
}

/// Verifies every signature of a block in one batch and, only if the batch fails, one by one
/// to find the bad ones. Returns one flag per transaction.
///
/// The batch equation uses random coefficients: ed25519-consensus guarantees that batch and
/// single verification accept exactly the same signatures, so the *outcome* is deterministic
/// even though the coefficients are not; replicas cannot diverge through this. The
/// coefficients come from a ChaCha generator seeded by the operating system once per batch
/// (rand's `StdRng`): as unpredictable to whoever made the signatures as the system's own
/// generator, without a `getrandom` system call for each signature's 16 bytes.
pub fn verify_batch(txs: &[&DecodedTx]) -> Vec<bool> {
    let mut verifier = batch::Verifier::new();
    for tx in txs {
        verifier.queue((tx.verification_key_bytes(), tx.signature, &tx.digest[..]));
    }
    if verifier.verify(StdRng::from_entropy()).is_ok() {
        return vec![true; txs.len()];
    }
    txs.iter().map(|tx| tx.verify_signature()).collect()
}

/// Decodes a raw transaction and checks everything that needs no state: size, envelope,
/// chain id.
pub fn decode_checked(raw: &[u8], chain_id: &str) -> Result<DecodedTx, TxError> {
    check_size(raw)?;
    let tx = DecodedTx::decode(raw)?;
    check_chain(&tx, chain_id)?;
    Ok(tx)
}

/// [`decode_checked`] for a block's transaction, whose signature goes into the block's
/// batch verification: the signer's key is not decompressed here, since the batch does it
/// anyway (a point decompression per transaction saved). The outcome is the same as
/// [`decode_checked`]'s, the same error included: a transaction with an invalid key fails
/// the batch, and [`execute_block`] then names it with the error [`decode_checked`] gives.
fn decode_for_block(raw: &[u8], chain_id: &str) -> Result<DecodedTx, TxError> {
    check_size(raw)?;
    let tx = match DecodedTx::decode_deferring_key_check(raw) {
        Ok(tx) => tx,
        // The error the full decoding gives, in the order it checks things.
        Err(e) => return Err(DecodedTx::decode(raw).err().unwrap_or(e).into()),
    };
    if tx.body.chain_id != chain_id && !tx.key_is_valid() {
        // decode_checked refuses an invalid key before it looks at the chain id.
        return Err(onionpost_proto::tx::EnvelopeError::SignerKey.into());
    }
    check_chain(&tx, chain_id)?;
    Ok(tx)
}

fn check_size(raw: &[u8]) -> Result<(), TxError> {
    if raw.len() > MAX_TX_BYTES {
        return Err(TxError::TooLarge {
            size: raw.len(),
            limit: MAX_TX_BYTES,
        });
    }
    Ok(())
}

fn check_chain(tx: &DecodedTx, chain_id: &str) -> Result<(), TxError> {
    if tx.body.chain_id != chain_id {
        return Err(TxError::WrongChain {
            want: chain_id.to_owned(),
            got: tx.body.chain_id.clone(),
        });
    }
    Ok(())
}

/// Executes a block: verifies, applies each transaction in order, and records the block info.
pub fn execute_block<R: StateRead + ?Sized>(
    base: &R,
    ctx: &BlockContext,
    raw_txs: &[impl AsRef<[u8]>],
) -> Result<BlockOutcome, ReadError> {
    let decoded: Vec<Result<DecodedTx, TxError>> = raw_txs
        .iter()
        .map(|raw| decode_for_block(raw.as_ref(), &ctx.chain_id))
        .collect();
    let to_verify: Vec<&DecodedTx> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    let mut verified = verify_batch(&to_verify).into_iter();

    let mut overlay = Overlay::new(base);
    let mut out = BlockOutcome::default();
    for (index, (raw, decoded)) in raw_txs.iter().zip(decoded).enumerate() {
        let (hash, result) = match decoded {
            Err(e) => (onionpost_proto::tx::tx_hash(raw.as_ref()), Err(e)),
            Ok(tx) => {
                let signature_ok = verified.next().unwrap_or(false);
                let result = if signature_ok {
                    match apply_tx(&mut overlay, ctx, &tx, index as u32)? {
                        Ok(applied) => {
                            out.events.push(applied.event);
                            out.validator_updates.extend(applied.validator_updates);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else if !tx.key_is_valid() {
                    // What decode_checked says of it (the batch did not look at it alone).
                    Err(onionpost_proto::tx::EnvelopeError::SignerKey.into())
                } else {
                    Err(TxError::BadSignature {
                        signer: OnionAddress::from_public_key(tx.signer).hostname(),
                    })
                };
                (tx.hash, result)
            }
        };
        out.tx_results.push(TxOutcome { hash, result });
    }
    overlay.put(
        keys::block_info(),
        &BlockInfo {
            height: ctx.height,
            time: ctx.time,
            tx_count: raw_txs.len() as u32,
        },
    );
    overlay.commit_tx();
    out.writes = overlay.into_writes();
    Ok(out)
}

/// What one successful transaction produced.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Its event.
    pub event: LedgerEvent,
    /// Validator-set changes it completed (only an approved validator proposal has any).
    pub validator_updates: Vec<ValidatorUpdate>,
}

/// Applies one transaction whose signature is already verified. Its writes are kept in the
/// overlay when it succeeds and dropped when it is rejected, except that a transaction from a
/// known signer with the right nonce consumes that nonce even if its action is rejected: the
/// signed intent is spent and can never be replayed later, when it might succeed.
///
/// The outer `Result` is a storage failure (fatal); the inner one the transaction's fate.
pub fn apply_tx<R: StateRead + ?Sized>(
    overlay: &mut Overlay<'_, R>,
    ctx: &BlockContext,
    tx: &DecodedTx,
    tx_index: u32,
) -> Result<Result<Applied, TxError>, ReadError> {
    apply(overlay, ctx, tx, tx_index, OnReject::SpendNonce)
}

/// CheckTx's dry run of one transaction (signature already verified) on the mempool's check
/// state: like [`apply_tx`] but a refused transaction leaves no trace, not even a spent
/// nonce. It never enters the mempool, so the signer's next transaction must still carry
/// this nonce; in a block, by contrast, a rejected transaction is on the chain for good and
/// its nonce must be spent.
pub fn check_tx<R: StateRead + ?Sized>(
    overlay: &mut Overlay<'_, R>,
    ctx: &BlockContext,
    tx: &DecodedTx,
) -> Result<Result<Applied, TxError>, ReadError> {
    apply(overlay, ctx, tx, 0, OnReject::LeaveNoTrace)
}

/// What a rejected transaction leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnReject {
    /// Its nonce is spent (in a block).
    SpendNonce,
    /// Nothing (in CheckTx).
    LeaveNoTrace,
}

fn apply<R: StateRead + ?Sized>(
    overlay: &mut Overlay<'_, R>,
    ctx: &BlockContext,
    tx: &DecodedTx,
    tx_index: u32,
    on_reject: OnReject,
) -> Result<Result<Applied, TxError>, ReadError> {
    let signer = tx.signer;
    let existing: Option<IdentityRecord> = match overlay.get_record(&keys::identity(&signer)) {
        Ok(r) => r,
        Err(ExecError::Read(e)) => return Err(e),
        Err(ExecError::Rejected(e)) => return Ok(Err(e)),
    };
    let is_register = matches!(tx.action, Action::RegisterIdentity(_));
    let expected_nonce = match (&existing, is_register) {
        (Some(_), true) => return Ok(Err(TxError::AlreadyRegistered(addr(&signer)))),
        (Some(rec), false) => rec.next_nonce,
        (None, true) => 0,
        (None, false) => return Ok(Err(TxError::UnknownSigner(addr(&signer)))),
    };
    let nonce = tx.body.nonce;
    if nonce < expected_nonce {
        return Ok(Err(TxError::NonceReplayed {
            signer: addr(&signer),
            expected: expected_nonce,
            got: nonce,
        }));
    }
    if nonce > expected_nonce {
        return Ok(Err(TxError::NonceGap {
            signer: addr(&signer),
            expected: expected_nonce,
            got: nonce,
        }));
    }

    let mut exec = Exec {
        overlay,
        ctx,
        signer,
        event: LedgerEvent {
            height: ctx.height,
            tx_index,
            tx_hash: tx.hash.to_vec(),
            signer: signer.to_vec(),
            kind: action_name(&tx.action).to_owned(),
            ..Default::default()
        },
        validator_updates: Vec::new(),
    };
    let result = exec.action(&tx.action, existing);
    let (event, validator_updates) = (exec.event, exec.validator_updates);
    match result {
        Ok(()) => {
            overlay.commit_tx();
            Ok(Ok(Applied {
                event,
                validator_updates,
            }))
        }
        Err(ExecError::Read(e)) => Err(e),
        Err(ExecError::Rejected(e)) => {
            overlay.discard_tx();
            if !is_register && on_reject == OnReject::SpendNonce {
                // Spend the nonce of the rejected action.
                let key = keys::identity(&signer);
                let mut rec: IdentityRecord = match overlay.get_record(&key) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(Err(e)),
                    Err(ExecError::Read(re)) => return Err(re),
                    Err(ExecError::Rejected(_)) => return Ok(Err(e)),
                };
                rec.next_nonce += 1;
                overlay.put(key, &rec);
                overlay.commit_tx();
            }
            Ok(Err(e))
        }
    }
}

fn addr(key: &[u8; 32]) -> String {
    OnionAddress::from_public_key(*key).hostname()
}

fn identity_key(bytes: &[u8], what: &str) -> Result<[u8; 32], TxError> {
    bytes.try_into().map_err(|_| {
        TxError::Invalid(format!(
            "{what} must be a 32-byte identity key, got {} bytes",
            bytes.len()
        ))
    })
}

fn sorted_insert(set: &mut Vec<Vec<u8>>, item: &[u8]) -> bool {
    match set.binary_search_by(|k| k.as_slice().cmp(item)) {
        Ok(_) => false,
        Err(pos) => {
            set.insert(pos, item.to_vec());
            true
        }
    }
}

fn sorted_remove(set: &mut Vec<Vec<u8>>, item: &[u8]) -> bool {
    match set.binary_search_by(|k| k.as_slice().cmp(item)) {
        Ok(pos) => {
            set.remove(pos);
            true
        }
        Err(_) => false,
    }
}

fn sorted_contains(set: &[Vec<u8>], item: &[u8]) -> bool {
    set.binary_search_by(|k| k.as_slice().cmp(item)).is_ok()
}

/// One transaction's application: the overlay, the block, the signer, and what the action
/// has produced so far. Each domain's actions are methods in their own module.
struct Exec<'o, 'a, R: ?Sized> {
    overlay: &'o mut Overlay<'a, R>,
    ctx: &'o BlockContext,
    signer: [u8; 32],
    event: LedgerEvent,
    validator_updates: Vec<ValidatorUpdate>,
}

type ExecResult<T = ()> = Result<T, ExecError>;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// Applies `action` for the signer, whose record is `existing` (`None` only for a
    /// registration), then advances the signer's nonce.
    fn action(&mut self, action: &Action, existing: Option<IdentityRecord>) -> ExecResult {
        let mut me = match existing {
            Some(rec) => rec,
            None => IdentityRecord {
                public_key: self.signer.to_vec(),
                registered_height: self.ctx.height,
                ..Default::default()
            },
        };
        match action {
            Action::RegisterIdentity(a) => self.register_identity(&mut me, a)?,
            Action::BindKey(a) => self.bind_key(&mut me, a)?,
            Action::RotateKey(a) => self.rotate_key(&mut me, a)?,
            Action::RevokeKey(a) => self.revoke_key(&mut me, a)?,
            Action::SetMailboxHosts(a) => self.set_mailbox_hosts(&mut me, a)?,
            Action::SignTrust(a) => self.sign_trust(a)?,
            Action::RevokeTrust(a) => self.revoke_trust(a)?,
            Action::CreateList(a) => self.create_list(a)?,
            Action::AddMember(a) => self.add_member(a)?,
            Action::RemoveMember(a) => self.remove_member(a)?,
            Action::AddAdmin(a) => self.add_admin(a)?,
            Action::RemoveAdmin(a) => self.remove_admin(a)?,
            Action::SetListPolicy(a) => self.set_list_policy(a)?,
            Action::ProposeValidatorUpdate(a) => self.propose_validator_update(a)?,
            Action::Propose(a) => self.propose(a)?,
            Action::Approve(a) => self.approve(a)?,
        }
        me.next_nonce += 1;
        self.overlay.put(keys::identity(&self.signer), &me);
        Ok(())
    }

    /// Adds `item` to (or removes it from) the sorted identity set at `key`.
    fn set_index(
        &mut self,
        key: Vec<u8>,
        item: [u8; 32],
        add: bool,
        limit: usize,
        what: &str,
    ) -> ExecResult {
        let mut set: IdentitySet = self.overlay.get_record(&key)?.unwrap_or_default();
        if add {
            if !sorted_contains(&set.keys, &item) && set.keys.len() >= limit {
                return Err(TxError::Limit(format!("at most {limit} {what}")).into());
            }
            sorted_insert(&mut set.keys, &item);
        } else {
            sorted_remove(&mut set.keys, &item);
        }
        if set.keys.is_empty() {
            self.overlay.delete(key);
        } else {
            self.overlay.put(key, &set);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
