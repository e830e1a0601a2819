//! Checking the answers of the gRPC `Ledger` service against an app hash, without I/O.
//!
//! Each function takes the app hash and height the caller trusts, and the server's answer;
//! it checks the answer's anchor (the height asked about, the trusted app hash), then every
//! proof with [`onionpost_proto::proof`], and returns typed values. A server that changes a
//! value, hides one, answers about another key, drops a proof or answers from another
//! height is caught, and the [`Lie`] says which.

use onionpost_proto::keys;
use onionpost_proto::proof::{ProofError, root_from_bytes, verify, verify_record};
use onionpost_proto::trust::{self, Side, TRUST_INDEX_VERSION, decode_index};
use onionpost_proto::v1::{self as pb, ProvenValue};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::IdentityKey;
use crate::error::Lie;
use crate::ledger::{Direction, Identity, List, Membership, PathLimits, TrustPath};

/// The answers that carry an [`pb::Anchor`].
pub trait Anchored {
    /// The answer's anchor.
    fn anchor(&self) -> Option<&pb::Anchor>;
}

macro_rules! anchored {
    ($($t:ty),*) => {$(
        impl Anchored for $t {
            fn anchor(&self) -> Option<&pb::Anchor> {
                self.anchor.as_ref()
            }
        }
    )*};
}
anchored!(
    pb::MembershipAnswer,
    pb::ListAnswer,
    pb::ListMembersAnswer,
    pb::IdentityAnswer,
    pb::KeyHistoryAnswer,
    pb::TrustAnswer,
    pb::TrustPathAnswer,
    pb::ValidatorSetAnswer,
    pb::StatusAnswer
);

/// The height and app hash an answer states.
pub fn stated_anchor(answer: &impl Anchored) -> Result<(u64, [u8; 32]), Lie> {
    let a = answer
        .anchor()
        .ok_or_else(|| Lie::Malformed("the answer has no anchor".into()))?;
    let root = root_from_bytes(&a.root).map_err(|e| Lie::Malformed(e.to_string()))?;
    Ok((a.height, root))
}

/// Checks that `answer` is anchored at `height` with app hash `root`.
pub fn check_anchor(answer: &impl Anchored, height: u64, root: &[u8; 32]) -> Result<(), Lie> {
    let (answered, server) = stated_anchor(answer)?;
    if answered != height {
        return Err(Lie::StaleHeight {
            asked: height,
            answered,
        });
    }
    if &server != root {
        return Err(Lie::WrongRoot {
            height,
            server: hex::encode(server),
            certified: hex::encode(root),
        });
    }
    Ok(())
}

/// A proven value checked against `root` at `height`, with errors that name it.
struct Checker<'a> {
    root: &'a [u8; 32],
    height: u64,
}

impl Checker<'_> {
    fn pv<'p>(
        &self,
        pv: Option<&'p ProvenValue>,
        what: &dyn Fn() -> String,
    ) -> Result<&'p ProvenValue, Lie> {
        pv.ok_or_else(|| Lie::DroppedProof {
            what: what(),
            height: self.height,
        })
    }

    fn forged(&self, what: &dyn Fn() -> String, source: ProofError) -> Lie {
        Lie::ForgedProof {
            what: what(),
            height: self.height,
            source,
        }
    }

    fn record<M: Message + Default>(
        &self,
        key: &[u8],
        pv: Option<&ProvenValue>,
        what: &dyn Fn() -> String,
    ) -> Result<Option<M>, Lie> {
        let pv = self.pv(pv, what)?;
        verify_record(self.root, key, pv).map_err(|e| self.forged(what, e))
    }

    fn raw<'p>(
        &self,
        key: &[u8],
        pv: Option<&'p ProvenValue>,
        what: &dyn Fn() -> String,
    ) -> Result<Option<&'p [u8]>, Lie> {
        let pv = self.pv(pv, what)?;
        verify(self.root, key, pv).map_err(|e| self.forged(what, e))
    }
}

fn addr(k: &IdentityKey) -> String {
    onionpost_proto::onion::OnionAddress::from_public_key(*k).hostname()
}

fn identity_keys(set: &pb::IdentitySet, what: &str) -> Result<Vec<IdentityKey>, Lie> {
    set.keys
        .iter()
        .map(|k| {
            <[u8; 32]>::try_from(k.as_slice())
                .map_err(|_| Lie::Malformed(format!("{what} holds a key of {} bytes", k.len())))
        })
        .collect()
}

