//! An identity's OpenPGP keys on disk, beside its ed25519 key and with the same protection
//! (files of mode 0600 in directories of mode 0700, no passphrase: the node must sign and
//! decrypt unattended).
//!
//! ```text
//! identities/<name>/openpgp/<FINGERPRINT>.key   transferable secret key (binary), 0600
//! identities/<name>/openpgp/current             the fingerprint of the key in use
//! ```
//!
//! Rotation writes a new key and then switches `current` (atomically, durably); older keys
//! stay, so mail encrypted to them still decrypts. An identity made before keys existed gets
//! its key the first time one is needed ([`Keyring::current`]); two processes doing that at
//! once agree on one (the first `current` written wins).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use onionpost_e2e::{Fingerprint, SecretCert};

use crate::fsutil;
use crate::identity::Identity;

/// Why the keyring could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// File system trouble.
    #[error("OpenPGP keyring {}: {source}", .dir.display())]
    Io {
        /// The keyring directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A key file that does not hold a usable key for this identity.
    #[error("OpenPGP key {}: {why}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Generating or serialising a key failed.
    #[error("OpenPGP key of {address}: {source}")]
    Key {
        /// The identity's address.
        address: String,
        /// What the e2e crate reported.
        source: Box<onionpost_e2e::Error>,
    },
}

/// One identity's OpenPGP keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
    address: String,
}

const CURRENT: &str = "current";

impl Keyring {
    /// The keyring of `identity` (nothing is read yet).
    pub fn of(identity: &Identity) -> Self {
        Keyring {
            dir: identity.dir.join("openpgp"),
            address: identity.address(),
        }
    }

    /// The keyring directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: io::Error) -> KeyringError {
        KeyringError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn key_path(&self, fpr: &str) -> PathBuf {
        self.dir.join(format!("{fpr}.key"))
    }

