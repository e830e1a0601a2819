//! The [`Ledger`] seam: verified reads as the mail node needs them, and the values they
//! return.

use std::future::Future;

use onionpost_proto::v1::{self as pb, list_policy::Posting};

use crate::IdentityKey;
use crate::error::Error;

/// Which height to read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum At {
    /// The latest height whose app hash is verified (see [`Ledger::latest_height`]).
    Latest,
    /// A given height (at most the latest verified one).
    Height(u64),
}

/// What the root an answer was checked against rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// An app hash certified by a commit certificate of the next block, checked against a
    /// validator set derived from genesis. The only basis a mail node accepts.
    Certified,
    /// An app hash the caller supplied (from its own validator, or an earlier audit).
    Pinned,
    /// The app hash the server itself stated. The proofs show the answer is consistent with
    /// that state, nothing more: development only (a `solo` ledger has no certificates).
    ServerStated,
}

/// A value read from the ledger, with the height and app hash its proofs were checked
/// against.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T> {
    /// The value.
    pub value: T,
    /// The height the value holds at.
    pub height: u64,
    /// The app hash of that height; every proof of the answer leads to it.
    pub root: [u8; 32],
    /// What the app hash rests on.
    pub basis: Basis,
}

impl<T> Verified<T> {
    /// The same provenance around another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Verified<U> {
        Verified {
            value: f(self.value),
            height: self.height,
            root: self.root,
            basis: self.basis,
        }
    }
}

/// An identity's membership of a list, proven (membership and absence alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Membership {
    /// The list does not exist.
    UnknownList,
    /// The list exists; the identity is not a member.
    NotMember {
        /// The list's record (admins, policy).
        list: pb::ListRecord,
    },
    /// The identity is a member.
    Member {
        /// The list's record (admins, policy).
        list: pb::ListRecord,
        /// The membership record (when it was added).
        record: pb::MembershipRecord,
    },
}

impl Membership {
    /// Whether the identity is a member.
    pub fn is_member(&self) -> bool {
        matches!(self, Membership::Member { .. })
    }

    /// The list's record, if the list exists.
    pub fn list(&self) -> Option<&pb::ListRecord> {
        match self {
            Membership::UnknownList => None,
            Membership::NotMember { list } | Membership::Member { list, .. } => Some(list),
        }
    }

    /// Whether `who` (the identity this answer is about) may post to the list under its
    /// policy: a member, and an admin too if only admins post.
    pub fn may_post(&self, who: &IdentityKey) -> bool {
        match self {
            Membership::Member { list, .. } => match posting(list) {
                Posting::Members => true,
                Posting::Admins => list.admins.iter().any(|a| a.as_slice() == who),
            },
            _ => false,
        }
    }
}

fn posting(list: &pb::ListRecord) -> Posting {
    list.policy
        .as_ref()
        .and_then(|p| Posting::try_from(p.posting).ok())
        .unwrap_or(Posting::Members)
}

/// A list with all its members.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// The list's record: name, admins (sorted), policy, creation height.
    pub record: pb::ListRecord,
    /// Every member, sorted.
    pub members: Vec<IdentityKey>,
}

impl List {
    /// The list's policy (the default policy if the record has none).
    pub fn policy(&self) -> pb::ListPolicy {
        self.record.policy.unwrap_or_default()
    }

    /// Whether `who` is an admin.
    pub fn is_admin(&self, who: &IdentityKey) -> bool {
        self.record.admins.iter().any(|a| a.as_slice() == who)
    }

    /// Whether `who` is a member.
    pub fn is_member(&self, who: &IdentityKey) -> bool {
        self.members.binary_search(who).is_ok()
    }
}

/// A registered identity: its record, the full history of its end-to-end keys, and its
/// mailbox hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The identity's record.
    pub record: pb::IdentityRecord,
    /// Every binding, rotation and revocation, oldest first (entry `i` has `seq == i`).
    pub key_history: Vec<pb::KeyHistoryEntry>,
    /// The identities that hold its mail while it is offline.
    pub mailbox_hosts: Vec<IdentityKey>,
}

