//! Governance: changes that one admin must not make alone.
//!
//! A change of a list's admin set (or of the number of admins such a change needs), and any
//! change of the validator set, is a [`Proposal`]. The electorate is fixed when it is made:
//! the list's admins at that moment (the governing list's, for a validator change), and so
//! is the number of approvals it needs ([`required_approvals`]), so removing admins can never
//! lower the bar for a change already on the table. The proposer's approval counts; an
//! approval counts only from a member of the electorate who is still an admin; the change
//! takes effect in the transaction that brings the last approval needed, after checking it
//! against the state of that moment. A proposal not carried within
//! [`PROPOSAL_LIFETIME_BLOCKS`] blocks expires.
//!
//! Where one approval is enough (a list with a single admin, or a policy that says so) the
//! direct actions (`add_admin`, `remove_admin`, `set_list_policy`) apply at once; otherwise
//! they are refused with [`TxError::NeedsQuorum`], which says how many approvals are needed.
//! An admin may always remove itself directly.

use onionpost_proto::keys;
use onionpost_proto::v1::{
    Approve, ChainConfig, ListRecord, Proposal, Propose, change::Kind as ChangeKind,
};

use super::{Exec, ExecResult, ReadError, StateRead, addr, sorted_contains, sorted_insert};
use crate::error::TxError;

/// Blocks after which an open proposal expires: about a day at one block per second.
/// Approvals count up to and including height `proposed_height + PROPOSAL_LIFETIME_BLOCKS`.
pub const PROPOSAL_LIFETIME_BLOCKS: u64 = 86_400;

/// Who decides a change, and how many of them must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Quorum {
    /// The list whose admins decide.
    pub list: String,
    /// Whether that is the governing list.
    pub governing: bool,
    /// Its admins now, sorted.
    pub admins: Vec<Vec<u8>>,
    /// Approvals a change needs.
    pub required: usize,
}

impl Quorum {
    /// A sentence for a refusal: "3 of its 4 admins (more than two thirds)".
    pub fn describe(&self) -> String {
        let rule = if self.governing {
            "more than two thirds".to_owned()
        } else {
            "its admin_approvals policy; by default more than half".to_owned()
        };
        format!(
            "{} of the {} admins of {:?} ({rule})",
            self.required,
            self.admins.len(),
            self.list
        )
    }
}

