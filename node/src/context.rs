//! The node's read-only context: its configuration and the identities it hosts, with their
//! mailboxes and the lookups every task needs.
//!
//! Tasks take a snapshot ([`Context::identities`]) and answer from it; a snapshot never
//! changes. When identities are created or deleted while the node runs, the runtime calls
//! [`Context::reload`], which swaps in a new snapshot (keeping the open mailboxes of the
//! identities that stay) and reports what changed, so the runtime can start or stop their
//! onion services.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use onionpost_proto::onion::OnionAddress;

use crate::config::Config;
use crate::identity::{Identity, IdentityError, IdentityStore};
use crate::store::{MailStore, Mailboxes, MaildirFolders};

/// Errors opening the context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The identity store could not be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An identity's mailbox could not be opened.
    #[error("opening the mailbox of {name} at {path}: {source}")]
    Mailbox {
        /// The identity.
        name: String,
        /// The Maildir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An identity this node hosts, with its open mailbox.
#[derive(Debug)]
pub struct Hosted {
    /// The identity.
    pub identity: Identity,
    /// Its inbox, where delivered mail goes.
    pub mailbox: Arc<dyn MailStore>,
    /// All its mailboxes (the inbox and the folders).
    pub mailboxes: Arc<dyn Mailboxes>,
}

/// A snapshot of the hosted identities.
#[derive(Debug, Default)]
pub struct Identities {
    hosted: Vec<Arc<Hosted>>,
}

impl Identities {
    /// All hosted identities, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Hosted>> {
        self.hosted.iter()
    }

    /// How many identities are hosted.
    pub fn len(&self) -> usize {
        self.hosted.len()
    }

    /// Whether no identity is hosted.
    pub fn is_empty(&self) -> bool {
        self.hosted.is_empty()
    }

    /// The hosted identity with this e-mail address (case-insensitive).
    pub fn by_address(&self, address: &str) -> Option<&Arc<Hosted>> {
        self.hosted
            .iter()
            .find(|h| h.identity.address().eq_ignore_ascii_case(address))
    }

    /// The hosted identity with this name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Hosted>> {
        self.hosted.iter().find(|h| h.identity.name == name)
    }

    /// The hosted identity whose onion is `onion`.
    pub fn by_onion(&self, onion: &OnionAddress) -> Option<&Arc<Hosted>> {
        self.hosted.iter().find(|h| &h.identity.onion == onion)
    }

    /// Checks client credentials (name or address, and password).
    pub fn login(&self, user: &str, password: &str) -> Option<&Arc<Hosted>> {
        self.hosted
            .iter()
            .find(|h| h.identity.matches_login(user) && h.identity.check_password(password))
    }
}

/// What a [`Context::reload`] changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Identities that appeared.
    pub added: Vec<Arc<Hosted>>,
    /// Identities that disappeared.
    pub removed: Vec<Arc<Hosted>>,
}

/// Configuration and hosted identities, shared read-only by every task.
#[derive(Debug)]
pub struct Context {
    home: PathBuf,
    config: Config,
    identities: RwLock<Arc<Identities>>,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

impl Context {
    /// Opens the identities and mailboxes under `home`.
    pub fn open(home: &Path, config: Config) -> Result<Self, ContextError> {
        let ctx = Context {
            home: home.to_path_buf(),
            config,
            identities: RwLock::new(Arc::default()),
            reloading: Mutex::new(()),
        };
        ctx.reload()?;
        Ok(ctx)
    }

    /// The node's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current identities.
    pub fn identities(&self) -> Arc<Identities> {
        self.identities.read().expect("identities lock").clone()
    }

    /// Re-reads the identity store: opens the mailboxes of new identities, keeps the open
    /// ones, drops deleted ones. Blocks on the disk.
    pub fn reload(&self) -> Result<Reloaded, ContextError> {
        let _one = self.reloading.lock().expect("reload lock");
        let old = self.identities();
        let mut next = Vec::new();
        let mut report = Reloaded::default();
        for identity in IdentityStore::new(&self.home).list()? {
            if let Some(h) = old.by_onion(&identity.onion) {
                next.push(h.clone());
                continue;
            }
            let path = identity.maildir();
            let folders = MaildirFolders::open(
                &path,
                &identity.folders_dir(),
                self.config.limits.mailbox_quota(),
            )
            .map_err(|source| ContextError::Mailbox {
                name: identity.name.clone(),
                path: path.clone(),
                source,
            })?;
            let h = Arc::new(Hosted {
                identity,
                mailbox: folders.inbox(),
                mailboxes: Arc::new(folders),
            });
            report.added.push(h.clone());
            next.push(h);
        }
        for h in old.iter() {
            if !next.iter().any(|n| n.identity.onion == h.identity.onion) {
                report.removed.push(h.clone());
            }
        }
        *self.identities.write().expect("identities lock") = Arc::new(Identities { hosted: next });
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_reload_keep_open_mailboxes() {
        let home = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(home.path());
        let (alice, pw) = store.create("alice").unwrap();
        let ctx = Context::open(home.path(), Config::default()).unwrap();
        let ids = ctx.identities();
        assert_eq!(ids.len(), 1);
        let a = ids.by_address(&alice.address().to_uppercase()).unwrap();
        assert_eq!(a.identity.name, "alice");
        assert!(ids.by_onion(&alice.onion).is_some());
        assert!(ids.login("alice", &pw).is_some());
        assert!(ids.login("alice", "nope").is_none());

        let (bob, _) = store.create("bob").unwrap();
        let r = ctx.reload().unwrap();
        assert_eq!(r.added.len(), 1);
        assert_eq!(r.added[0].identity.onion, bob.onion);
        assert!(r.removed.is_empty());
        let now = ctx.identities();
        assert!(
            Arc::ptr_eq(now.by_name("alice").unwrap(), a),
            "alice's mailbox stays open across the reload"
        );
        assert_eq!(ids.len(), 1, "an old snapshot does not change");

        std::fs::remove_dir_all(bob.dir).unwrap();
        let r = ctx.reload().unwrap();
        assert_eq!(r.removed.len(), 1);
        assert!(ctx.identities().by_name("bob").is_none());
    }
}
