//! The local checkpoint: what a verifier established about a chain, so the next run
//! starts where the last one stopped instead of at genesis.
//!
//! It holds the last verified block, the app hash that block certifies, the history of
//! validator sets derived from genesis (so the certificate of any earlier block can be
//! checked again), the key-directory logs, and the key checks still pending. It is JSON
//! with a format version; an unknown version is refused, never guessed at. It is written to
//! a temporary file, fsynced and renamed, so a crash leaves the old or the new checkpoint,
//! never half of one. Its truth rests on whoever wrote it: keep it where only you write.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::IdentityKey;
use crate::chain::{CertifiedRoot, Chain};
use crate::error::Error;
use crate::keydir::{KeyDirectory, KeyLog};
use crate::validators::ValidatorSet;

/// The format version this crate writes and reads.
pub const FORMAT: u32 = 1;

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The verified chain.
    pub chain: Chain,
    /// The key histories remembered.
    pub keys: KeyDirectory,
    /// Key histories to check at a height whose app hash was not certified yet:
    /// `(height, identity)`.
    pub pending: Vec<(u64, IdentityKey)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    chain_id: String,
    genesis: String,
    height: u64,
    time: u64,
    block_hash: String,
    root: Option<FileRoot>,
    validator_sets: Vec<FileSet>,
    #[serde(default)]
    keys: BTreeMap<String, FileKeyLog>,
    #[serde(default)]
    pending: Vec<(u64, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoot {
    height: u64,
    app_hash: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSet {
    from: u64,
    validators: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeyLog {
    height: u64,
    entries: Vec<(String, u64)>,
}

fn key32(s: &str, what: &str) -> Result<[u8; 32], String> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{what} {s:?} is not 64 hex characters"))
}

impl Checkpoint {
    /// A fresh checkpoint for `chain`.
    pub fn new(chain: Chain) -> Self {
        Self {
            chain,
            keys: KeyDirectory::new(),
            pending: Vec::new(),
        }
    }

    /// Serialises the checkpoint.
    pub fn to_json(&self) -> Vec<u8> {
        let c = &self.chain;
        let file = File {
            format: FORMAT,
            chain_id: c.chain_id().to_owned(),
            genesis: hex::encode(c.genesis_fingerprint()),
            height: c.height(),
            time: c.time(),
            block_hash: hex::encode(c.block_hash()),
            root: c.latest_root().map(|r| FileRoot {
                height: r.height,
                app_hash: hex::encode(r.root),
            }),
            validator_sets: c
                .set_history()
                .iter()
                .map(|(from, set)| FileSet {
                    from: *from,
                    validators: set.iter().map(|(k, p)| (hex::encode(k), p)).collect(),
                })
                .collect(),
            keys: self
                .keys
                .logs()
                .iter()
                .map(|(id, log)| {
                    (
                        hex::encode(id),
                        FileKeyLog {
                            height: log.height,
                            entries: log
                                .entries
                                .iter()
                                .map(|(d, h)| (hex::encode(d), *h))
                                .collect(),
                        },
                    )
                })
                .collect(),
            pending: self
                .pending
                .iter()
                .map(|(h, id)| (*h, hex::encode(id)))
                .collect(),
        };
        serde_json::to_vec_pretty(&file).expect("a checkpoint serialises")
    }

    /// Parses a checkpoint.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a checkpoint (no format version): {e}"))?;
        if v.format != FORMAT {
            return Err(format!(
                "format version {} is not the version {FORMAT} this program reads",
                v.format
            ));
        }
        let f: File = serde_json::from_slice(bytes).map_err(|e| format!("corrupt: {e}"))?;
        let sets = f
            .validator_sets
            .iter()
            .map(|s| {
                let pairs = s
                    .validators
                    .iter()
                    .map(|(k, p)| Ok((key32(k, "validator key")?, *p)))
                    .collect::<Result<Vec<_>, String>>()?;
                let set = ValidatorSet::new(pairs)
                    .map_err(|e| format!("the validator set from height {}: {e}", s.from))?;
                Ok((s.from, set))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let root = f
            .root
            .map(|r| {
                Ok::<_, String>(CertifiedRoot {
                    height: r.height,
                    root: key32(&r.app_hash, "app hash")?,
                })
            })
            .transpose()?;
        let chain = Chain::from_parts(
            f.chain_id,
            key32(&f.genesis, "genesis fingerprint")?,
            f.height,
            f.time,
            key32(&f.block_hash, "block hash")?,
            root,
            sets,
        )?;
        let logs = f
            .keys
            .iter()
            .map(|(id, log)| {
                let entries = log
                    .entries
                    .iter()
                    .map(|(d, h)| Ok((key32(d, "entry digest")?, *h)))
                    .collect::<Result<_, String>>()?;
                Ok((
                    key32(id, "identity")?,
                    KeyLog {
                        height: log.height,
                        entries,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let pending = f
            .pending
            .iter()
            .map(|(h, id)| Ok((*h, key32(id, "identity")?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            chain,
            keys: KeyDirectory::from_logs(logs),
            pending,
        })
    }

    /// Loads the checkpoint at `path`; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, Error> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(path, format!("cannot read it: {e}"))),
        };
        Self::from_json(&bytes)
            .map(Some)
            .map_err(|reason| err(path, reason))
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync, rename, fsync of
    /// the directory). Blocking: call it off the async workers.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(path, format!("cannot create {}: {e}", dir.display())))?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_json())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| err(path, format!("cannot write it: {e}")))
    }

    /// Checks that this checkpoint belongs to the chain of `genesis`.
    pub fn check_genesis(&self, genesis: &crate::Genesis, path: &Path) -> Result<(), Error> {
        if self.chain.chain_id() != genesis.chain_id
            || self.chain.genesis_fingerprint() != genesis.fingerprint()
        {
            return Err(err(
                path,
                format!(
                    "it is for chain {:?} from another genesis than the one given (chain {:?}); remove it or choose another file",
                    self.chain.chain_id(),
                    genesis.chain_id
                ),
            ));
        }
        Ok(())
    }
}

fn err(path: &Path, reason: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Genesis;

    fn genesis() -> Genesis {
        Genesis::from_json(
            format!(
                r#"{{"chain_id":"c","validators":[{{"pub_key":"{}","power":3}}]}}"#,
                "01".repeat(32)
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let mut cp = Checkpoint::new(Chain::from_genesis(&genesis()));
        cp.keys.observe(&[5; 32], 9, &[[6; 32]]).unwrap();
        cp.pending.push((10, [5; 32]));
        let json = cp.to_json();
        assert_eq!(Checkpoint::from_json(&json).unwrap(), cp);

        let text = String::from_utf8(json).unwrap();
        let v2 = text.replace("\"format\": 1", "\"format\": 2");
        let err = Checkpoint::from_json(v2.as_bytes()).unwrap_err();
        assert!(err.contains("format version 2"), "{err}");
        let bad = text.replace("\"height\": 0", "\"height\": 5");
        let err = Checkpoint::from_json(bad.as_bytes()).unwrap_err();
        assert!(err.contains("does not belong to block 5"), "{err}");
    }

    #[test]
    fn saves_atomically_and_checks_the_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cp.json");
        assert!(Checkpoint::load(&path).unwrap().is_none());
        let cp = Checkpoint::new(Chain::from_genesis(&genesis()));
        cp.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap().unwrap();
        assert_eq!(back, cp);
        back.check_genesis(&genesis(), &path).unwrap();
        let mut other = genesis();
        other.genesis_time = 1;
        let err = back.check_genesis(&other, &path).unwrap_err().to_string();
        assert!(err.contains("another genesis"), "{err}");
        assert!(!dir.path().join("sub/cp.json.tmp").exists());
    }
}