/// Verifies a `CheckMembership` answer for (`list`, `who`).
pub fn membership(
    root: &[u8; 32],
    height: u64,
    list: &str,
    who: &IdentityKey,
    ans: &pb::MembershipAnswer,
) -> Result<Membership, Lie> {
    check_anchor(ans, height, root)?;
    let c = Checker { root, height };
    let rec: Option<pb::ListRecord> = c.record(&keys::list(list), ans.list.as_ref(), &|| {
        format!("list {list:?}")
    })?;
    let m: Option<pb::MembershipRecord> = c.record(
        &keys::membership(list, who),
        ans.membership.as_ref(),
        &|| format!("the membership of {} in {list:?}", addr(who)),
    )?;
    Ok(match (rec, m) {
        (None, _) => Membership::UnknownList,
        (Some(list), None) => Membership::NotMember { list },
        (Some(list), Some(record)) => Membership::Member { list, record },
    })
}

/// Verifies a `GetList` answer; `None` if the list does not exist.
pub fn list_record(
    root: &[u8; 32],
    height: u64,
    list: &str,
    ans: &pb::ListAnswer,
) -> Result<Option<pb::ListRecord>, Lie> {
    check_anchor(ans, height, root)?;
    Checker { root, height }.record(&keys::list(list), ans.list.as_ref(), &|| {
        format!("list {list:?}")
    })
}

/// Verifies a `ListMembers` answer; `None` if the list does not exist.
pub fn list_members(
    root: &[u8; 32],
    height: u64,
    list: &str,
    ans: &pb::ListMembersAnswer,
) -> Result<Option<List>, Lie> {
    check_anchor(ans, height, root)?;
    let c = Checker { root, height };
    let Some(record) = c.record::<pb::ListRecord>(&keys::list(list), ans.list.as_ref(), &|| {
        format!("list {list:?}")
    })?
    else {
        return Ok(None);
    };
    let set: pb::IdentitySet = c
        .record(&keys::list_members(list), ans.members.as_ref(), &|| {
            format!("the members of {list:?}")
        })?
        .unwrap_or_default();
    let members = identity_keys(&set, "the member set")?;
    Ok(Some(List { record, members }))
}

/// Verifies a `GetIdentity` answer; `None` if `who` is not registered.
pub fn identity_record(
    root: &[u8; 32],
    height: u64,
    who: &IdentityKey,
    ans: &pb::IdentityAnswer,
) -> Result<Option<pb::IdentityRecord>, Lie> {
    check_anchor(ans, height, root)?;
    Checker { root, height }.record(&keys::identity(who), ans.identity.as_ref(), &|| {
        format!("the identity {}", addr(who))
    })
}

/// Verifies a `GetKeyHistory` answer: the identity record and every one of its key
/// history entries, in order. Also returns the SHA-256 of each entry's encoded bytes, for
/// the [`crate::KeyDirectory`].
pub fn identity(
    root: &[u8; 32],
    height: u64,
    who: &IdentityKey,
    ans: &pb::KeyHistoryAnswer,
) -> Result<(Option<Identity>, Vec<[u8; 32]>), Lie> {
    check_anchor(ans, height, root)?;
    let c = Checker { root, height };
    let Some(record) =
        c.record::<pb::IdentityRecord>(&keys::identity(who), ans.identity.as_ref(), &|| {
            format!("the identity {}", addr(who))
        })?
    else {
        if !ans.entries.is_empty() {
            return Err(Lie::Malformed(format!(
                "{} is not registered, yet the answer carries {} key history entries",
                addr(who),
                ans.entries.len()
            )));
        }
        return Ok((None, Vec::new()));
    };
    let len = record.key_history_len;
    if ans.entries.len() as u64 != len {
        return Err(Lie::DroppedProof {
            what: format!(
                "the key history of {} ({len} entries, {} in the answer)",
                addr(who),
                ans.entries.len()
            ),
            height,
        });
    }
    let mut key_history = Vec::with_capacity(ans.entries.len());
    let mut digests = Vec::with_capacity(ans.entries.len());
    for (i, pv) in ans.entries.iter().enumerate() {
        let what = || format!("key history entry #{i} of {}", addr(who));
        let bytes = c
            .raw(&keys::key_history(who, i as u64), Some(pv), &what)?
            .ok_or_else(|| Lie::DroppedProof {
                what: what(),
                height,
            })?;
        let entry = pb::KeyHistoryEntry::decode(bytes)
            .map_err(|e| Lie::Malformed(format!("{}: {e}", what())))?;
        digests.push(Sha256::digest(bytes).into());
        key_history.push(entry);
    }
    let mailbox_hosts = record
        .mailbox_hosts
        .iter()
        .map(|k| {
            <[u8; 32]>::try_from(k.as_slice())
                .map_err(|_| Lie::Malformed(format!("a mailbox host key of {} bytes", k.len())))
        })
        .collect::<Result<_, _>>()?;
    Ok((
        Some(Identity {
            record,
            key_history,
            mailbox_hosts,
        }),
        digests,
    ))
}

