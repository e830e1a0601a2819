//! End-to-end keys: bind, rotate and revoke the signer's OpenPGP key, each appended to its
//! key history, which only ever grows.

use onionpost_proto::keys;
use onionpost_proto::v1::{
    BindKey, E2eKey, IdentityRecord, KeyHistoryEntry, RevokeKey, RotateKey, key_history_entry::Kind,
};
use sha2::{Digest, Sha256};

use super::{Exec, ExecResult, MAX_E2E_KEY_BYTES, MAX_REASON, StateRead};
use crate::error::TxError;

/// SHA-256 of an end-to-end key's public key material: its id in the key history.
pub fn e2e_key_id(key: &E2eKey) -> [u8; 32] {
    Sha256::digest(&key.public_key).into()
}

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `bind_key`: the signer's first active key.
    pub(super) fn bind_key(&mut self, me: &mut IdentityRecord, a: &BindKey) -> ExecResult {
        let key = checked_e2e_key(a.key.as_ref())?;
        if me.active_key.is_some() {
            return Err(TxError::Conflict(
                "an end-to-end key is already bound; use rotate_key to replace it".into(),
            )
            .into());
        }
        self.append_key_history(me, Kind::Bind, key.clone(), String::new());
        me.active_key = Some(key);
        Ok(())
    }

    /// `rotate_key`: replaces the active key with another.
    pub(super) fn rotate_key(&mut self, me: &mut IdentityRecord, a: &RotateKey) -> ExecResult {
        let key = checked_e2e_key(a.new_key.as_ref())?;
        let Some(active) = &me.active_key else {
            return Err(
                TxError::Conflict("no end-to-end key is bound; use bind_key first".into()).into(),
            );
        };
        if e2e_key_id(active) == e2e_key_id(&key) {
            return Err(TxError::Invalid("the new key is the key already bound".into()).into());
        }
        self.append_key_history(me, Kind::Rotate, key.clone(), String::new());
        me.active_key = Some(key);
        Ok(())
    }

    /// `revoke_key`: the active key, named by its id so a stale revocation fails.
    pub(super) fn revoke_key(&mut self, me: &mut IdentityRecord, a: &RevokeKey) -> ExecResult {
        let Some(active) = me.active_key.clone() else {
            return Err(TxError::Conflict("no end-to-end key is bound to revoke".into()).into());
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
            return Err(
                TxError::Invalid(format!("reason is longer than {MAX_REASON} bytes")).into(),
            );
        }
        self.append_key_history(me, Kind::Revoke, active, a.reason.clone());
        me.active_key = None;
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
