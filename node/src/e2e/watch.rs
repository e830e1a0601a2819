//! What the node has seen on the ledger, per identity, kept durably (issue 14, point 6):
//! how much of the identity's own key history the monitor has checked, the alerts it raised,
//! and, per correspondent, how much of the correspondent's key history the last message from
//! it was checked against (so the next message after a change is marked `$KeyChanged`).
//!
//! ```text
//! identities/<name>/ledger-watch.json    mode 0600, replaced atomically (temp, fsync, rename)
//! ```
//!
//! [`Watches::update`] is the only way to change it: one caller at a time per identity
//! (inbound deliveries and the monitor share it), and the file is written only if the state
//! changed and the caller's work succeeded.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::identity::Identity;

/// The file's name in the identity's directory.
pub const FILE: &str = "ledger-watch.json";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// File system trouble.
    #[error("ledger watch state {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not hold the state.
    #[error("ledger watch state {}: {source}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// An alert about one of the identity's own bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The ledger height of the binding.
    pub height: u64,
    /// Its position in the identity's key history.
    pub seq: u64,
    /// What it says, for `status` and the log.
    pub text: String,
}

/// What the last message from one correspondent was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correspondent {
    /// How many entries its key history had.
    pub events: u64,
    /// The height the history was read at.
    pub height: u64,
}

/// One identity's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// How many entries of the identity's own key history the monitor has checked.
    #[serde(default)]
    pub own_events: u64,
    /// The alerts raised, oldest first.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// Correspondents by onion host name.
    #[serde(default)]
    pub correspondents: BTreeMap<String, Correspondent>,
}

/// Where an identity's state lives.
pub fn path_of(identity: &Identity) -> PathBuf {
    identity.dir.join(FILE)
}

/// Reads the state at `path` (the default state if there is no file).
pub fn load(path: &Path) -> Result<WatchState, WatchError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| WatchError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(WatchState::default()),
        Err(source) => Err(WatchError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn save(path: &Path, state: &WatchState) -> Result<(), WatchError> {
    let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
    fsutil::write_durable_mode(path, &bytes, 0o600).map_err(|source| WatchError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The failure of an [`Watches::update`]: the state's, or the caller's own.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// Reading or writing the state failed.
    Watch(WatchError),
    /// The caller's work failed (the state was not written).
    Inner(E),
}

/// Serializes the changes to each identity's state within this process.
#[derive(Debug, Default)]
pub struct Watches {
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl Watches {
    /// Runs `f` on `identity`'s state, alone for that identity; writes the state durably if
    /// `f` succeeded and changed it. Blocks on the disk.
    pub fn update<R, E>(
        &self,
        identity: &Identity,
        f: impl FnOnce(&mut WatchState) -> Result<R, E>,
    ) -> Result<R, UpdateError<E>> {
        let path = path_of(identity);
        let lock = self
            .locks
            .lock()
            .expect("watch locks")
            .entry(path.clone())
            .or_default()
            .clone();
        let _held = lock.lock().expect("watch lock");
        let before = load(&path).map_err(UpdateError::Watch)?;
        let mut state = before.clone();
        let r = f(&mut state).map_err(UpdateError::Inner)?;
        if state != before {
            save(&path, &state).map_err(UpdateError::Watch)?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityStore;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_only_on_change_and_success_and_read_back() {
        let home = tempfile::tempdir().unwrap();
        let (id, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let w = Watches::default();
        let path = path_of(&id);
        w.update(&id, |_| Ok::<_, ()>(())).unwrap();
        assert!(!path.exists(), "nothing changed, nothing written");
        let failed = w.update(&id, |s| {
            s.own_events = 3;
            Err::<(), _>("store failed")
        });
        assert!(matches!(failed, Err(UpdateError::Inner("store failed"))));
        assert!(!path.exists(), "a failed update writes nothing");
        w.update(&id, |s| {
            s.own_events = 3;
            s.correspondents.insert(
                "x.onion".into(),
                Correspondent {
                    events: 2,
                    height: 9,
                },
            );
            Ok::<_, ()>(())
        })
        .unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.own_events, 3);
        assert_eq!(back.correspondents["x.onion"].events, 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            w.update(&id, |_| Ok::<_, ()>(())),
            Err(UpdateError::Watch(WatchError::Corrupt { .. }))
        ));
    }
}
