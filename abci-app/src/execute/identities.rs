//! Identities: registration, and the check that a named identity exists.

use onionpost_proto::keys;
use onionpost_proto::v1::{IdentityRecord, RegisterIdentity};

use super::{Exec, ExecResult, MAX_DISPLAY_NAME, StateRead, addr};
use crate::error::TxError;

impl<R: StateRead + ?Sized> Exec<'_, '_, R> {
    /// `register_identity`: the signer's first transaction; `me` is its fresh record.
    pub(super) fn register_identity(
        &mut self,
        me: &mut IdentityRecord,
        a: &RegisterIdentity,
    ) -> ExecResult {
        if a.display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(TxError::Invalid(format!(
                "display_name has more than {MAX_DISPLAY_NAME} characters"
            ))
            .into());
        }
        me.display_name = a.display_name.clone();
        Ok(())
    }

    /// Fails unless `id` is a registered identity.
    pub(super) fn require_identity(&self, id: &[u8; 32]) -> ExecResult {
        if self.overlay.get(&keys::identity(id))?.is_none() {
            return Err(TxError::UnknownIdentity(addr(id)).into());
        }
        Ok(())
    }
}
