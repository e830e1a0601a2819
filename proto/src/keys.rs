//! The keys of the ledger's authenticated state tree.
//!
//! The tree (a Jellyfish Merkle tree) is keyed by SHA-256 of these byte strings. Server and
//! verifier build keys with the same functions, so a client checks that an answer's proof is
//! about the key it asked for. Identities are 32-byte ed25519 keys; list names are validated
//! (a-z, 0-9, '-', '.') so no key can be mistaken for another.

/// An identity's record (`IdentityRecord`).
pub fn identity(id: &[u8; 32]) -> Vec<u8> {
    concat(&[b"identity/", id])
}

/// Entry `seq` of an identity's key history (`KeyHistoryEntry`).
pub fn key_history(id: &[u8; 32], seq: u64) -> Vec<u8> {
    concat(&[b"keyhist/", id, b"/", &seq.to_be_bytes()])
}

/// A list's record (`ListRecord`).
pub fn list(name: &str) -> Vec<u8> {
    concat(&[b"list/", name.as_bytes()])
}

/// The full member set of a list (`IdentitySet`).
pub fn list_members(name: &str) -> Vec<u8> {
    concat(&[b"members/", name.as_bytes()])
}

/// One membership (`MembershipRecord`); absent = not a member.
pub fn membership(name: &str, member: &[u8; 32]) -> Vec<u8> {
    concat(&[b"member/", name.as_bytes(), b"/", member])
}

/// Every trust statement `from` has signed, whole (`TrustIndex`, see [`crate::trust`]).
pub fn trust_outgoing(from: &[u8; 32]) -> Vec<u8> {
    concat(&[b"trust_out/", from])
}

/// Every trust statement signed about `to`, whole (`TrustIndex`).
pub fn trust_incoming(to: &[u8; 32]) -> Vec<u8> {
    concat(&[b"trust_in/", to])
}

/// The current validator set (`ValidatorSet`).
pub fn validators() -> Vec<u8> {
    b"validators".to_vec()
}

/// A governance proposal (`Proposal`): an admin or validator-set change.
pub fn proposal(id: u64) -> Vec<u8> {
    concat(&[b"proposal/", &id.to_be_bytes()])
}

/// The id the next proposal gets (8 bytes, big-endian).
pub fn next_proposal() -> Vec<u8> {
    b"proposal_next".to_vec()
}

/// The last block's `BlockInfo` (height and block time).
pub fn block_info() -> Vec<u8> {
    b"block_info".to_vec()
}

/// The chain's `ChainConfig`.
pub fn chain_config() -> Vec<u8> {
    b"chain_config".to_vec()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Whether `name` is a valid list name: 1-64 characters of a-z, 0-9, '-' and '.'.
pub fn is_valid_list_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_kinds_never_collide() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let all = [
            identity(&a),
            identity(&b),
            key_history(&a, 0),
            key_history(&a, 1),
            list("x"),
            list_members("x"),
            membership("x", &a),
            trust_outgoing(&a),
            trust_incoming(&a),
            validators(),
            proposal(1),
            next_proposal(),
            block_info(),
            chain_config(),
        ];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }

    #[test]
    fn list_names_are_restricted() {
        assert!(is_valid_list_name("dev-team.2026"));
        assert!(!is_valid_list_name(""));
        assert!(!is_valid_list_name("Dev"));
        assert!(!is_valid_list_name("a/b"));
        assert!(!is_valid_list_name(&"a".repeat(65)));
    }
}
