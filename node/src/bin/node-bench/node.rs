//! `onionpost-node` processes on loopback with the direct transport: identities, a config
//! file, `run`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::procs::Kill;

/// The `onionpost-node` binary: `given`, or the one next to this binary.
pub fn binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("onionpost-node"),
    })
}

/// An identity's credentials.
pub struct Identity {
    /// `name@<onion>`.
    pub address: String,
    /// Its IMAP and submission password.
    pub password: String,
}

impl Identity {
    /// The onion host of the address.
    pub fn onion(&self) -> &str {
        self.address.split_once('@').map(|(_, h)| h).unwrap_or("")
    }
}

/// Creates identity `name` in the node home `home`.
pub fn new_identity(bin: &Path, home: &Path, name: &str) -> anyhow::Result<Identity> {
    let out = Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(["identity", "new", name])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8(out.stdout)?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .with_context(|| format!("`identity new` printed no {k} ({text:?})"))
    };
    Ok(Identity {
        address: get("address:")?,
        password: get("password:")?,
    })
}

/// The Maildir of identity `name` (its INBOX).
pub fn maildir(home: &Path, name: &str) -> PathBuf {
    home.join("identities").join(name).join("Maildir")
}

/// Writes `config` to `<home>/node.toml` and runs the node on it until dropped.
pub fn run(bin: &Path, home: &Path, config: &str) -> anyhow::Result<Kill> {
    let file = home.join("node.toml");
    fs::write(&file, config)?;
    Ok(Kill(
        Command::new(bin)
            .arg("--home")
            .arg(home)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}
