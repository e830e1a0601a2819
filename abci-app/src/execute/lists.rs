//! Lists: creation, membership (one admin decides) and admin changes (where one admin's
//! approval is enough; otherwise they go through [`super::governance`]).

use onionpost_proto::keys;
use onionpost_proto::v1::{
    AddAdmin, AddMember, CreateList, ListPolicy, ListRecord, MembershipRecord, RemoveAdmin,
    RemoveMember, SetListPolicy,
};

use super::{
    Exec, ExecResult, MAX_LIST_ADMINS, MAX_LIST_MEMBERS, StateRead, addr, identity_key,
    sorted_contains, sorted_insert, sorted_remove,
};
use crate::error::TxError;

/// Refuses an `admin_approvals` larger than a list can have admins.
fn check_admin_approvals(policy: Option<&ListPolicy>) -> Result<(), TxError> {
    let approvals = policy.map_or(0, |p| p.admin_approvals);
    if approvals as usize > MAX_LIST_ADMINS {
        return Err(TxError::Invalid(format!(
            "admin_approvals {approvals} is more than the {MAX_LIST_ADMINS} admins a list may have"
        )));
    }
    Ok(())
}

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `create_list`: the signer becomes its first admin and member.
    pub(super) fn create_list(&mut self, a: &CreateList) -> ExecResult {
        self.event.list = a.name.clone();
        if !keys::is_valid_list_name(&a.name) {
            return Err(TxError::Invalid(format!(
                "list name {:?} must be 1-64 characters of a-z, 0-9, '-' and '.'",
                a.name
            ))
            .into());
        }
        if self.overlay.get(&keys::list(&a.name))?.is_some() {
            return Err(TxError::Conflict(format!("list {:?} exists already", a.name)).into());
        }
        check_admin_approvals(a.policy.as_ref())?;
        let list = ListRecord {
            name: a.name.clone(),
            admins: vec![self.signer.to_vec()],
            policy: Some(a.policy.unwrap_or_default()),
            created_height: self.ctx.height,
        };
        self.put_list(&list);
        self.insert_member(&list.name, &self.signer.clone())
    }

    /// `add_member`: one admin adds a registered identity.
    pub(super) fn add_member(&mut self, a: &AddMember) -> ExecResult {
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
        self.insert_member(&list.name, &member)
    }

    /// `remove_member`: an admin removes a member, or a member leaves; admins step down first.
    pub(super) fn remove_member(&mut self, a: &RemoveMember) -> ExecResult {
        let member = identity_key(&a.member, "member")?;
        let list = self.list(&a.list, &member)?;
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
        self.set_index(keys::list_members(&a.list), member, false, 0, "")
    }

    /// `add_admin`: makes a member an admin, where one admin's approval is enough.
    pub(super) fn add_admin(&mut self, a: &AddAdmin) -> ExecResult {
        let admin = identity_key(&a.admin, "admin")?;
        let list = self.admin_list(&a.list, &admin)?;
        self.require_single_approval(&list, "adding an admin")?;
        let list = self.check_add_admin(&list, a)?;
        self.put_list(&list);
        Ok(())
    }

    /// `remove_admin`: an admin removes itself, or (where one admin's approval is enough)
    /// another admin.
    pub(super) fn remove_admin(&mut self, a: &RemoveAdmin) -> ExecResult {
        let admin = identity_key(&a.admin, "admin")?;
        let list = self.list(&a.list, &admin)?;
        if admin != self.signer {
            if !sorted_contains(&list.admins, &self.signer) {
                return Err(TxError::Unauthorized(format!(
                    "only an admin of {:?} may remove another admin",
                    a.list
                ))
                .into());
            }
            self.require_single_approval(&list, "removing another admin")?;
        }
        let list = self.check_remove_admin(&list, a)?;
        self.put_list(&list);
        Ok(())
    }

    /// `set_list_policy`: posting rules and size limit need one admin; a change of
    /// `admin_approvals` is an admin change.
    pub(super) fn set_list_policy(&mut self, a: &SetListPolicy) -> ExecResult {
        let mut list = self.admin_list(&a.list, &self.signer.clone())?;
        self.check_policy(&list, a)?;
        let old = list.policy.as_ref().map_or(0, |p| p.admin_approvals);
        let new = a.policy.as_ref().map_or(0, |p| p.admin_approvals);
        if old != new {
            self.require_single_approval(&list, "changing admin_approvals")?;
        }
        list.policy = Some(a.policy.unwrap_or_default());
        self.put_list(&list);
        Ok(())
    }

    /// `list` with `a.admin` added as an admin, if that is valid now.
    pub(super) fn check_add_admin(
        &self,
        list: &ListRecord,
        a: &AddAdmin,
    ) -> ExecResult<ListRecord> {
        let admin = identity_key(&a.admin, "admin")?;
        let mut list = list.clone();
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
            return Err(
                TxError::Limit(format!("a list has at most {MAX_LIST_ADMINS} admins")).into(),
            );
        }
        if !sorted_insert(&mut list.admins, &admin) {
            return Err(TxError::Conflict(format!(
                "{} is already an admin of {:?}",
                addr(&admin),
                a.list
            ))
            .into());
        }
        Ok(list)
    }

    /// `list` without admin `a.admin`, if that is valid now (a list keeps one admin).
    pub(super) fn check_remove_admin(
        &self,
        list: &ListRecord,
        a: &RemoveAdmin,
    ) -> ExecResult<ListRecord> {
        let admin = identity_key(&a.admin, "admin")?;
        let mut list = list.clone();
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
        Ok(list)
    }

    /// Checks a policy's values for `list`.
    pub(super) fn check_policy(&self, list: &ListRecord, a: &SetListPolicy) -> ExecResult {
        check_admin_approvals(a.policy.as_ref())?;
        let approvals = a.policy.as_ref().map_or(0, |p| p.admin_approvals);
        if approvals != 0 && self.governing_list()? == list.name {
            return Err(TxError::Invalid(format!(
                "admin_approvals of the governing list {:?} must be 0: its admin changes always need more than two thirds of its admins",
                list.name
            ))
            .into());
        }
        Ok(())
    }

    /// Stores a list record.
    pub(super) fn put_list(&mut self, list: &ListRecord) {
        self.overlay.put(keys::list(&list.name), list);
    }

    /// The list `name`, naming it and `subject` in the event.
    pub(super) fn list(&mut self, name: &str, subject: &[u8; 32]) -> ExecResult<ListRecord> {
        self.event.list = name.to_owned();
        self.event.subject = subject.to_vec();
        self.overlay
            .get_record::<ListRecord>(&keys::list(name))?
            .ok_or_else(|| TxError::UnknownList(name.to_owned()).into())
    }

    /// The list `name`, if the signer is one of its admins.
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

    /// Adds `member` to the list `name`: its membership record and the member set. The list
    /// record is not written (state format 3 dropped its member count: the member set's size
    /// is the count), so adding a member writes two keys besides the signer's.
    fn insert_member(&mut self, name: &str, member: &[u8; 32]) -> ExecResult {
        self.event.list = name.to_owned();
        self.event.subject = member.to_vec();
        self.set_index(
            keys::list_members(name),
            *member,
            true,
            MAX_LIST_MEMBERS,
            "members of one list",
        )?;
        self.overlay.put(
            keys::membership(name, member),
            &MembershipRecord {
                list: name.to_owned(),
                member: member.to_vec(),
                added_height: self.ctx.height,
            },
        );
        Ok(())
    }
}
