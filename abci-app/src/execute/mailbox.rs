//! Mailbox hosts: the identities that hold the signer's mail while it is offline.

use onionpost_proto::v1::{IdentityRecord, SetMailboxHosts};

use super::{Exec, ExecResult, MAX_MAILBOX_HOSTS, StateRead, addr, identity_key, sorted_insert};
use crate::error::TxError;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `set_mailbox_hosts`: at most [`MAX_MAILBOX_HOSTS`] distinct registered identities,
    /// never the signer itself.
    pub(super) fn set_mailbox_hosts(
        &mut self,
        me: &mut IdentityRecord,
        a: &SetMailboxHosts,
    ) -> ExecResult {
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
                return Err(
                    TxError::Invalid("an identity cannot be its own mailbox host".into()).into(),
                );
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
        Ok(())
    }
}
