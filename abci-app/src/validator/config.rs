//! A validator's files: `config.toml`, `genesis.json` and `validator.key` in its home
//! directory. `onionpost-devnet init` writes them; `onionpost-ledger validator` reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_consensus::SigningKey;
use serde::{Deserialize, Serialize};

use crate::genesis::AppGenesis;

/// File names inside a validator's home.
pub const CONFIG_FILE: &str = "config.toml";
/// The chain's genesis.
pub const GENESIS_FILE: &str = "genesis.json";
/// The validator's ed25519 signing key (hex seed, mode 0600).
pub const KEY_FILE: &str = "validator.key";

/// One validator's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// A name for logs.
    pub moniker: String,
    /// Where consensus traffic from other validators arrives.
    pub p2p_listen: SocketAddr,
    /// The other validators' `p2p_listen` addresses.
    pub persistent_peers: Vec<SocketAddr>,
    /// Where the gRPC `Ledger` service listens.
    pub grpc_listen: SocketAddr,
    /// The other validators' gRPC addresses: transactions submitted here are relayed there.
    #[serde(default)]
    pub peer_grpc: Vec<SocketAddr>,
    /// Target time between blocks, in milliseconds (the engine may be slower, never faster).
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
}

fn default_block_ms() -> u64 {
    100
}

/// A genesis validator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    /// ed25519 public key, 64 hex characters.
    pub pub_key: String,
    /// Voting power.
    pub power: u64,
}

/// The chain's genesis: who validates, and the ledger's initial state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainGenesis {
    /// The chain id every transaction names.
    pub chain_id: String,
    /// Unix seconds; the time of height 0.
    pub genesis_time: u64,
    /// The initial validator set.
    pub validators: Vec<GenesisValidator>,
    /// The ledger's initial state.
    pub app_state: AppGenesis,
}

/// Why a validator's files are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    }
}

fn parse(path: &Path, message: impl ToString) -> ConfigError {
    ConfigError::Parse {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

impl ValidatorConfig {
    /// Reads `HOME/config.toml`.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        toml::from_str(&text).map_err(|e| parse(&path, e))
    }

    /// Writes `HOME/config.toml`.
    pub fn save(&self, home: &Path) -> Result<(), ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = toml::to_string_pretty(self).map_err(|e| parse(&path, e))?;
        std::fs::write(&path, text).map_err(io(&path))
    }
}

impl ChainGenesis {
    /// Reads and checks `HOME/genesis.json`.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join(GENESIS_FILE);
        let text = std::fs::read(&path).map_err(io(&path))?;
        let g: ChainGenesis = serde_json::from_slice(&text).map_err(|e| parse(&path, e))?;
        if g.validators.is_empty() {
            return Err(parse(&path, "it names no validators"));
        }
        for v in &g.validators {
            decode_key(&v.pub_key).map_err(|e| parse(&path, e))?;
        }
        g.app_state
            .writes(&g.chain_id, vec![])
            .map_err(|e| parse(&path, e))?;
        Ok(g)
    }

    /// Writes `HOME/genesis.json`.
    pub fn save(&self, home: &Path) -> Result<(), ConfigError> {
        let path = home.join(GENESIS_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|e| parse(&path, e))?;
        std::fs::write(&path, text).map_err(io(&path))
    }
}

/// Parses a 64-hex ed25519 public key.
pub fn decode_key(hex_key: &str) -> Result<[u8; 32], String> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{hex_key:?} is not 64 hex characters"))?;
    ed25519_consensus::VerificationKey::try_from(bytes)
        .map_err(|_| format!("{hex_key} is not an ed25519 public key"))?;
    Ok(bytes)
}

/// Reads `HOME/validator.key`.
pub fn load_key(home: &Path) -> Result<SigningKey, ConfigError> {
    let path = home.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| parse(&path, "expected 64 hex characters of an ed25519 seed"))?;
    Ok(SigningKey::from(seed))
}

/// Writes a new `HOME/validator.key` (mode 0600, never overwriting).
pub fn create_key(home: &Path) -> Result<SigningKey, ConfigError> {
    create_key_file(&home.join(KEY_FILE))
}

/// Writes a new ed25519 key to `path` as a hex seed (mode 0600, never overwriting): the
/// format of validator keys and of client key files.
pub fn create_key_file(path: &Path) -> Result<SigningKey, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::new(rand_core::OsRng);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    writeln!(f, "{}", hex::encode(key.to_bytes())).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(key)
}
