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
    BlockInfo, ChainConfig, E2eKey, IdentityRecord, IdentitySet, KeyHistoryEntry, LedgerEvent,
    ListRecord, MembershipRecord, ValidatorProposal, ValidatorSet, ValidatorUpdate,
    key_history_entry::Kind, tx_body::Action,
};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::TxError;

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
/// even though the coefficients are not; replicas cannot diverge through this.
pub fn verify_batch(txs: &[&DecodedTx]) -> Vec<bool> {
    let mut verifier = batch::Verifier::new();
    for tx in txs {
        verifier.queue((tx.verification_key.into(), tx.signature, &tx.digest[..]));
    }
    if verifier.verify(rand_core::OsRng).is_ok() {
        return vec![true; txs.len()];
    }
    txs.iter().map(|tx| tx.verify_signature()).collect()
}

/// Decodes a raw transaction and checks everything that needs no state: size, envelope,
/// chain id.
pub fn decode_checked(raw: &[u8], chain_id: &str) -> Result<DecodedTx, TxError> {
    if raw.len() > MAX_TX_BYTES {
        return Err(TxError::TooLarge {
            size: raw.len(),
            limit: MAX_TX_BYTES,
        });
    }
    let tx = DecodedTx::decode(raw)?;
    if tx.body.chain_id != chain_id {
        return Err(TxError::WrongChain {
            want: chain_id.to_owned(),
            got: tx.body.chain_id.clone(),
        });
    }
    Ok(tx)
}

