//! Validator sets with their invariants checked: 32-byte keys, no key twice, positive
//! powers, and a total voting power whose two-thirds quorum arithmetic cannot overflow.

use onionpost_proto::v1::{self as pb, ValidatorUpdate};

/// Why a list of validators is not a usable validator set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// No validator with positive power.
    #[error("the set has no validator with positive voting power")]
    Empty,
    /// A key that is not 32 bytes.
    #[error("a validator key has {0} bytes, not 32")]
    KeyLength(usize),
    /// The same key twice.
    #[error("validator {0} appears twice")]
    Duplicate(String),
    /// The voting powers do not sum (times three, for the quorum check) within 64 bits.
    #[error("the voting powers overflow: their sum times three does not fit in 64 bits")]
    Overflow,
}

/// A validator set: keys sorted, powers positive (a power of 0 removes a validator, so such
/// entries are dropped), total power summed with overflow checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorSet {
    members: Vec<([u8; 32], u64)>,
    total: u64,
    /// The same set in wire form, for `verify_commit`.
    updates: Vec<ValidatorUpdate>,
}

impl ValidatorSet {
    /// Builds a set from `(public key, power)` pairs.
    pub fn new(validators: impl IntoIterator<Item = ([u8; 32], u64)>) -> Result<Self, SetError> {
        let mut members: Vec<([u8; 32], u64)> =
            validators.into_iter().filter(|(_, p)| *p > 0).collect();
        members.sort();
        if let Some(w) = members.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SetError::Duplicate(hex::encode(w[0].0)));
        }
        if members.is_empty() {
            return Err(SetError::Empty);
        }
        let total = members
            .iter()
            .try_fold(0u64, |sum, (_, p)| sum.checked_add(*p))
            .ok_or(SetError::Overflow)?;
        // verify_commit compares `signed * 3` with `total * 2`, and signed <= total.
        total.checked_mul(3).ok_or(SetError::Overflow)?;
        let updates = members
            .iter()
            .map(|(k, p)| ValidatorUpdate {
                pub_key: k.to_vec(),
                power: *p,
            })
            .collect();
        Ok(Self {
            members,
            total,
            updates,
        })
    }

    /// Builds a set from wire-form updates (the ledger's `validators` record, a claimed set).
    pub fn from_updates(updates: &[ValidatorUpdate]) -> Result<Self, SetError> {
        let pairs = updates
            .iter()
            .filter(|u| u.power > 0)
            .map(|u| {
                <[u8; 32]>::try_from(u.pub_key.as_slice())
                    .map(|k| (k, u.power))
                    .map_err(|_| SetError::KeyLength(u.pub_key.len()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(pairs)
    }

    /// Builds a set from the ledger's `validators` record.
    pub fn from_record(record: &pb::ValidatorSet) -> Result<Self, SetError> {
        Self::from_updates(&record.validators)
    }

    /// The number of validators.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a set has at least one validator.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The sum of the voting powers.
    pub fn total_power(&self) -> u64 {
        self.total
    }

    /// The validators, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 32], u64)> {
        self.members.iter().map(|(k, p)| (k, *p))
    }

    /// The set in wire form, for [`onionpost_proto::consensus::verify_commit`].
    pub fn as_updates(&self) -> &[ValidatorUpdate] {
        &self.updates
    }

    /// Whether a set claimed in wire form (e.g. by a server next to a certificate) is this
    /// one, up to order and zero-power entries.
    pub fn matches(&self, claimed: &[ValidatorUpdate]) -> bool {
        Self::from_updates(claimed).is_ok_and(|c| c.members == self.members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_sorted_without_zero_powers() {
        let s = ValidatorSet::new([([2; 32], 5), ([1; 32], 3), ([3; 32], 0)]).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.total_power(), 8);
        assert_eq!(s.iter().next().unwrap().0, &[1; 32]);
        assert!(s.matches(&[
            ValidatorUpdate {
                pub_key: vec![2; 32],
                power: 5
            },
            ValidatorUpdate {
                pub_key: vec![1; 32],
                power: 3
            },
        ]));
        assert!(!s.matches(&[ValidatorUpdate {
            pub_key: vec![2; 32],
            power: 5
        }]));
    }

    #[test]
    fn refuses_duplicates_empty_sets_and_overflow() {
        assert_eq!(
            ValidatorSet::new([([1; 32], 1), ([1; 32], 2)]),
            Err(SetError::Duplicate(hex::encode([1; 32])))
        );
        assert_eq!(ValidatorSet::new([([1; 32], 0)]), Err(SetError::Empty));
        assert_eq!(
            ValidatorSet::new([([1; 32], u64::MAX), ([2; 32], 1)]),
            Err(SetError::Overflow)
        );
        // Sums that fit, but whose triple does not, would overflow the quorum check.
        assert_eq!(
            ValidatorSet::new([([1; 32], u64::MAX / 2)]),
            Err(SetError::Overflow)
        );
        assert_eq!(
            ValidatorSet::from_updates(&[ValidatorUpdate {
                pub_key: vec![1; 31],
                power: 1
            }]),
            Err(SetError::KeyLength(31))
        );
    }
}
