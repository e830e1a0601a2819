//! Validators: proposals to change the validator set, approved by the governing list's admins.

use onionpost_proto::keys;
use onionpost_proto::v1::{
    ApproveValidatorUpdate, ChainConfig, ProposeValidatorUpdate, ValidatorProposal, ValidatorSet,
};

use super::{
    Exec, ExecResult, MAX_VALIDATOR_UPDATES, MAX_VOTING_POWER, ReadError, StateRead, addr,
    identity_key, sorted_contains, sorted_insert,
};
use crate::error::TxError;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `propose_validator_update`: a governing admin proposes; the proposal is its approval.
    pub(super) fn propose_validator_update(&mut self, a: &ProposeValidatorUpdate) -> ExecResult {
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
        self.maybe_execute_proposal(proposal, &admins)
    }

    /// `approve_validator_update`: another governing admin approves an open proposal.
    pub(super) fn approve_validator_update(&mut self, a: &ApproveValidatorUpdate) -> ExecResult {
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
        self.maybe_execute_proposal(proposal, &admins)
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