impl Identity {
    /// The active end-to-end key, if one is bound and not revoked.
    pub fn active_key(&self) -> Option<&pb::E2eKey> {
        self.record.active_key.as_ref()
    }
}

/// Which trust statements of an identity to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// The statements the identity signed.
    Outgoing,
    /// The statements others signed about the identity.
    Incoming,
}

/// Bounds of a trust-path search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathLimits {
    /// Most statements on the path (1 to 6).
    pub max_depth: u32,
    /// Least level every statement must have (0 = any, 1 = marginal, 2 = full).
    pub min_level: u32,
}

impl Default for PathLimits {
    fn default() -> Self {
        Self {
            max_depth: 4,
            min_level: 0,
        }
    }
}

/// The answer to a trust-path search.
#[derive(Debug, Clone, PartialEq)]
pub enum TrustPath {
    /// A chain of statements `from -> ... -> to`, each proven, each unexpired at the block
    /// time (proven too) and of at least the minimum level.
    Found {
        /// The statements in order.
        statements: Vec<pb::TrustStatement>,
        /// The block time expiry was judged against (Unix seconds).
        block_time: u64,
    },
    /// The server found no path. This is the server's word: a path can be hidden by a
    /// server but never invented, so treat it as "not trusted", never as proof of distrust.
    NotFound,
}

