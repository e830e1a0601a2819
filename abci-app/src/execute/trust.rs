//! Trust: statements one identity signs about another. Each is held whole in two indexes,
//! the signer's outgoing one and the target's incoming one ([`onionpost_proto::trust`]), so
//! one proof shows every statement an identity signed, or every statement about it, and
//! signing one writes three keys (the signer's record, for its nonce, and the two indexes).

use onionpost_proto::keys;
use onionpost_proto::trust::{TRUST_INDEX_VERSION, decode_index, position};
use onionpost_proto::v1::{RevokeTrust, SignTrust, TrustEntry, TrustIndex};

use super::{
    Exec, ExecError, ExecResult, MAX_TRUST_INCOMING, MAX_TRUST_OUTGOING, ReadError, StateRead,
    addr, identity_key,
};
use crate::error::TxError;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `sign_trust`: creates or replaces the signer's statement about the target.
    pub(super) fn sign_trust(&mut self, a: &SignTrust) -> ExecResult {
        let target = identity_key(&a.target, "trust target")?;
        self.event.subject = target.to_vec();
        if target == self.signer {
            return Err(TxError::Invalid("an identity cannot vouch for itself".into()).into());
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
        let (level, expires_at, signed_height) = (a.level, a.expires_at, self.ctx.height);
        let entry = move |other: [u8; 32]| TrustEntry {
            other: other.to_vec(),
            level,
            expires_at,
            signed_height,
        };
        let signer = self.signer;
        self.upsert_entry(
            keys::trust_outgoing(&signer),
            entry(target),
            MAX_TRUST_OUTGOING,
            "trust statements signed by one identity",
        )?;
        self.upsert_entry(
            keys::trust_incoming(&target),
            entry(signer),
            MAX_TRUST_INCOMING,
            "trust statements about one identity",
        )
    }

    /// `revoke_trust`: deletes the signer's statement from both indexes.
    pub(super) fn revoke_trust(&mut self, a: &RevokeTrust) -> ExecResult {
        let target = identity_key(&a.target, "trust target")?;
        self.event.subject = target.to_vec();
        let signer = self.signer;
        if !self.remove_entry(keys::trust_outgoing(&signer), &target)? {
            return Err(TxError::Conflict(format!(
                "there is no trust statement for {} to revoke",
                addr(&target)
            ))
            .into());
        }
        self.remove_entry(keys::trust_incoming(&target), &signer)?;
        Ok(())
    }

    /// The trust index at `key` (empty if there is none).
    fn trust_index(&self, key: &[u8]) -> ExecResult<TrustIndex> {
        match self.overlay.get(key)? {
            None => Ok(TrustIndex {
                version: TRUST_INDEX_VERSION,
                entries: Vec::new(),
            }),
            Some(bytes) => decode_index(&bytes).map_err(|e| {
                ExecError::Read(ReadError(format!(
                    "state value at {:?} is unreadable: {e}",
                    String::from_utf8_lossy(key)
                )))
            }),
        }
    }

    /// Puts `entry` into the index at `key`, replacing the one about the same identity; a new
    /// entry beyond `limit` is refused (code 14).
    fn upsert_entry(
        &mut self,
        key: Vec<u8>,
        entry: TrustEntry,
        limit: usize,
        what: &str,
    ) -> ExecResult {
        let mut index = self.trust_index(&key)?;
        match position(&index, &entry.other) {
            Ok(i) => index.entries[i] = entry,
            Err(_) if index.entries.len() >= limit => {
                return Err(TxError::Limit(format!("at most {limit} {what}")).into());
            }
            Err(i) => index.entries.insert(i, entry),
        }
        self.overlay.put(key, &index);
        Ok(())
    }

    /// Removes the entry about `other` from the index at `key` (the key goes with its last
    /// entry); whether there was one.
    fn remove_entry(&mut self, key: Vec<u8>, other: &[u8; 32]) -> ExecResult<bool> {
        let mut index = self.trust_index(&key)?;
        let Ok(i) = position(&index, other) else {
            return Ok(false);
        };
        index.entries.remove(i);
        if index.entries.is_empty() {
            self.overlay.delete(key);
        } else {
            self.overlay.put(key, &index);
        }
        Ok(true)
    }
}
