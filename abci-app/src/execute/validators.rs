//! Validators: the checks and the effect of a validator-set change. Who may make one, and
//! when it takes effect, is [`super::governance`]'s business.

use onionpost_proto::keys;
use onionpost_proto::v1::{
    Change, Propose, ProposeValidatorUpdate, ValidatorSet, ValidatorUpdate, change::Kind,
};

use super::{
    Exec, ExecResult, MAX_VALIDATOR_UPDATES, MAX_VOTING_POWER, StateRead, identity_key,
    sorted_insert,
};
use crate::error::TxError;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `propose_validator_update`: shorthand for `propose` with a validator-update change.
    pub(super) fn propose_validator_update(&mut self, a: &ProposeValidatorUpdate) -> ExecResult {
        self.propose(&Propose {
            change: Some(Change {
                kind: Some(Kind::ValidatorUpdate(a.clone())),
            }),
        })
    }

    /// Checks the updates of a proposal: 1 to [`MAX_VALIDATOR_UPDATES`] distinct valid
    /// ed25519 keys with at most [`MAX_VOTING_POWER`] each.
    pub(super) fn check_validator_updates(&self, updates: &[ValidatorUpdate]) -> ExecResult {
        if updates.is_empty() || updates.len() > MAX_VALIDATOR_UPDATES {
            return Err(TxError::Invalid(format!(
                "a proposal carries 1 to {MAX_VALIDATOR_UPDATES} validator updates, got {}",
                updates.len()
            ))
            .into());
        }
        let mut seen = Vec::new();
        for u in updates {
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
        Ok(())
    }

    /// Applies approved updates to the `validators` record and reports them to the engine
    /// (which applies them at h+2). Refused if it would leave no validator.
    pub(super) fn apply_validator_updates(&mut self, updates: &[ValidatorUpdate]) -> ExecResult {
        let mut set: ValidatorSet = self
            .overlay
            .get_record(&keys::validators())?
            .unwrap_or_default();
        for u in updates {
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
        self.validator_updates.extend(updates.iter().cloned());
        Ok(())
    }
}
