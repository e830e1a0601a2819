//! Lists: creation, membership (single-admin) and admins.

use onionpost_proto::keys;
use onionpost_proto::v1::{
    AddAdmin, AddMember, CreateList, ListRecord, MembershipRecord, RemoveAdmin, RemoveMember,
    SetListPolicy,
};

use super::{
    Exec, ExecResult, MAX_LIST_ADMINS, MAX_LIST_MEMBERS, StateRead, addr, identity_key,
    sorted_contains, sorted_insert, sorted_remove,
};
use crate::error::TxError;

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
        let list = ListRecord {
            name: a.name.clone(),
            admins: vec![self.signer.to_vec()],
            policy: Some(a.policy.unwrap_or_default()),
            created_height: self.ctx.height,
            member_count: 0,
        };
        self.insert_member(list, &self.signer.clone())
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
        self.insert_member(list, &member)
    }

    /// `remove_member`: an admin removes a member, or a member leaves; admins step down first.
    pub(super) fn remove_member(&mut self, a: &RemoveMember) -> ExecResult {
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
        Ok(())
    }

    /// `add_admin`: makes a member an admin.
    pub(super) fn add_admin(&mut self, a: &AddAdmin) -> ExecResult {
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
        self.overlay.put(keys::list(&a.list), &list);
        Ok(())
    }

    /// `remove_admin`: takes admin rights away; a list always keeps one admin.
    pub(super) fn remove_admin(&mut self, a: &RemoveAdmin) -> ExecResult {
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
        Ok(())
    }

    /// `set_list_policy`: posting rules and size limit.
    pub(super) fn set_list_policy(&mut self, a: &SetListPolicy) -> ExecResult {
        let mut list = self.admin_list(&a.list, &self.signer.clone())?;
        list.policy = Some(a.policy.unwrap_or_default());
        self.overlay.put(keys::list(&a.list), &list);
        Ok(())
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

    /// Adds `member` to `list` (its record, the member set and the count).
    fn insert_member(&mut self, mut list: ListRecord, member: &[u8; 32]) -> ExecResult {
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
}
