//! The `Ledger` seam: verified reads of the ledger, as the delivery stages need them.
//!
//! The stages never talk gRPC or check proofs themselves: they ask a [`Ledger`], whose
//! contract is that every `Ok` value was checked against a proof and a root certified by the
//! validators (the ledger client crate does that). A node without a `[ledger]` configuration
//! uses [`NoLedger`], which answers every question with [`LedgerError::NotConfigured`]: one-to-one
//! mail needs no ledger, and whatever needs one (list posts, mailbox hosts) says so clearly.

use std::future::Future;

use onionpost_proto::onion::OnionAddress;

/// A value read from the ledger, checked against a proof at `height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    /// The value.
    pub value: T,
    /// The ledger height whose certified root the proof was checked against.
    pub height: u64,
}

/// Why a ledger read gave no verified answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The node has no `[ledger]` section.
    #[error("this node has no [ledger] configuration; list mail and mailbox hosts need one")]
    NotConfigured,
    /// No ledger server answered (the caller defers and retries; it never proceeds unverified).
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// A server answered with something that does not verify.
    #[error("ledger answer failed verification: {0}")]
    Invalid(String),
}

impl LedgerError {
    /// Whether asking again later may succeed (a 4xx rather than a 5xx for mail waiting on it).
    pub fn is_transient(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_))
    }
}

/// Verified ledger reads for the delivery stages.
pub trait Ledger: Send + Sync + 'static {
    /// Whether `identity` is a member of `list` at the latest verified height.
    fn is_member(
        &self,
        list: &str,
        identity: &OnionAddress,
    ) -> impl Future<Output = Result<Verified<bool>, LedgerError>> + Send;

    /// The mailbox hosts `identity` named on the ledger (empty if none).
    fn mailbox_hosts(
        &self,
        identity: &OnionAddress,
    ) -> impl Future<Output = Result<Verified<Vec<OnionAddress>>, LedgerError>> + Send;
}

/// The ledger of a node configured without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLedger;

impl Ledger for NoLedger {
    async fn is_member(
        &self,
        _list: &str,
        _identity: &OnionAddress,
    ) -> Result<Verified<bool>, LedgerError> {
        Err(LedgerError::NotConfigured)
    }

    async fn mailbox_hosts(
        &self,
        _identity: &OnionAddress,
    ) -> Result<Verified<Vec<OnionAddress>>, LedgerError> {
        Err(LedgerError::NotConfigured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_ledger_says_what_is_missing_and_is_not_transient() {
        let who = OnionAddress::from_public_key([3; 32]);
        let e = NoLedger.is_member("friends", &who).await.unwrap_err();
        assert_eq!(e, LedgerError::NotConfigured);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("[ledger]"), "{e}");
        assert!(NoLedger.mailbox_hosts(&who).await.is_err());
        assert!(LedgerError::Unavailable("down".into()).is_transient());
    }
}
