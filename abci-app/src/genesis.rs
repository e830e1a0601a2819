//! The ledger's genesis: the `app_state` JSON of a CometBFT genesis file, turned into the
//! first state (version 0).
//!
//! ```json
//! {
//!   "governing_list": "govern",
//!   "admins": [{"public_key": "<64 hex>", "display_name": "alice"}],
//!   "identities": [{"public_key": "<64 hex>", "display_name": "bob"}]
//! }
//! ```
//!
//! Every admin and extra identity is registered at height 0; the admins become the admins
//! and members of the governing list, whose admins approve validator-set changes. The
//! validators themselves come from InitChain (CometBFT's `validators`).

use std::collections::BTreeMap;

use onionpost_proto::keys;
use onionpost_proto::v1::{
    ChainConfig, IdentityRecord, IdentitySet, ListPolicy, ListRecord, MembershipRecord,
    ValidatorSet, ValidatorUpdate,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::execute::WriteSet;

/// The ledger's part of a genesis file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppGenesis {
    /// The list whose admins govern the validator set.
    pub governing_list: String,
    /// The initial admins of the governing list (at least one).
    pub admins: Vec<GenesisIdentity>,
    /// Further identities registered at genesis.
    #[serde(default)]
    pub identities: Vec<GenesisIdentity>,
}

/// An identity registered at genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisIdentity {
    /// The ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// Optional display name.
    #[serde(default)]
    pub display_name: String,
}

/// Why a genesis is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// Not the JSON expected.
    #[error("genesis app_state is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    /// A bad key.
    #[error("genesis public key {key:?} is not 64 hex characters of an ed25519 key")]
    Key {
        /// The offending key.
        key: String,
    },
    /// Anything else.
    #[error("genesis is invalid: {0}")]
    Invalid(String),
}

fn parse_key(hex_key: &str) -> Result<[u8; 32], GenesisError> {
    let bad = || GenesisError::Key {
        key: hex_key.to_owned(),
    };
    let bytes: [u8; 32] = hex::decode(hex_key)
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    ed25519_consensus::VerificationKey::try_from(bytes).map_err(|_| bad())?;
    Ok(bytes)
}

impl AppGenesis {
    /// Parses the `app_state` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, GenesisError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The state writes of genesis for `chain_id`, with `validators` from InitChain.
    pub fn writes(
        &self,
        chain_id: &str,
        validators: Vec<ValidatorUpdate>,
    ) -> Result<WriteSet, GenesisError> {
        if chain_id.is_empty() {
            return Err(GenesisError::Invalid("chain_id is empty".into()));
        }
        if !keys::is_valid_list_name(&self.governing_list) {
            return Err(GenesisError::Invalid(format!(
                "governing_list {:?} is not a valid list name",
                self.governing_list
            )));
        }
        if self.admins.is_empty() {
            return Err(GenesisError::Invalid(
                "at least one admin is required".into(),
            ));
        }
        let mut identities = BTreeMap::new();
        for id in self.admins.iter().chain(&self.identities) {
            let key = parse_key(&id.public_key)?;
            if identities.insert(key, id.display_name.clone()).is_some() {
                return Err(GenesisError::Invalid(format!(
                    "identity {} is listed twice",
                    id.public_key
                )));
            }
        }
        let mut admins: Vec<Vec<u8>> = self
            .admins
            .iter()
            .map(|a| parse_key(&a.public_key).map(|k| k.to_vec()))
            .collect::<Result<_, _>>()?;
        admins.sort();

        let mut w = WriteSet::new();
        let mut put = |key: Vec<u8>, value: Vec<u8>| {
            w.insert(key, Some(value));
        };
        put(
            keys::chain_config(),
            ChainConfig {
                chain_id: chain_id.to_owned(),
                governing_list: self.governing_list.clone(),
            }
            .encode_to_vec(),
        );
        for (key, name) in &identities {
            put(
                keys::identity(key),
                IdentityRecord {
                    public_key: key.to_vec(),
                    display_name: name.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
            );
        }
        let list = &self.governing_list;
        put(
            keys::list(list),
            ListRecord {
                name: list.clone(),
                admins: admins.clone(),
                policy: Some(ListPolicy::default()),
                created_height: 0,
            }
            .encode_to_vec(),
        );
        put(
            keys::list_members(list),
            IdentitySet {
                keys: admins.clone(),
            }
            .encode_to_vec(),
        );
        for admin in &admins {
            let key: [u8; 32] = admin.as_slice().try_into().expect("parsed above");
            put(
                keys::membership(list, &key),
                MembershipRecord {
                    list: list.clone(),
                    member: admin.clone(),
                    added_height: 0,
                }
                .encode_to_vec(),
            );
        }
        let mut validators = validators;
        validators.sort_by(|a, b| a.pub_key.cmp(&b.pub_key));
        put(
            keys::validators(),
            ValidatorSet { validators }.encode_to_vec(),
        );
        Ok(w)
    }
}
