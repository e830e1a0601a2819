//! Trust indexes: how the ledger stores trust statements.
//!
//! Since state format 2 a statement has no record of its own: the signer's outgoing index
//! (`trust_out/<from>`) and the target's incoming index (`trust_in/<to>`) each hold it whole,
//! as a [`TrustEntry`] sorted by the other identity. So signing one writes three keys (the
//! signer's record for its nonce, and the two indexes), and one proof of an index shows every
//! statement it holds. Server and verifiers read the indexes with these functions.

use prost::Message;

use crate::v1::{TrustEntry, TrustIndex, TrustStatement};

/// The version of [`TrustIndex`] this build writes and reads.
pub const TRUST_INDEX_VERSION: u32 = 1;

/// Which side of its statements an index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The statements its owner signed (`other` is the target).
    Outgoing,
    /// The statements about its owner (`other` is the signer).
    Incoming,
}

/// A stored index that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The bytes do not decode.
    #[error("a trust index does not decode: {0}")]
    Decode(String),
    /// Another version than this build reads.
    #[error(
        "a trust index is in version {found}, but this build reads only version {TRUST_INDEX_VERSION}: it was written by another version of onionpost"
    )]
    Version {
        /// The version found (0: none).
        found: u32,
    },
    /// Entries out of order, repeated, or naming something that is not an identity.
    #[error("a trust index is malformed: {0}")]
    Malformed(String),
}

/// Decodes a stored index and checks its version and order.
pub fn decode_index(bytes: &[u8]) -> Result<TrustIndex, IndexError> {
    let index = TrustIndex::decode(bytes).map_err(|e| IndexError::Decode(e.to_string()))?;
    check_index(&index)?;
    Ok(index)
}

/// Checks an index's version, that every `other` is a 32-byte key, and that the entries are
/// sorted by it without repeats.
pub fn check_index(index: &TrustIndex) -> Result<(), IndexError> {
    if index.version != TRUST_INDEX_VERSION {
        return Err(IndexError::Version {
            found: index.version,
        });
    }
    if let Some(e) = index.entries.iter().find(|e| e.other.len() != 32) {
        return Err(IndexError::Malformed(format!(
            "an entry names a key of {} bytes",
            e.other.len()
        )));
    }
    if index.entries.windows(2).any(|w| w[0].other >= w[1].other) {
        return Err(IndexError::Malformed(
            "entries are not sorted by identity, or repeat one".into(),
        ));
    }
    Ok(())
}

/// The position of the entry about `other`, or where it would go.
pub fn position(index: &TrustIndex, other: &[u8]) -> Result<usize, usize> {
    index
        .entries
        .binary_search_by(|e| e.other.as_slice().cmp(other))
}

/// The entry about `other`, if the index holds one.
pub fn entry<'i>(index: &'i TrustIndex, other: &[u8]) -> Option<&'i TrustEntry> {
    position(index, other).ok().map(|i| &index.entries[i])
}

/// The statement an entry of `owner`'s index on `side` stands for.
pub fn statement(owner: &[u8; 32], side: Side, e: &TrustEntry) -> TrustStatement {
    let (from, to) = match side {
        Side::Outgoing => (owner.to_vec(), e.other.clone()),
        Side::Incoming => (e.other.clone(), owner.to_vec()),
    };
    TrustStatement {
        from,
        to,
        level: e.level,
        expires_at: e.expires_at,
        signed_height: e.signed_height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_about(b: u8) -> TrustEntry {
        TrustEntry {
            other: vec![b; 32],
            level: 1,
            expires_at: 0,
            signed_height: 3,
        }
    }

    #[test]
    fn an_index_of_another_version_is_refused_not_misread() {
        let mut index = TrustIndex {
            version: TRUST_INDEX_VERSION,
            entries: vec![entry_about(1), entry_about(2)],
        };
        assert_eq!(decode_index(&index.encode_to_vec()), Ok(index.clone()));
        index.version = 2;
        let err = decode_index(&index.encode_to_vec()).unwrap_err();
        assert_eq!(err, IndexError::Version { found: 2 });
        assert!(err.to_string().contains("version 2"), "{err}");
        // An index set of the old layout (an IdentitySet) does not decode as one.
        let old = crate::v1::IdentitySet {
            keys: vec![vec![1; 32]],
        };
        assert!(matches!(
            decode_index(&old.encode_to_vec()),
            Err(IndexError::Decode(_))
        ));
    }

    #[test]
    fn unsorted_or_repeated_entries_are_malformed() {
        for entries in [
            vec![entry_about(2), entry_about(1)],
            vec![entry_about(1), entry_about(1)],
        ] {
            let index = TrustIndex {
                version: TRUST_INDEX_VERSION,
                entries,
            };
            assert!(matches!(
                decode_index(&index.encode_to_vec()),
                Err(IndexError::Malformed(_))
            ));
        }
    }

    #[test]
    fn entries_stand_for_statements_by_side() {
        let e = entry_about(7);
        let owner = [9u8; 32];
        let out = statement(&owner, Side::Outgoing, &e);
        assert_eq!((out.from, out.to), (vec![9; 32], vec![7; 32]));
        let inc = statement(&owner, Side::Incoming, &e);
        assert_eq!((inc.from, inc.to), (vec![7; 32], vec![9; 32]));
        assert_eq!((inc.level, inc.signed_height), (1, 3));
    }
}