/// Executes a block: verifies, applies each transaction in order, and records the block info.
pub fn execute_block<R: StateRead + ?Sized>(
    base: &R,
    ctx: &BlockContext,
    raw_txs: &[impl AsRef<[u8]>],
) -> Result<BlockOutcome, ReadError> {
    let decoded: Vec<Result<DecodedTx, TxError>> = raw_txs
        .iter()
        .map(|raw| decode_checked(raw.as_ref(), &ctx.chain_id))
        .collect();
    let to_verify: Vec<&DecodedTx> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    let mut verified = verify_batch(&to_verify).into_iter();

    let mut overlay = Overlay::new(base);
    let mut out = BlockOutcome::default();
    for (index, (raw, decoded)) in raw_txs.iter().zip(decoded).enumerate() {
        let hash = onionpost_proto::tx::tx_hash(raw.as_ref());
        let result = match decoded {
            Err(e) => Err(e),
            Ok(tx) => {
                let signature_ok = verified.next().unwrap_or(false);
                if signature_ok {
                    match apply_tx(&mut overlay, ctx, &tx, index as u32)? {
                        Ok(applied) => {
                            out.events.push(applied.event);
                            out.validator_updates.extend(applied.validator_updates);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Err(TxError::BadSignature {
                        signer: OnionAddress::from_public_key(tx.signer).hostname(),
                    })
                }
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
            if !is_register {
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

/// SHA-256 of an end-to-end key's public key material: its id in the key history.
pub fn e2e_key_id(key: &E2eKey) -> [u8; 32] {
    Sha256::digest(&key.public_key).into()
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

/// One transaction's application.
struct Exec<'o, 'a, R: ?Sized> {
    overlay: &'o mut Overlay<'a, R>,
    ctx: &'o BlockContext,
    signer: [u8; 32],
    event: LedgerEvent,
    validator_updates: Vec<ValidatorUpdate>,
}

type ExecResult<T = ()> = Result<T, ExecError>;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
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
            Action::RegisterIdentity(a) => {
                if a.display_name.chars().count() > MAX_DISPLAY_NAME {
                    return Err(TxError::Invalid(format!(
                        "display_name has more than {MAX_DISPLAY_NAME} characters"
                    ))
                    .into());
                }
                me.display_name = a.display_name.clone();
            }
            Action::BindKey(a) => {
                let key = checked_e2e_key(a.key.as_ref())?;
                if me.active_key.is_some() {
                    return Err(TxError::Conflict(
                        "an end-to-end key is already bound; use rotate_key to replace it".into(),
                    )
                    .into());
                }
                self.append_key_history(&mut me, Kind::Bind, key.clone(), String::new());
                me.active_key = Some(key);
            }
            Action::RotateKey(a) => {
                let key = checked_e2e_key(a.new_key.as_ref())?;
                let Some(active) = &me.active_key else {
                    return Err(TxError::Conflict(
                        "no end-to-end key is bound; use bind_key first".into(),
                    )
                    .into());
                };
                if e2e_key_id(active) == e2e_key_id(&key) {
                    return Err(
                        TxError::Invalid("the new key is the key already bound".into()).into(),
                    );
                }
                self.append_key_history(&mut me, Kind::Rotate, key.clone(), String::new());
                me.active_key = Some(key);
            }
            Action::RevokeKey(a) => {
                let Some(active) = me.active_key.clone() else {
                    return Err(
                        TxError::Conflict("no end-to-end key is bound to revoke".into()).into(),
                    );
                };
                if a.key_id != e2e_key_id(&active) {
                    return Err(TxError::Invalid(format!(
                        "key_id {} is not the active key {}",
                        hex::encode(&a.key_id),
                        hex::encode(e2e_key_id(&active))
                    ))
                    .into());
                }
                if a.reason.len() > MAX_REASON {
                    return Err(TxError::Invalid(format!(
                        "reason is longer than {MAX_REASON} bytes"
                    ))
                    .into());
                }
                self.append_key_history(&mut me, Kind::Revoke, active, a.reason.clone());
                me.active_key = None;
            }
            Action::SetMailboxHosts(a) => {
                if a.hosts.len() > MAX_MAILBOX_HOSTS {
                    return Err(TxError::Limit(format!(
                        "at most {MAX_MAILBOX_HOSTS} mailbox hosts, got {}",
                        a.hosts.len()
                    ))
                    .into());
                }
                let mut seen = Vec::new();
                for host in &a.hosts {
                    let host = identity_key(host, "mailbox host")?;
                    if host == self.signer {
                        return Err(TxError::Invalid(
                            "an identity cannot be its own mailbox host".into(),
                        )
                        .into());
                    }
                    if !sorted_insert(&mut seen, &host) {
                        return Err(TxError::Invalid(format!(
                            "mailbox host {} is named twice",
                            addr(&host)
                        ))
                        .into());
                    }
                    self.require_identity(&host)?;
                }
                me.mailbox_hosts = a.hosts.clone();
            }
            Action::SignTrust(a) => {
                let target = identity_key(&a.target, "trust target")?;
                self.event.subject = target.to_vec();
                if target == self.signer {
                    return Err(
                        TxError::Invalid("an identity cannot vouch for itself".into()).into(),
                    );
                }
                if !(1..=2).contains(&a.level) {
                    return Err(TxError::Invalid(format!(
                        "trust level must be 1 (marginal) or 2 (full), got {}",
                        a.level
                    ))
                    .into());
                }
                if a.expires_at != 0 && a.expires_at <= self.ctx.time {
                    return Err(TxError::Invalid(format!(
                        "expires_at {} is not after the block time {}",
                        a.expires_at, self.ctx.time
                    ))
                    .into());
                }
                self.require_identity(&target)?;
                self.set_index(
                    keys::trust_outgoing(&self.signer),
                    target,
                    true,
                    MAX_TRUST_OUTGOING,
                    "trust statements signed by one identity",
                )?;
                self.set_index(
                    keys::trust_incoming(&target),
                    self.signer,
                    true,
                    MAX_TRUST_INCOMING,
                    "trust statements about one identity",
                )?;
                self.overlay.put(
                    keys::trust(&self.signer, &target),
                    &onionpost_proto::v1::TrustStatement {
                        from: self.signer.to_vec(),
                        to: target.to_vec(),
                        level: a.level,
                        expires_at: a.expires_at,
                        signed_height: self.ctx.height,
                    },
                );
            }
            Action::RevokeTrust(a) => {
                let target = identity_key(&a.target, "trust target")?;
                self.event.subject = target.to_vec();
                let key = keys::trust(&self.signer, &target);
                if self.overlay.get(&key)?.is_none() {
                    return Err(TxError::Conflict(format!(
                        "there is no trust statement for {} to revoke",
                        addr(&target)
                    ))
                    .into());
                }
                self.overlay.delete(key);
                self.set_index(keys::trust_outgoing(&self.signer), target, false, 0, "")?;
                self.set_index(keys::trust_incoming(&target), self.signer, false, 0, "")?;
            }
            Action::CreateList(a) => {
                self.event.list = a.name.clone();
                if !keys::is_valid_list_name(&a.name) {
                    return Err(TxError::Invalid(format!(
                        "list name {:?} must be 1-64 characters of a-z, 0-9, '-' and '.'",
                        a.name
                    ))
                    .into());
                }
                if self.overlay.get(&keys::list(&a.name))?.is_some() {
                    return Err(
                        TxError::Conflict(format!("list {:?} exists already", a.name)).into(),
                    );
                }
                let list = ListRecord {
                    name: a.name.clone(),
                    admins: vec![self.signer.to_vec()],
                    policy: Some(a.policy.unwrap_or_default()),
                    created_height: self.ctx.height,
                    member_count: 0,
                };
                self.add_member(list, &self.signer.clone())?;
            }
            Action::AddMember(a) => {
                let member = identity_key(&a.member, "member")?;
                let list = self.admin_list(&a.list, &member)?;
                self.require_identity(&member)?;
                if self
                    .overlay
                    .get(&keys::membership(&a.list, &member))?
                    .is_some()
                {
                    return Err(TxError::Conflict(format!(
                        "{} is already a member of {:?}",
                        addr(&member),
                        a.list
                    ))
                    .into());
                }
                self.add_member(list, &member)?;
            }
            Action::RemoveMember(a) => {
                let member = identity_key(&a.member, "member")?;
                let mut list = self.list(&a.list, &member)?;
                let leaving = member == self.signer;
                if !leaving && !sorted_contains(&list.admins, &self.signer) {
                    return Err(TxError::Unauthorized(format!(
                        "only an admin of {:?} may remove another member",
                        a.list
                    ))
                    .into());
                }
                if self
                    .overlay
                    .get(&keys::membership(&a.list, &member))?
                    .is_none()
                {
                    return Err(TxError::Conflict(format!(
                        "{} is not a member of {:?}",
                        addr(&member),
                        a.list
                    ))
                    .into());
                }
                if sorted_contains(&list.admins, &member) {
                    return Err(TxError::Conflict(format!(
                        "{} is an admin of {:?}: remove_admin first",
                        addr(&member),
                        a.list
                    ))
                    .into());
                }
                self.overlay.delete(keys::membership(&a.list, &member));
                self.set_index(keys::list_members(&a.list), member, false, 0, "")?;
                list.member_count -= 1;
                self.overlay.put(keys::list(&a.list), &list);
            }
            Action::AddAdmin(a) => {
                let admin = identity_key(&a.admin, "admin")?;
                let mut list = self.admin_list(&a.list, &admin)?;
                if self
                    .overlay
                    .get(&keys::membership(&a.list, &admin))?
                    .is_none()
                {
                    return Err(TxError::Conflict(format!(
                        "{} is not a member of {:?}: add_member first",
                        addr(&admin),
                        a.list
                    ))
                    .into());
                }
                if list.admins.len() >= MAX_LIST_ADMINS {
                    return Err(TxError::Limit(format!(
                        "a list has at most {MAX_LIST_ADMINS} admins"
                    ))
                    .into());
                }
                if !sorted_insert(&mut list.admins, &admin) {
                    return Err(TxError::Conflict(format!(
                        "{} is already an admin of {:?}",
                        addr(&admin),
                        a.list
                    ))
                    .into());
                }
                self.overlay.put(keys::list(&a.list), &list);
            }
            Action::RemoveAdmin(a) => {
                let admin = identity_key(&a.admin, "admin")?;
                let mut list = self.list(&a.list, &admin)?;
                if admin != self.signer && !sorted_contains(&list.admins, &self.signer) {
                    return Err(TxError::Unauthorized(format!(
                        "only an admin of {:?} may remove another admin",
                        a.list
                    ))
                    .into());
                }
                if !sorted_remove(&mut list.admins, &admin) {
                    return Err(TxError::Conflict(format!(
                        "{} is not an admin of {:?}",
                        addr(&admin),
                        a.list
                    ))
                    .into());
                }
                if list.admins.is_empty() {
                    return Err(TxError::Conflict(format!(
                        "{} is the last admin of {:?}; add another admin first",
                        addr(&admin),
                        a.list
                    ))
                    .into());
                }
                self.overlay.put(keys::list(&a.list), &list);
            }
            Action::SetListPolicy(a) => {
                let mut list = self.admin_list(&a.list, &self.signer.clone())?;
                list.policy = Some(a.policy.unwrap_or_default());
                self.overlay.put(keys::list(&a.list), &list);
            }
            Action::ProposeValidatorUpdate(a) => {
                let admins = self.governing_admins()?;
                if a.updates.is_empty() || a.updates.len() > MAX_VALIDATOR_UPDATES {
                    return Err(TxError::Invalid(format!(
                        "a proposal carries 1 to {MAX_VALIDATOR_UPDATES} validator updates, got {}",
                        a.updates.len()
                    ))
                    .into());
                }
                let mut seen = Vec::new();
                for u in &a.updates {
                    let key = identity_key(&u.pub_key, "validator key")?;
                    if ed25519_consensus::VerificationKey::try_from(key).is_err() {
                        return Err(TxError::Invalid(format!(
                            "validator key {} is not a valid ed25519 key",
                            hex::encode(key)
                        ))
                        .into());
                    }
                    if u.power > MAX_VOTING_POWER {
                        return Err(TxError::Invalid(format!(
                            "voting power {} exceeds {MAX_VOTING_POWER}",
                            u.power
                        ))
                        .into());
                    }
                    if !sorted_insert(&mut seen, &key) {
                        return Err(TxError::Invalid(format!(
                            "validator {} appears twice in the proposal",
                            hex::encode(key)
                        ))
                        .into());
                    }
                }
                let next_key = keys::next_validator_proposal();
                let id = match self.overlay.get(&next_key)? {
                    Some(b) => u64::from_be_bytes(
                        b.as_slice()
                            .try_into()
                            .map_err(|_| ReadError("next proposal id is not 8 bytes".into()))?,
                    ),
                    None => 1,
                };
                self.overlay
                    .tx
                    .insert(next_key, Some((id + 1).to_be_bytes().to_vec()));
                let proposal = ValidatorProposal {
                    id,
                    updates: a.updates.clone(),
                    approvals: vec![self.signer.to_vec()],
                    executed: false,
                    proposed_height: self.ctx.height,
                };
                self.event.subject = id.to_be_bytes().to_vec();
                self.maybe_execute_proposal(proposal, &admins)?;
            }
            Action::ApproveValidatorUpdate(a) => {
                let admins = self.governing_admins()?;
                self.event.subject = a.proposal_id.to_be_bytes().to_vec();
                let Some(mut proposal) = self
                    .overlay
                    .get_record::<ValidatorProposal>(&keys::validator_proposal(a.proposal_id))?
                else {
                    return Err(TxError::Invalid(format!(
                        "there is no validator proposal {}",
                        a.proposal_id
                    ))
                    .into());
                };
                if proposal.executed {
                    return Err(TxError::Conflict(format!(
                        "validator proposal {} has already taken effect",
                        a.proposal_id
                    ))
                    .into());
                }
                if !sorted_insert(&mut proposal.approvals, &self.signer) {
                    return Err(TxError::Conflict(format!(
                        "{} has already approved proposal {}",
                        addr(&self.signer),
                        a.proposal_id
                    ))
                    .into());
                }
                self.maybe_execute_proposal(proposal, &admins)?;
            }
        }
        me.next_nonce += 1;
        self.overlay.put(keys::identity(&self.signer), &me);
        Ok(())
    }

    fn require_identity(&self, id: &[u8; 32]) -> ExecResult {
        if self.overlay.get(&keys::identity(id))?.is_none() {
            return Err(TxError::UnknownIdentity(addr(id)).into());
        }
        Ok(())
    }

    fn list(&mut self, name: &str, subject: &[u8; 32]) -> ExecResult<ListRecord> {
        self.event.list = name.to_owned();
        self.event.subject = subject.to_vec();
        self.overlay
            .get_record::<ListRecord>(&keys::list(name))?
            .ok_or_else(|| TxError::UnknownList(name.to_owned()).into())
    }

    fn admin_list(&mut self, name: &str, subject: &[u8; 32]) -> ExecResult<ListRecord> {
        let list = self.list(name, subject)?;
        if !sorted_contains(&list.admins, &self.signer) {
            return Err(TxError::Unauthorized(format!(
                "{} is not an admin of list {name:?}",
                addr(&self.signer)
            ))
            .into());
        }
        Ok(list)
    }

    fn add_member(&mut self, mut list: ListRecord, member: &[u8; 32]) -> ExecResult {
        self.event.list = list.name.clone();
        self.event.subject = member.to_vec();
        self.set_index(
            keys::list_members(&list.name),
            *member,
            true,
            MAX_LIST_MEMBERS,
            "members of one list",
        )?;
        self.overlay.put(
            keys::membership(&list.name, member),
            &MembershipRecord {
                list: list.name.clone(),
                member: member.to_vec(),
                added_height: self.ctx.height,
            },
        );
        list.member_count += 1;
        self.overlay.put(keys::list(&list.name), &list);
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

    fn append_key_history(
        &mut self,
        me: &mut IdentityRecord,
        kind: Kind,
        key: E2eKey,
        reason: String,
    ) {
        let seq = me.key_history_len;
        self.event.subject = e2e_key_id(&key).to_vec();
        self.overlay.put(
            keys::key_history(&self.signer, seq),
            &KeyHistoryEntry {
                seq,
                kind: kind as i32,
                key_id: e2e_key_id(&key).to_vec(),
                key: Some(key),
                height: self.ctx.height,
                time: self.ctx.time,
                reason,
            },
        );
        me.key_history_len += 1;
    }

    fn governing_admins(&mut self) -> ExecResult<Vec<Vec<u8>>> {
        let config: ChainConfig = self
            .overlay
            .get_record(&keys::chain_config())?
            .ok_or_else(|| ReadError("chain config missing from state".into()))?;
        let list = self.list(&config.governing_list, &self.signer.clone())?;
        if !sorted_contains(&list.admins, &self.signer) {
            return Err(TxError::Unauthorized(format!(
                "only admins of the governing list {:?} may change the validator set",
                config.governing_list
            ))
            .into());
        }
        Ok(list.admins)
    }

    /// Stores the proposal and, once more than two thirds of the current governing admins
    /// approved it, applies it to the validator set and reports the updates.
    fn maybe_execute_proposal(
        &mut self,
        mut proposal: ValidatorProposal,
        admins: &[Vec<u8>],
    ) -> ExecResult {
        let approving = proposal
            .approvals
            .iter()
            .filter(|a| sorted_contains(admins, a))
            .count();
        if approving * 3 > admins.len() * 2 {
            let mut set: ValidatorSet = self
                .overlay
                .get_record(&keys::validators())?
                .unwrap_or_default();
            for u in &proposal.updates {
                match set.validators.iter().position(|v| v.pub_key == u.pub_key) {
                    Some(i) if u.power == 0 => {
                        set.validators.remove(i);
                    }
                    Some(i) => set.validators[i].power = u.power,
                    None if u.power == 0 => {}
                    None => set.validators.push(u.clone()),
                }
            }
            set.validators.sort_by(|a, b| a.pub_key.cmp(&b.pub_key));
            if set.validators.is_empty() {
                return Err(
                    TxError::Conflict("the proposal would remove every validator".into()).into(),
                );
            }
            self.overlay.put(keys::validators(), &set);
            proposal.executed = true;
            self.validator_updates
                .extend(proposal.updates.iter().cloned());
        }
        self.overlay
            .put(keys::validator_proposal(proposal.id), &proposal);
        Ok(())
    }
}

fn checked_e2e_key(key: Option<&E2eKey>) -> Result<E2eKey, TxError> {
    let key = key.ok_or_else(|| TxError::Invalid("no key given".into()))?;
    if key.algorithm != "openpgp" {
        return Err(TxError::Invalid(format!(
            "key algorithm must be \"openpgp\", got {:?}",
            key.algorithm
        )));
    }
    if key.public_key.is_empty() || key.public_key.len() > MAX_E2E_KEY_BYTES {
        return Err(TxError::Invalid(format!(
            "public key must be 1 to {MAX_E2E_KEY_BYTES} bytes, got {}",
            key.public_key.len()
        )));
    }
    Ok(key.clone())
}

#[cfg(test)]
mod tests;