/// Approvals a change of `list` needs when it has `admins` admins: more than two thirds for
/// the governing list; for any other list its policy's `admin_approvals` (at most the number
/// of admins), or more than half when that is 0.
pub fn required_approvals(list: &ListRecord, governing: bool, admins: usize) -> usize {
    if governing {
        return admins * 2 / 3 + 1;
    }
    match list.policy.as_ref().map_or(0, |p| p.admin_approvals) as usize {
        0 => admins / 2 + 1,
        k => k.min(admins),
    }
}

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// The chain's governing list's name.
    pub(super) fn governing_list(&self) -> ExecResult<String> {
        let config: ChainConfig = self
            .overlay
            .get_record(&keys::chain_config())?
            .ok_or_else(|| ReadError("chain config missing from state".into()))?;
        Ok(config.governing_list)
    }

    /// The quorum that decides admin changes of `list` (already read).
    pub(super) fn quorum_of(&self, list: &ListRecord) -> ExecResult<Quorum> {
        let governing = self.governing_list()? == list.name;
        Ok(Quorum {
            list: list.name.clone(),
            governing,
            required: required_approvals(list, governing, list.admins.len()),
            admins: list.admins.clone(),
        })
    }

    /// Refuses a direct change of `list` that needs more than one approval.
    pub(super) fn require_single_approval(&self, list: &ListRecord, what: &str) -> ExecResult {
        let quorum = self.quorum_of(list)?;
        if quorum.required > 1 {
            return Err(TxError::NeedsQuorum(format!(
                "{what} needs the approval of {}; submit it with propose and have the others approve",
                quorum.describe()
            ))
            .into());
        }
        Ok(())
    }

    /// `propose`: an admin of the deciding list proposes a change; it counts as its approval,
    /// and takes effect at once if that is enough.
    pub(super) fn propose(&mut self, a: &Propose) -> ExecResult {
        let change = a
            .change
            .as_ref()
            .and_then(|c| c.kind.as_ref())
            .ok_or_else(|| TxError::Invalid("a proposal must carry a change".into()))?;
        let list_name = match change {
            ChangeKind::AddAdmin(c) => c.list.clone(),
            ChangeKind::RemoveAdmin(c) => c.list.clone(),
            ChangeKind::SetListPolicy(c) => c.list.clone(),
            ChangeKind::ValidatorUpdate(_) => self.governing_list()?,
        };
        let list = self.list(&list_name, &self.signer.clone())?;
        if !sorted_contains(&list.admins, &self.signer) {
            return Err(TxError::Unauthorized(format!(
                "{} is not an admin of {:?} and may not propose changes to it",
                addr(&self.signer),
                list_name
            ))
            .into());
        }
        // A proposal that could never take effect fails now, not after the approvals.
        self.check_change(change, &list)?;
        let quorum = self.quorum_of(&list)?;
        let id = self.next_proposal_id()?;
        self.event.subject = id.to_be_bytes().to_vec();
        let proposal = Proposal {
            id,
            change: a.change.clone(),
            list: list_name,
            electorate: quorum.admins.clone(),
            required: quorum.required as u32,
            approvals: vec![self.signer.to_vec()],
            proposed_height: self.ctx.height,
            expires_height: self.ctx.height + PROPOSAL_LIFETIME_BLOCKS,
            executed: false,
            proposer: self.signer.to_vec(),
        };
        self.settle(proposal)
    }

    /// `approve`: a member of a proposal's electorate who is still an admin approves it.
    pub(super) fn approve(&mut self, a: &Approve) -> ExecResult {
        self.event.subject = a.proposal_id.to_be_bytes().to_vec();
        let Some(mut proposal) = self
            .overlay
            .get_record::<Proposal>(&keys::proposal(a.proposal_id))?
        else {
            return Err(TxError::Invalid(format!("there is no proposal {}", a.proposal_id)).into());
        };
        self.event.list = proposal.list.clone();
        if proposal.executed {
            return Err(TxError::Conflict(format!(
                "proposal {} has already taken effect",
                a.proposal_id
            ))
            .into());
        }
        if self.ctx.height > proposal.expires_height {
            return Err(TxError::Conflict(format!(
                "proposal {} expired at height {} ({PROPOSAL_LIFETIME_BLOCKS} blocks after it was made); propose it again",
                a.proposal_id, proposal.expires_height
            ))
            .into());
        }
        if !sorted_contains(&proposal.electorate, &self.signer) {
            return Err(TxError::Unauthorized(format!(
                "{} was not an admin of {:?} when proposal {} was made, so its approval does not count",
                addr(&self.signer),
                proposal.list,
                a.proposal_id
            ))
            .into());
        }
        let list = self.list(&proposal.list.clone(), &self.signer.clone())?;
        self.event.subject = a.proposal_id.to_be_bytes().to_vec();
        if !sorted_contains(&list.admins, &self.signer) {
            return Err(TxError::Unauthorized(format!(
                "{} is no longer an admin of {:?}",
                addr(&self.signer),
                proposal.list
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
        self.settle(proposal)
    }

    /// Stores the proposal and, if it has the approvals it needs, carries it out.
    fn settle(&mut self, mut proposal: Proposal) -> ExecResult {
        let counted = proposal
            .approvals
            .iter()
            .filter(|a| sorted_contains(&proposal.electorate, a))
            .count();
        if counted >= proposal.required as usize {
            let change = proposal
                .change
                .as_ref()
                .and_then(|c| c.kind.clone())
                .ok_or_else(|| ReadError(format!("proposal {} has no change", proposal.id)))?;
            // The event names the proposal, not what carrying it out touched.
            let (list, subject) = (self.event.list.clone(), self.event.subject.clone());
            self.carry_out(&change)?;
            (self.event.list, self.event.subject) = (list, subject);
            proposal.executed = true;
        }
        self.overlay.put(keys::proposal(proposal.id), &proposal);
        Ok(())
    }

    /// Checks a change against the current state without making it.
    fn check_change(&mut self, change: &ChangeKind, list: &ListRecord) -> ExecResult {
        match change {
            ChangeKind::AddAdmin(c) => self.check_add_admin(list, c).map(|_| ()),
            ChangeKind::RemoveAdmin(c) => self.check_remove_admin(list, c).map(|_| ()),
            ChangeKind::SetListPolicy(c) => self.check_policy(list, c),
            ChangeKind::ValidatorUpdate(c) => self.check_validator_updates(&c.updates),
        }
    }

    /// Makes an approved change, checking it against the state of this moment.
    fn carry_out(&mut self, change: &ChangeKind) -> ExecResult {
        let signer = self.signer;
        match change {
            ChangeKind::AddAdmin(c) => {
                let list = self.list(&c.list, &signer)?;
                let list = self.check_add_admin(&list, c)?;
                self.put_list(&list);
            }
            ChangeKind::RemoveAdmin(c) => {
                let list = self.list(&c.list, &signer)?;
                let list = self.check_remove_admin(&list, c)?;
                self.put_list(&list);
            }
            ChangeKind::SetListPolicy(c) => {
                let mut list = self.list(&c.list, &signer)?;
                self.check_policy(&list, c)?;
                list.policy = Some(c.policy.unwrap_or_default());
                self.put_list(&list);
            }
            ChangeKind::ValidatorUpdate(c) => self.apply_validator_updates(&c.updates)?,
        }
        Ok(())
    }

    fn next_proposal_id(&mut self) -> ExecResult<u64> {
        let next_key = keys::next_proposal();
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
        Ok(id)
    }
}
