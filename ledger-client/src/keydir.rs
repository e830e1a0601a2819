//! The key-directory monitor (the AKD / CONIKS auditor's role): an identity's key history
//! is append-only, so every entry proven at one height must be unchanged at every later
//! height that is checked.
//!
//! [`KeyDirectory`] remembers, per identity, the SHA-256 of each history entry's encoded
//! bytes and the lowest height it was proven at. Every new verified history is compared
//! with it: at a later height the remembered entries must be a prefix of the new history;
//! at an earlier height the new history must be a prefix of the remembered one. Anything
//! else is a [`Rewrite`]. The directory lives in the checkpoint, so the promise holds
//! across runs.

use std::collections::BTreeMap;

use onionpost_proto::onion::OnionAddress;

use crate::IdentityKey;

/// How an entry was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteKind {
    /// The entry is there with other content.
    Changed,
    /// The entry is gone (the history got shorter).
    Removed,
}

/// A key-history entry that did not stay as it was proven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key history rewritten: entry #{seq} of {}, proven at height {proven_at}, is {} at height {height}",
    OnionAddress::from_public_key(*.identity).hostname(),
    match .kind { RewriteKind::Changed => "different", RewriteKind::Removed => "gone" }
)]
pub struct Rewrite {
    /// The identity.
    pub identity: IdentityKey,
    /// The entry's index.
    pub seq: u64,
    /// The height the entry was first proven at.
    pub proven_at: u64,
    /// The (later) height where it differs or is missing.
    pub height: u64,
    /// How it was rewritten.
    pub kind: RewriteKind,
}

/// What an observation of a key history showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Same entries as remembered.
    Unchanged,
    /// New entries at the end; the old ones unchanged.
    Grew {
        /// Entries remembered before.
        from: usize,
        /// Entries now.
        to: usize,
    },
    /// An answer from an earlier height, consistent with what is remembered.
    Earlier,
}

/// What is remembered of one identity's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLog {
    /// The highest height the history was checked at (0 = never).
    pub height: u64,
    /// Per entry: SHA-256 of its encoded bytes, and the lowest height it was proven at.
    pub entries: Vec<([u8; 32], u64)>,
}

/// Remembered key histories, per identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyDirectory {
    logs: BTreeMap<IdentityKey, KeyLog>,
}

impl KeyDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `who` (no-op if it is tracked already).
    pub fn track(&mut self, who: IdentityKey) {
        self.logs.entry(who).or_default();
    }

    /// The tracked identities, sorted.
    pub fn tracked(&self) -> impl Iterator<Item = &IdentityKey> {
        self.logs.keys()
    }

    /// What is remembered of `who`.
    pub fn log(&self, who: &IdentityKey) -> Option<&KeyLog> {
        self.logs.get(who)
    }

    /// The number of tracked identities.
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    /// Whether no identity is tracked.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Compares the history of `who` verified at `height` (the SHA-256 of each entry's
    /// encoded bytes, in order) with what is remembered, and remembers it. On a rewrite
    /// nothing is updated: the first proven version stays the reference.
    pub fn observe(
        &mut self,
        who: &IdentityKey,
        height: u64,
        digests: &[[u8; 32]],
    ) -> Result<Growth, Rewrite> {
        let log = self.logs.entry(*who).or_default();
        let rewrite = |seq: usize, proven_at: u64, at: u64, kind| Rewrite {
            identity: *who,
            seq: seq as u64,
            proven_at,
            height: at,
            kind,
        };
        if height >= log.height {
            // Everything remembered must still be there, unchanged.
            for (i, (d, proven_at)) in log.entries.iter().enumerate() {
                match digests.get(i) {
                    None => return Err(rewrite(i, *proven_at, height, RewriteKind::Removed)),
                    Some(now) if now != d => {
                        return Err(rewrite(i, *proven_at, height, RewriteKind::Changed));
                    }
                    Some(_) => {}
                }
            }
            let from = log.entries.len();
            log.entries
                .extend(digests[from..].iter().map(|d| (*d, height)));
            log.height = height;
            Ok(if digests.len() > from {
                Growth::Grew {
                    from,
                    to: digests.len(),
                }
            } else {
                Growth::Unchanged
            })
        } else {
            // An earlier history must be a prefix of the remembered, later one.
            for (i, d) in digests.iter().enumerate() {
                match log.entries.get(i) {
                    None => return Err(rewrite(i, height, log.height, RewriteKind::Removed)),
                    Some((then, _)) if then != d => {
                        return Err(rewrite(i, height, log.height, RewriteKind::Changed));
                    }
                    Some(_) => {}
                }
            }
            for entry in log.entries.iter_mut().take(digests.len()) {
                entry.1 = entry.1.min(height);
            }
            Ok(Growth::Earlier)
        }
    }

    pub(crate) fn from_logs(logs: BTreeMap<IdentityKey, KeyLog>) -> Self {
        Self { logs }
    }

    pub(crate) fn logs(&self) -> &BTreeMap<IdentityKey, KeyLog> {
        &self.logs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IdentityKey = [1; 32];

    #[test]
    fn histories_may_only_grow() {
        let mut d = KeyDirectory::new();
        assert_eq!(d.observe(&A, 5, &[]), Ok(Growth::Unchanged));
        assert_eq!(
            d.observe(&A, 10, &[[1; 32]]),
            Ok(Growth::Grew { from: 0, to: 1 })
        );
        assert_eq!(
            d.observe(&A, 20, &[[1; 32], [2; 32]]),
            Ok(Growth::Grew { from: 1, to: 2 })
        );
        assert_eq!(
            d.observe(&A, 20, &[[1; 32], [2; 32]]),
            Ok(Growth::Unchanged)
        );
        assert_eq!(d.observe(&A, 15, &[[1; 32]]), Ok(Growth::Earlier));
        // Entry 1 was first proven at 20.
        let changed = d.observe(&A, 30, &[[1; 32], [9; 32]]).unwrap_err();
        assert_eq!(
            (changed.seq, changed.proven_at, changed.height, changed.kind),
            (1, 20, 30, RewriteKind::Changed)
        );
        assert!(
            changed
                .to_string()
                .starts_with("key history rewritten: entry #1 of ")
        );
        let removed = d.observe(&A, 30, &[[1; 32]]).unwrap_err();
        assert_eq!(removed.kind, RewriteKind::Removed);
        // A rewrite is not remembered: the original stays the reference.
        assert_eq!(d.log(&A).unwrap().entries.len(), 2);
        assert_eq!(d.log(&A).unwrap().height, 20);
    }

    #[test]
    fn an_earlier_answer_must_be_a_prefix() {
        let mut d = KeyDirectory::new();
        d.observe(&A, 20, &[[1; 32]]).unwrap();
        // At height 10 there was an entry that is gone at 20.
        let e = d.observe(&A, 10, &[[1; 32], [2; 32]]).unwrap_err();
        assert_eq!((e.seq, e.proven_at, e.height), (1, 10, 20));
        let e = d.observe(&A, 10, &[[3; 32]]).unwrap_err();
        assert_eq!(e.kind, RewriteKind::Changed);
        // An earlier proof lowers the height an entry is known from.
        d.observe(&A, 12, &[[1; 32]]).unwrap();
        assert_eq!(d.log(&A).unwrap().entries[0].1, 12);
    }
}