/// Verified reads of the ledger: the seam between the mail node and the ledger.
///
/// # Contract
///
/// - Every `Ok` value was checked, before it is returned, against Merkle proofs that lead to
///   the app hash in [`Verified::root`] at [`Verified::height`]; absence ("not a member",
///   "no such list") is proven the same way. Only [`TrustPath::NotFound`] is unproven.
/// - An implementation that serves a mail node answers on [`Basis::Certified`] roots only:
///   app hashes certified by a commit certificate checked against validators derived from
///   genesis, never a root one server states.
/// - [`At::Latest`] means the latest verified height at the time of the call; it never goes
///   backwards between calls on one value. An implementation may reuse its latest height for
///   a short, documented interval before asking again.
/// - Answers at a given height never change, so they may be cached by height.
/// - `Err` means no verified answer could be had (servers unreachable or lying, height not
///   yet certified, …): the caller must not act as if it had one. A mail node defers (4xx)
///   on [`Error::is_transient`] errors and alerts its operator on the others.
/// - Methods take `&self`, may run concurrently, and are cancel-safe: dropping a future
///   loses nothing but that answer.
pub trait Ledger: Send + Sync + 'static {
    /// The latest height whose app hash is verified.
    fn latest_height(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Whether `who` is a member of `list`, with the list's record (admins, posting policy).
    fn membership(
        &self,
        list: &str,
        who: &IdentityKey,
        at: At,
    ) -> impl Future<Output = Result<Verified<Membership>, Error>> + Send;

    /// A list's record and all its members; `None` if there is no such list.
    fn list(
        &self,
        list: &str,
        at: At,
    ) -> impl Future<Output = Result<Verified<Option<List>>, Error>> + Send;

    /// An identity's record with its end-to-end key history and mailbox hosts; `None` if
    /// it is not registered. Implementations also check that the key history only grew
    /// compared with every earlier answer they verified (see [`crate::KeyDirectory`]).
    fn identity(
        &self,
        who: &IdentityKey,
        at: At,
    ) -> impl Future<Output = Result<Verified<Option<Identity>>, Error>> + Send;

    /// An identity's mailbox hosts (empty if none are named or it is not registered).
    fn mailbox_hosts(
        &self,
        who: &IdentityKey,
        at: At,
    ) -> impl Future<Output = Result<Verified<Vec<IdentityKey>>, Error>> + Send;

    /// The trust statements `who` signed ([`Direction::Outgoing`]) or that others signed
    /// about it ([`Direction::Incoming`]), expired ones included.
    fn trust(
        &self,
        who: &IdentityKey,
        direction: Direction,
        at: At,
    ) -> impl Future<Output = Result<Verified<Vec<pb::TrustStatement>>, Error>> + Send;

    /// A shortest chain of unexpired trust statements from `from` to `to`.
    fn trust_path(
        &self,
        from: &IdentityKey,
        to: &IdentityKey,
        limits: PathLimits,
        at: At,
    ) -> impl Future<Output = Result<Verified<TrustPath>, Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(posting: Posting, admins: Vec<Vec<u8>>) -> pb::ListRecord {
        pb::ListRecord {
            name: "l".into(),
            admins,
            policy: Some(pb::ListPolicy {
                posting: posting as i32,
                max_message_bytes: 0,
                admin_approvals: 0,
            }),
            created_height: 1,
        }
    }

    /// A fake, as the node's unit tests would write one: a fixed member set.
    struct Fake {
        members: Vec<IdentityKey>,
    }

    fn at<T>(value: T) -> Result<Verified<T>, Error> {
        Ok(Verified {
            value,
            height: 7,
            root: [0; 32],
            basis: Basis::Certified,
        })
    }

    impl Ledger for Fake {
        async fn latest_height(&self) -> Result<u64, Error> {
            Ok(7)
        }
        async fn membership(
            &self,
            _list: &str,
            who: &IdentityKey,
            _at: At,
        ) -> Result<Verified<Membership>, Error> {
            let l = list(Posting::Members, vec![]);
            at(if self.members.contains(who) {
                Membership::Member {
                    list: l,
                    record: pb::MembershipRecord::default(),
                }
            } else {
                Membership::NotMember { list: l }
            })
        }
        async fn list(&self, _list: &str, _at: At) -> Result<Verified<Option<List>>, Error> {
            at(None)
        }
        async fn identity(
            &self,
            _who: &IdentityKey,
            _at: At,
        ) -> Result<Verified<Option<Identity>>, Error> {
            Err(Error::NothingCertified)
        }
        async fn mailbox_hosts(
            &self,
            _who: &IdentityKey,
            _at: At,
        ) -> Result<Verified<Vec<IdentityKey>>, Error> {
            at(vec![])
        }
        async fn trust(
            &self,
            _who: &IdentityKey,
            _direction: Direction,
            _at: At,
        ) -> Result<Verified<Vec<pb::TrustStatement>>, Error> {
            at(vec![])
        }
        async fn trust_path(
            &self,
            _from: &IdentityKey,
            _to: &IdentityKey,
            _limits: PathLimits,
            _at: At,
        ) -> Result<Verified<TrustPath>, Error> {
            at(TrustPath::NotFound)
        }
    }

    /// Code written against the seam, as the node's delivery stage would be.
    async fn may_deliver(ledger: &impl Ledger, author: &IdentityKey) -> Result<bool, Error> {
        let h = ledger.latest_height().await?;
        let m = ledger.membership("l", author, At::Height(h)).await?;
        Ok(m.basis == Basis::Certified && m.value.may_post(author))
    }

    #[tokio::test]
    async fn the_seam_can_be_faked() {
        let fake = Fake {
            members: vec![[1; 32]],
        };
        assert!(may_deliver(&fake, &[1; 32]).await.unwrap());
        assert!(!may_deliver(&fake, &[2; 32]).await.unwrap());
        let err = fake.identity(&[1; 32], At::Latest).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn posting_follows_the_policy() {
        let member = |l| Membership::Member {
            list: l,
            record: pb::MembershipRecord::default(),
        };
        let a = [1u8; 32];
        assert!(member(list(Posting::Members, vec![])).may_post(&a));
        assert!(!member(list(Posting::Admins, vec![])).may_post(&a));
        assert!(member(list(Posting::Admins, vec![a.to_vec()])).may_post(&a));
        let not = Membership::NotMember {
            list: list(Posting::Members, vec![a.to_vec()]),
        };
        assert!(!not.may_post(&a));
        assert!(!Membership::UnknownList.may_post(&a));
    }
}