    /// The fingerprint in `current`, if there is one.
    pub fn current_fingerprint(&self) -> Result<Option<String>, KeyringError> {
        match fs::read_to_string(self.dir.join(CURRENT)) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn load(&self, fpr: &str) -> Result<SecretCert, KeyringError> {
        let path = self.key_path(fpr);
        let bytes = fs::read(&path).map_err(|e| self.io(e))?;
        let corrupt = |why: String| KeyringError::Corrupt {
            path: path.clone(),
            why,
        };
        let cert = SecretCert::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if cert.fingerprint().to_hex() != fpr {
            return Err(corrupt(format!(
                "holds key {}, not {fpr}",
                cert.fingerprint()
            )));
        }
        if !cert.public().holds(&self.address) {
            return Err(corrupt(format!("is not a key of {}", self.address)));
        }
        Ok(cert)
    }

    /// Writes a fresh key durably; returns it (not yet current).
    fn generate(&self) -> Result<SecretCert, KeyringError> {
        fsutil::create_dir_mode(&self.dir, 0o700).map_err(|e| self.io(e))?;
        let key_err = |source| KeyringError::Key {
            address: self.address.clone(),
            source: Box::new(source),
        };
        let cert = SecretCert::generate(rand::rngs::OsRng, &self.address).map_err(key_err)?;
        let bytes = cert.to_bytes().map_err(key_err)?;
        fsutil::write_durable_mode(&self.key_path(&cert.fingerprint().to_hex()), &bytes, 0o600)
            .map_err(|e| self.io(e))?;
        Ok(cert)
    }

    /// The key in use, created (durably) if the identity has none yet.
    pub fn current(&self) -> Result<SecretCert, KeyringError> {
        if let Some(fpr) = self.current_fingerprint()? {
            return self.load(&fpr);
        }
        let cert = self.generate()?;
        let fpr = cert.fingerprint().to_hex();
        // `current` appears only if absent (a hard link never replaces a file), so a
        // concurrent creator's key is not overwritten: whoever links first wins.
        let tmp = self.dir.join(format!(".current-{}", rand::random::<u64>()));
        fsutil::write_durable_mode(&tmp, fpr.as_bytes(), 0o600).map_err(|e| self.io(e))?;
        let linked = fs::hard_link(&tmp, self.dir.join(CURRENT));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsutil::sync_dir(&self.dir).map_err(|e| self.io(e))?;
                tracing::info!(address = %self.address, key = %fpr, "OpenPGP key created");
                Ok(cert)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(self.key_path(&fpr));
                let won = self.current_fingerprint()?.unwrap_or_default();
                self.load(&won)
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// A new key that becomes current; the old ones are kept (old mail still decrypts).
    pub fn rotate(&self) -> Result<SecretCert, KeyringError> {
        let cert = self.prepare_rotation()?;
        self.make_current(&cert)?;
        Ok(cert)
    }

    /// The first half of a rotation: a new key, kept durably but not used yet (so it can be
    /// bound on the ledger before the node signs with it).
    pub fn prepare_rotation(&self) -> Result<SecretCert, KeyringError> {
        self.current()?;
        self.generate()
    }

    /// The second half: `cert` (a key of this keyring) becomes the one in use.
    pub fn make_current(&self, cert: &SecretCert) -> Result<(), KeyringError> {
        let fpr = cert.fingerprint().to_hex();
        self.load(&fpr)?;
        fsutil::write_durable_mode(&self.dir.join(CURRENT), fpr.as_bytes(), 0o600)
            .map_err(|e| self.io(e))?;
        tracing::info!(address = %self.address, key = %fpr, "OpenPGP key rotated");
        Ok(())
    }

    /// Every key: the current one first (created if needed), then the older ones. A key
    /// file that cannot be read is skipped with a warning (the others still work).
    pub fn all(&self) -> Result<Vec<SecretCert>, KeyringError> {
        let current = self.current()?;
        let mut out = vec![current.clone()];
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map_err(|e| self.io(e))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".key"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        let cur = current.fingerprint().to_hex();
        for fpr in names.iter().filter(|f| **f != cur) {
            match self.load(fpr) {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!("skipping an old OpenPGP key: {e}"),
            }
        }
        Ok(out)
    }

    /// Whether a key with this fingerprint is in the keyring.
    pub fn has(&self, fpr: &Fingerprint) -> bool {
        self.key_path(&fpr.to_hex()).exists()
    }

    /// Whether a key with this fingerprint (upper-case hex, as [`Fingerprint::to_hex`]
    /// writes it) is in the keyring.
    pub fn has_hex(&self, fpr: &str) -> bool {
        !fpr.is_empty() && fpr.bytes().all(|b| b.is_ascii_hexdigit()) && self.key_path(fpr).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityStore;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_lazily_once_rotated_with_old_keys_kept() {
        let home = tempfile::tempdir().unwrap();
        let (id, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let ring = Keyring::of(&id);
        assert_eq!(ring.current_fingerprint().unwrap(), None);
        let first = ring.current().unwrap();
        assert!(first.public().holds(&id.address()));
        assert_eq!(
            ring.current().unwrap().fingerprint(),
            first.fingerprint(),
            "created once"
        );
        let file = ring.key_path(&first.fingerprint().to_hex());
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(ring.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let second = ring.rotate().unwrap();
        assert_ne!(second.fingerprint(), first.fingerprint());
        let all = ring.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].fingerprint(), second.fingerprint(), "current first");
        assert!(ring.has(&first.fingerprint()), "the old key stays");
        // Another identity's key in this keyring is refused, not used.
        let (bob, _) = IdentityStore::new(home.path()).create("bob").unwrap();
        let bobs = Keyring::of(&bob).current().unwrap();
        fs::write(ring.dir().join(CURRENT), bobs.fingerprint().to_hex()).unwrap();
        fs::copy(
            Keyring::of(&bob).key_path(&bobs.fingerprint().to_hex()),
            ring.key_path(&bobs.fingerprint().to_hex()),
        )
        .unwrap();
        assert!(matches!(ring.current(), Err(KeyringError::Corrupt { .. })));
    }
}
