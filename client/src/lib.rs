//! The onionpost client library: key files, identity names, and ledger reads that are
//! verified against the app hash before anyone sees them.
//!
//! Every `verified_*` function takes the answer of the gRPC `Ledger` service and a trusted
//! root, checks each proof with [`onionpost_proto::proof`], and returns typed records. A
//! server that lies about a value, hides one, or answers about another key is caught.

pub mod audit;

use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_consensus::SigningKey;
use onionpost_proto::keys;
use onionpost_proto::onion::OnionAddress;
use onionpost_proto::proof::{ProofError, root_from_bytes, verify_record};
use onionpost_proto::v1::{self as pb};

/// Parses an identity given as `name@<onion>.onion`, `<onion>.onion`, the 56-character
/// label, or the 64-hex-character public key.
pub fn parse_identity(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let host = s.rsplit_once('@').map_or(s, |(_, h)| h);
    if host.len() == 64 && host.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes = hex::decode(host).expect("checked hex");
        return Ok(bytes.try_into().expect("32 bytes"));
    }
    host.parse::<OnionAddress>()
        .map(|a| a.public_key())
        .with_context(|| format!("{s:?} is neither an onion address nor a 64-hex public key"))
}

/// Reads a key file: 64 hex characters of an ed25519 secret seed.
pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!(
                "{} does not hold a 64-hex-character ed25519 seed",
                path.display()
            )
        })?;
    Ok(SigningKey::from(seed))
}

/// Writes a new key file readable by its owner only (0600). Refuses to overwrite.
pub fn write_new_key(path: &Path) -> Result<SigningKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::new(rand_core::OsRng);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create key file {} (does it exist already?)",
                path.display()
            )
        })?;
    writeln!(f, "{}", hex::encode(key.to_bytes()))?;
    f.sync_all()?;
    Ok(key)
}

/// The onion address of a public key.
pub fn address(pk: &[u8; 32]) -> String {
    OnionAddress::from_public_key(*pk).hostname()
}

/// The root an answer is checked against: `trusted` if given (from a source the caller
/// trusts, e.g. its own validator or a commit certificate), else the answer's own anchor,
/// which only proves the answer is consistent with the state the server claims.
pub fn root_of(
    anchor: Option<&pb::Anchor>,
    trusted: Option<&TrustedRoot>,
) -> Result<([u8; 32], u64)> {
    let anchor = anchor.context("the answer has no anchor")?;
    let root = root_from_bytes(&anchor.root)?;
    if let Some(t) = trusted {
        if t.height != anchor.height {
            bail!(
                "the server answered at height {}, the trusted root is for height {}",
                anchor.height,
                t.height
            );
        }
        if t.root != root {
            bail!(
                "the server's app hash at height {} is {}, the trusted one is {}: the server is lying or on another chain",
                anchor.height,
                hex::encode(root),
                hex::encode(t.root)
            );
        }
    }
    Ok((root, anchor.height))
}

/// An app hash the caller trusts at a height.
#[derive(Debug, Clone, Copy)]
pub struct TrustedRoot {
    /// The height.
    pub height: u64,
    /// The app hash.
    pub root: [u8; 32],
}

/// A verified membership answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Membership {
    /// The list does not exist (proven absent).
    UnknownList,
    /// The identity is not a member (proven absent).
    NotMember,
    /// The identity is a member.
    Member(pb::MembershipRecord),
}

/// Verifies a CheckMembership answer for (`list`, `who`).
pub fn verified_membership(
    root: &[u8; 32],
    list: &str,
    who: &[u8; 32],
    ans: &pb::MembershipAnswer,
) -> Result<Membership, ProofError> {
    let missing = || ProofError::Malformed("answer lacks a proof".into());
    let rec: Option<pb::ListRecord> = verify_record(
        root,
        &keys::list(list),
        ans.list.as_ref().ok_or_else(missing)?,
    )?;
    let m: Option<pb::MembershipRecord> = verify_record(
        root,
        &keys::membership(list, who),
        ans.membership.as_ref().ok_or_else(missing)?,
    )?;
    Ok(match (rec, m) {
        (None, _) => Membership::UnknownList,
        (Some(_), None) => Membership::NotMember,
        (Some(_), Some(m)) => Membership::Member(m),
    })
}

/// Verifies a GetIdentity answer.
pub fn verified_identity(
    root: &[u8; 32],
    who: &[u8; 32],
    ans: &pb::IdentityAnswer,
) -> Result<Option<pb::IdentityRecord>, ProofError> {
    let pv = ans
        .identity
        .as_ref()
        .ok_or_else(|| ProofError::Malformed("answer lacks a proof".into()))?;
    verify_record(root, &keys::identity(who), pv)
}

/// Verifies a KeyHistory answer: the identity record and every one of its entries, in order.
pub fn verified_key_history(
    root: &[u8; 32],
    who: &[u8; 32],
    ans: &pb::KeyHistoryAnswer,
) -> Result<Vec<pb::KeyHistoryEntry>, ProofError> {
    let pv = ans
        .identity
        .as_ref()
        .ok_or_else(|| ProofError::Malformed("answer lacks a proof".into()))?;
    let len = verify_record::<pb::IdentityRecord>(root, &keys::identity(who), pv)?
        .map_or(0, |r| r.key_history_len);
    if ans.entries.len() as u64 != len {
        return Err(ProofError::Malformed(format!(
            "the identity has {len} key history entries, the answer carries {}",
            ans.entries.len()
        )));
    }
    ans.entries
        .iter()
        .enumerate()
        .map(|(i, pv)| {
            verify_record(root, &keys::key_history(who, i as u64), pv)?
                .ok_or_else(|| ProofError::Malformed(format!("key history entry {i} is missing")))
        })
        .collect()
}

/// A list and all its members, verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedList {
    /// The list's record.
    pub record: pb::ListRecord,
    /// Every member, sorted.
    pub members: Vec<[u8; 32]>,
}

/// Verifies a ListMembers answer; `None` if the list does not exist.
pub fn verified_members(
    root: &[u8; 32],
    list: &str,
    ans: &pb::ListMembersAnswer,
) -> Result<Option<VerifiedList>, ProofError> {
    let missing = || ProofError::Malformed("answer lacks a proof".into());
    let Some(rec) = verify_record::<pb::ListRecord>(
        root,
        &keys::list(list),
        ans.list.as_ref().ok_or_else(missing)?,
    )?
    else {
        return Ok(None);
    };
    let set: pb::IdentitySet = verify_record(
        root,
        &keys::list_members(list),
        ans.members.as_ref().ok_or_else(missing)?,
    )?
    .unwrap_or_default();
    let members = set
        .keys
        .iter()
        .map(|k| {
            k.as_slice()
                .try_into()
                .map_err(|_| ProofError::Malformed("member key is not 32 bytes".into()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(VerifiedList {
        record: rec,
        members,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_in_every_spelling() {
        let pk = [9u8; 32];
        let addr = OnionAddress::from_public_key(pk);
        for s in [
            addr.hostname(),
            addr.label(),
            format!("alice@{}", addr.hostname()),
            hex::encode(pk),
        ] {
            assert_eq!(parse_identity(&s).unwrap(), pk, "{s}");
        }
        let err = parse_identity("bob@example.com").unwrap_err().to_string();
        assert!(err.contains("neither an onion address"), "{err}");
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = write_new_key(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(write_new_key(&path).is_err());
        std::fs::write(&path, "zz").unwrap();
        assert!(read_key(&path).unwrap_err().to_string().contains("64-hex"));
    }
}
