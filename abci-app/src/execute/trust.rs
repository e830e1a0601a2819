//! Trust: statements one identity signs about another, indexed both ways so one proof shows
//! everyone an identity vouches for, or everyone who vouches for it.

use onionpost_proto::keys;
use onionpost_proto::v1::{RevokeTrust, SignTrust, TrustStatement};

use super::{
    Exec, ExecResult, MAX_TRUST_INCOMING, MAX_TRUST_OUTGOING, StateRead, addr, identity_key,
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
            &TrustStatement {
                from: self.signer.to_vec(),
                to: target.to_vec(),
                level: a.level,
                expires_at: a.expires_at,
                signed_height: self.ctx.height,
            },
        );
        Ok(())
    }

    /// `revoke_trust`: deletes the signer's statement and its index entries.
    pub(super) fn revoke_trust(&mut self, a: &RevokeTrust) -> ExecResult {
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
        Ok(())
    }
}
