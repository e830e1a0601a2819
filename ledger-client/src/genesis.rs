//! The part of a chain's `genesis.json` a verifier needs: the chain id, the initial
//! validators, and the identities registered at genesis.
//!
//! Genesis is the only thing a verifier takes on faith, and it takes it from a file the
//! operator got out of band (the same file every validator started from), never from a
//! ledger server.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::IdentityKey;
use crate::error::Error;
use crate::validators::ValidatorSet;

/// The genesis of a chain, as a verifier reads it from `genesis.json`. Fields the verifier
/// does not need are ignored, so the file the validators use serves unchanged.
#[derive(Debug, Clone)]
pub struct Genesis {
    /// The chain id every certificate must carry.
    pub chain_id: String,
    /// Genesis time as written in the file (0 if absent); part of the fingerprint.
    pub genesis_time: u64,
    /// The validators that decide heights 1 and 2.
    pub validators: ValidatorSet,
    /// Identities registered at genesis (the governing list's admins and any others).
    pub identities: Vec<IdentityKey>,
}

#[derive(Deserialize)]
struct File {
    chain_id: String,
    #[serde(default)]
    genesis_time: u64,
    validators: Vec<FileValidator>,
    #[serde(default)]
    app_state: Option<FileAppState>,
}

#[derive(Deserialize)]
struct FileValidator {
    pub_key: String,
    power: u64,
}

#[derive(Deserialize)]
struct FileAppState {
    #[serde(default)]
    admins: Vec<FileIdentity>,
    #[serde(default)]
    identities: Vec<FileIdentity>,
}

#[derive(Deserialize)]
struct FileIdentity {
    public_key: String,
}

fn key32(hex_key: &str, what: &str) -> Result<[u8; 32], Error> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::Genesis(format!(
                "{what} {hex_key:?} is not 64 hex characters of an ed25519 key"
            ))
        })
}

impl Genesis {
    /// Parses a validator's `genesis.json` (`chain_id`, `genesis_time`, `validators`, and the
    /// `app_state` identities; other fields are ignored).
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let file: File = serde_json::from_slice(bytes).map_err(|e| {
            Error::Genesis(format!(
                "not a genesis.json with chain_id and validators: {e}"
            ))
        })?;
        if file.chain_id.is_empty() {
            return Err(Error::Genesis("the chain_id is empty".into()));
        }
        let validators = file
            .validators
            .iter()
            .map(|v| Ok((key32(&v.pub_key, "genesis validator key")?, v.power)))
            .collect::<Result<Vec<_>, Error>>()?;
        let validators = ValidatorSet::new(validators)
            .map_err(|e| Error::Genesis(format!("the genesis validator set is unusable: {e}")))?;
        let identities = match &file.app_state {
            None => Vec::new(),
            Some(a) => a
                .admins
                .iter()
                .chain(&a.identities)
                .map(|i| key32(&i.public_key, "genesis identity key"))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            chain_id: file.chain_id,
            genesis_time: file.genesis_time,
            validators,
            identities,
        })
    }

    /// Reads and parses a `genesis.json` file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Genesis(format!(
                "cannot read the genesis file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&bytes).map_err(|e| match e {
            Error::Genesis(m) => Error::Genesis(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// A fingerprint of what a verifier derives from this genesis (chain id, genesis time,
    /// validators). A checkpoint records it, so it is never resumed against another chain
    /// that happens to share a chain id.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"onionpost/genesis-fingerprint/v1");
        h.update((self.chain_id.len() as u64).to_be_bytes());
        h.update(self.chain_id.as_bytes());
        h.update(self.genesis_time.to_be_bytes());
        for (key, power) in self.validators.iter() {
            h.update(key);
            h.update(power.to_be_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(validators: &str) -> String {
        format!(
            r#"{{"chain_id":"c","genesis_time":7,"validators":[{validators}],
                "app_state":{{"governing_list":"g","admins":[{{"public_key":"{}"}}]}},
                "something_else":1}}"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn reads_a_validator_genesis_and_ignores_the_rest() {
        let g = Genesis::from_json(
            json(&format!(
                r#"{{"pub_key":"{}","power":10}}"#,
                "01".repeat(32)
            ))
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(g.chain_id, "c");
        assert_eq!(g.validators.len(), 1);
        assert_eq!(g.validators.total_power(), 10);
        assert_eq!(g.identities, vec![[0xab; 32]]);
    }

    #[test]
    fn refuses_bad_keys_and_empty_sets_and_overflowing_power() {
        let err = Genesis::from_json(json(r#"{"pub_key":"zz","power":1}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not 64 hex"), "{err}");
        let err = Genesis::from_json(json("").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no validator"), "{err}");
        let two = format!(
            r#"{{"pub_key":"{}","power":{}}},{{"pub_key":"{}","power":{}}}"#,
            "01".repeat(32),
            u64::MAX / 2,
            "02".repeat(32),
            u64::MAX / 2
        );
        let err = Genesis::from_json(json(&two).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflow"), "{err}");
    }

    #[test]
    fn fingerprints_differ_by_validators() {
        let a = Genesis::from_json(
            json(&format!(
                r#"{{"pub_key":"{}","power":10}}"#,
                "01".repeat(32)
            ))
            .as_bytes(),
        )
        .unwrap();
        let b = Genesis::from_json(
            json(&format!(
                r#"{{"pub_key":"{}","power":11}}"#,
                "01".repeat(32)
            ))
            .as_bytes(),
        )
        .unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
