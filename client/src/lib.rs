//! The onionpost client library: key files and identity names. Verified reads of the
//! ledger, and the audit, live in `onionpost-ledger-client`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_consensus::SigningKey;
use onionpost_proto::onion::OnionAddress;

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

/// The default home of a mail node (`onionpost-node`'s): `$XDG_DATA_HOME/onionpost`, or
/// `~/.local/share/onionpost`.
pub fn node_home() -> Result<PathBuf> {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d).join("onionpost")),
        _ => Ok(PathBuf::from(
            std::env::var_os("HOME")
                .context("neither XDG_DATA_HOME nor HOME is set: pass --home")?,
        )
        .join(".local/share/onionpost")),
    }
}

/// The key file of identity `name` in a mail node's home: `<home>/identities/<name>/secret.key`
/// (the node's layout; the same 64-hex seed format as a client key file), so the command
/// line signs with the very key that is the identity's onion address.
pub fn identity_key_path(home: &Path, name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        bail!("{name:?} is not an identity name (1-64 characters a-z, 0-9, '.', '_', '-')");
    }
    let path = home.join("identities").join(name).join("secret.key");
    if !path.exists() {
        bail!(
            "no identity {name:?} in {} (create it with `onionpost-node --home {} identity new {name}`)",
            home.display(),
            home.display()
        );
    }
    Ok(path)
}

/// The onion address of a public key.
pub fn address(pk: &[u8; 32]) -> String {
    OnionAddress::from_public_key(*pk).hostname()
}

/// Where the checkpoint of the chain of `genesis` lives unless told otherwise:
/// `$XDG_STATE_HOME/onionpost/` (or `~/.local/state/onionpost/`), named by chain id and
/// genesis fingerprint, so two chains that share a chain id never share a checkpoint.
pub fn default_checkpoint(genesis: &onionpost_ledger_client::Genesis) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(
            std::env::var_os("HOME")
                .context("neither XDG_STATE_HOME nor HOME is set: pass --checkpoint")?,
        )
        .join(".local/state"),
    };
    let fp = hex::encode(&genesis.fingerprint()[..8]);
    Ok(base
        .join("onionpost")
        .join(format!("{}-{fp}.checkpoint.json", genesis.chain_id)))
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
    fn a_node_identity_key_is_found_in_the_node_home() {
        let home = tempfile::tempdir().unwrap();
        let err = identity_key_path(home.path(), "alice")
            .unwrap_err()
            .to_string();
        assert!(err.contains("identity new alice"), "{err}");
        assert!(identity_key_path(home.path(), "../x").is_err());
        let dir = home.path().join("identities/alice");
        std::fs::create_dir_all(&dir).unwrap();
        let key = write_new_key(&dir.join("secret.key")).unwrap();
        let path = identity_key_path(home.path(), "alice").unwrap();
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
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