/// A proven trust index's bytes (`None`: absent, no statements) decoded and checked.
fn trust_index(bytes: Option<&[u8]>, what: &dyn Fn() -> String) -> Result<pb::TrustIndex, Lie> {
    match bytes {
        None => Ok(pb::TrustIndex {
            version: TRUST_INDEX_VERSION,
            entries: Vec::new(),
        }),
        Some(b) => decode_index(b).map_err(|e| Lie::Malformed(format!("{}: {e}", what()))),
    }
}

/// Verifies a `GetTrust` answer: the proven index, which holds every statement whole.
pub fn trust(
    root: &[u8; 32],
    height: u64,
    who: &IdentityKey,
    direction: Direction,
    ans: &pb::TrustAnswer,
) -> Result<Vec<pb::TrustStatement>, Lie> {
    check_anchor(ans, height, root)?;
    let c = Checker { root, height };
    let (index_key, side, name) = match direction {
        Direction::Outgoing => (keys::trust_outgoing(who), Side::Outgoing, "outgoing"),
        Direction::Incoming => (keys::trust_incoming(who), Side::Incoming, "incoming"),
    };
    let what = || format!("the {name} trust index of {}", addr(who));
    let index = trust_index(c.raw(&index_key, ans.index.as_ref(), &what)?, &what)?;
    Ok(index
        .entries
        .iter()
        .map(|e| trust::statement(who, side, e))
        .collect())
}

/// Verifies a `FindTrustPath` answer. A found path must be a chain of proven, unexpired
/// statements `from -> ... -> to` within `limits`, each proven by its signer's outgoing
/// index; "not found" cannot be proven.
pub fn trust_path(
    root: &[u8; 32],
    height: u64,
    from: &IdentityKey,
    to: &IdentityKey,
    limits: PathLimits,
    ans: &pb::TrustPathAnswer,
) -> Result<TrustPath, Lie> {
    check_anchor(ans, height, root)?;
    if !ans.found {
        return Ok(TrustPath::NotFound);
    }
    let c = Checker { root, height };
    let block_time = c
        .record::<pb::BlockInfo>(&keys::block_info(), ans.block_info.as_ref(), &|| {
            "the block info".into()
        })?
        .map_or(0, |b| b.time);
    if ans.statements.len() > limits.max_depth as usize {
        return Err(Lie::BadTrustPath(format!(
            "{} statements, more than the depth {} asked for",
            ans.statements.len(),
            limits.max_depth
        )));
    }
    if ans.statements.is_empty() && from != to {
        return Err(Lie::BadTrustPath(
            "a path of no statements between two identities".into(),
        ));
    }
    if ans.hops.len() != ans.statements.len() {
        return Err(Lie::BadTrustPath(format!(
            "{} statements but {} hops",
            ans.statements.len(),
            ans.hops.len()
        )));
    }
    let mut at = *from;
    let mut statements = Vec::with_capacity(ans.statements.len());
    for (i, (pv, next)) in ans.statements.iter().zip(&ans.hops).enumerate() {
        let next: IdentityKey = next.as_slice().try_into().map_err(|_| {
            Lie::BadTrustPath(format!("hop {i} names a key of {} bytes", next.len()))
        })?;
        let what = || format!("the trust statement {} -> {}", addr(&at), addr(&next));
        let index = trust_index(c.raw(&keys::trust_outgoing(&at), Some(pv), &what)?, &what)?;
        let st = trust::entry(&index, &next)
            .map(|e| trust::statement(&at, Side::Outgoing, e))
            .ok_or_else(|| Lie::BadTrustPath(format!("{} does not exist", what())))?;
        if st.level < limits.min_level {
            return Err(Lie::BadTrustPath(format!(
                "{} has level {}, below {}",
                what(),
                st.level,
                limits.min_level
            )));
        }
        if st.expires_at != 0 && st.expires_at <= block_time {
            return Err(Lie::BadTrustPath(format!(
                "{} expired at {}, the block time is {block_time}",
                what(),
                st.expires_at
            )));
        }
        statements.push(st);
        at = next;
    }
    if &at != to {
        return Err(Lie::BadTrustPath(format!(
            "the path ends at {}, not at {}",
            addr(&at),
            addr(to)
        )));
    }
    Ok(TrustPath::Found {
        statements,
        block_time,
    })
}
