//! [`Mailboxes`] on disk: INBOX is the identity's Maildir, every other mailbox a Maildir of
//! its own under `folders/<id>/`, named in a durable index.
//!
//! Layout under the identity's directory:
//!
//! ```text
//! Maildir/                 INBOX (unchanged: any Maildir reader opens it)
//! folders/index.json       names -> ids, special-use attributes, subscriptions, counters
//! folders/<id>/            one Maildir per folder (cur/ new/ tmp/ uidvalidity uidnext)
//! ```
//!
//! A folder's directory is named by an id that never changes, so RENAME is one durable write
//! of the index (the messages, their UIDs and the UIDVALIDITY stay), and a session that has
//! the folder open keeps working across a rename. Every new folder gets a UIDVALIDITY larger
//! than any this identity handed out before (`last_uidvalidity` in the index), so a name that
//! is deleted and created again never repeats the pair (name, UIDVALIDITY) a client cached.
//!
//! Every identity has one folder for each [`SpecialUse`]; a missing one (never created, or
//! deleted by the user) is created when the mailboxes are opened.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::maildir::Usage;
use super::{DeliverOptions, MailStore, Maildir, Quota, StoreError};
use crate::fsutil;

/// The hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

/// The longest mailbox name, in bytes of UTF-8.
pub const MAX_NAME: usize = 255;

/// How deep names nest.
pub const MAX_DEPTH: usize = 16;

/// The most mailboxes (and, separately, subscriptions) one identity may have: the index is
/// read whole and every folder is opened at start, so a client must not grow them unbounded.
pub const MAX_FOLDERS: usize = 1000;

const INDEX: &str = "index.json";

/// RFC 6154 special-use attributes; every identity has one folder for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpecialUse {
    /// `\Sent`: copies of sent mail.
    Sent,
    /// `\Drafts`: unfinished messages.
    Drafts,
    /// `\Trash`: deleted messages.
    Trash,
    /// `\Junk`: spam.
    Junk,
    /// `\Archive`: archived messages.
    Archive,
}

impl SpecialUse {
    /// All of them, in the order their folders are created.
    pub const ALL: [SpecialUse; 5] = [
        SpecialUse::Sent,
        SpecialUse::Drafts,
        SpecialUse::Trash,
        SpecialUse::Junk,
        SpecialUse::Archive,
    ];

    /// The LIST attribute, e.g. `\Sent`.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// The name of the folder created for it.
    pub fn default_name(self) -> &'static str {
        match self {
            SpecialUse::Sent => "Sent",
            SpecialUse::Drafts => "Drafts",
            SpecialUse::Trash => "Trash",
            SpecialUse::Junk => "Junk",
            SpecialUse::Archive => "Archive",
        }
    }
}

/// One mailbox as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// Full name, hierarchy levels separated by [`DELIMITER`]; `INBOX` for the inbox.
    pub name: String,
    /// Its special use, if any.
    pub special_use: Option<SpecialUse>,
}

/// Why a mailbox operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// CREATE or RENAME to a name that exists.
    #[error("mailbox {0:?} already exists")]
    Exists(String),
    /// No mailbox of that name.
    #[error("no mailbox named {0:?}")]
    NotFound(String),
    /// The name cannot be a mailbox name.
    #[error("invalid mailbox name {name:?}: {why}")]
    InvalidName {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// INBOX cannot be deleted (nor created).
    #[error("INBOX cannot be {0}")]
    Inbox(&'static str),
    /// The identity has [`MAX_FOLDERS`] mailboxes or subscriptions already.
    #[error("too many mailboxes or subscriptions (at most {0})")]
    TooMany(usize),
    /// DELETE of a mailbox that has mailboxes below it.
    #[error("mailbox {0:?} has mailboxes below it; delete those first")]
    HasChildren(String),
    /// Moving messages (RENAME INBOX) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The disk failed.
    #[error("mailbox index i/o: {0}")]
    Io(#[from] io::Error),
}

/// One identity's mailboxes. Names are UTF-8 with [`DELIMITER`] between hierarchy levels;
/// `INBOX` (any case) is the inbox. Methods that change something are durable before they
/// return `Ok` and may block on the disk (see [`MailStore`]).
pub trait Mailboxes: Send + Sync + fmt::Debug + 'static {
    /// The inbox, where delivered mail goes.
    fn inbox(&self) -> Arc<dyn MailStore>;
    /// Every mailbox, INBOX first, the others sorted by name.
    fn list(&self) -> Vec<FolderInfo>;
    /// The mailbox of this name.
    fn open(&self, name: &str) -> Option<Arc<dyn MailStore>>;
    /// The folder with this special use.
    fn special(&self, special_use: SpecialUse) -> Option<Arc<dyn MailStore>>;
    /// Creates a mailbox, and the levels above it that do not exist yet.
    fn create(&self, name: &str) -> Result<(), FolderError>;
    /// Deletes a mailbox and its messages.
    fn delete(&self, name: &str) -> Result<(), FolderError>;
    /// Renames a mailbox and the mailboxes below it. Renaming INBOX moves its messages into
    /// a new mailbox and leaves INBOX empty (RFC 3501 §6.3.5).
    fn rename(&self, from: &str, to: &str) -> Result<(), FolderError>;
    /// The subscribed names (which need not exist).
    fn subscriptions(&self) -> Vec<String>;
    /// Subscribes or unsubscribes a name.
    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), FolderError>;
}

/// Checks a mailbox name and brings it to its canonical form: no trailing delimiter, `INBOX`
/// in capitals when it is the first level.
pub fn normalize(name: &str) -> Result<String, FolderError> {
    let bad = |why| FolderError::InvalidName {
        name: name.to_string(),
        why,
    };
    let trimmed = name.strip_suffix(DELIMITER).unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.len() > MAX_NAME {
        return Err(bad("longer than 255 bytes"));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() || c == '*' || c == '%')
    {
        return Err(bad(
            "control characters and the wildcards * and % are not allowed",
        ));
    }
    let levels: Vec<&str> = trimmed.split(DELIMITER).collect();
    if levels.len() > MAX_DEPTH {
        return Err(bad("nested deeper than 16 levels"));
    }
    if levels.iter().any(|l| l.is_empty()) {
        return Err(bad("empty hierarchy level"));
    }
    let mut out = String::with_capacity(trimmed.len());
    for (i, l) in levels.iter().enumerate() {
        if i == 0 && l.eq_ignore_ascii_case("INBOX") {
            out.push_str("INBOX");
        } else {
            if i > 0 {
                out.push(DELIMITER);
            }
            out.push_str(l);
        }
    }
    Ok(out)
}

fn is_below(name: &str, parent: &str) -> bool {
    name.len() > parent.len()
        && name.starts_with(parent)
        && name[parent.len()..].starts_with(DELIMITER)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    name: String,
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    special_use: Option<SpecialUse>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    next_id: u64,
    last_uidvalidity: u32,
    folders: Vec<IndexEntry>,
    subscribed: Vec<String>,
}

#[derive(Debug)]
struct State {
    index: Index,
    open: HashMap<u64, Arc<Maildir>>,
}

/// An identity's mailboxes on disk (see the module documentation).
#[derive(Debug)]
pub struct MaildirFolders {
    root: PathBuf,
    usage: Arc<Usage>,
    inbox: Arc<Maildir>,
    state: Mutex<State>,
    max_folders: usize,
}

fn now_unix() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

impl MaildirFolders {
    /// Opens the inbox at `inbox` and the folders under `root` (creating what is missing,
    /// including the special-use folders). `quota` bounds the bytes of all of them together.
    pub fn open(inbox: &Path, root: &Path, quota: Option<u64>) -> io::Result<MaildirFolders> {
        let usage = Usage::new(quota);
        let inbox = Arc::new(Maildir::open_shared(inbox, usage.clone(), now_unix())?);
        fsutil::create_dir_mode(root, 0o700)?;
        let (index, fresh) = match fs::read(root.join(INDEX)) {
            Ok(b) => (
                serde_json::from_slice::<Index>(&b).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", root.join(INDEX).display()),
                    )
                })?,
                false,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (
                Index {
                    next_id: 1,
                    last_uidvalidity: inbox.snapshot().uidvalidity,
                    ..Index::default()
                },
                true,
            ),
            Err(e) => return Err(e),
        };
        let me = MaildirFolders {
            root: root.to_path_buf(),
            usage,
            inbox,
            state: Mutex::new(State {
                index,
                open: HashMap::new(),
            }),
            max_folders: MAX_FOLDERS,
        };
        {
            let mut st = me.lock();
            let entries = st.index.folders.clone();
            // Every folder in the index has its UIDVALIDITY on disk (it is written before
            // the index names the folder); the fallback only matters if that file was lost.
            let fallback = now_unix().max(st.index.last_uidvalidity.saturating_add(1));
            for e in entries {
                let md = me.open_dir(e.id, fallback)?;
                st.open.insert(e.id, Arc::new(md));
            }
            let mut changed = fresh;
            if fresh {
                st.index.subscribed.push("INBOX".into());
            }
            for su in SpecialUse::ALL {
                if st.index.folders.iter().any(|e| e.special_use == Some(su)) {
                    continue;
                }
                changed = true;
                let name = su.default_name().to_string();
                if let Some(e) = st.index.folders.iter_mut().find(|e| e.name == name) {
                    e.special_use = Some(su);
                } else {
                    me.add_folder(&mut st, &name, Some(su))?;
                }
                if !st.index.subscribed.contains(&name) {
                    st.index.subscribed.push(name);
                }
            }
            if changed {
                me.save(&st.index)?;
            }
        }
        Ok(me)
    }

    /// Lowers the limit on mailboxes and subscriptions (default [`MAX_FOLDERS`]).
    pub fn with_limit(mut self, max_folders: usize) -> Self {
        self.max_folders = max_folders;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("folders lock")
    }

    fn open_dir(&self, id: u64, uidvalidity: u32) -> io::Result<Maildir> {
        Maildir::open_shared(
            &self.root.join(id.to_string()),
            self.usage.clone(),
            uidvalidity,
        )
    }

    fn save(&self, index: &Index) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(io::Error::other)?;
        fsutil::write_durable_mode(&self.root.join(INDEX), &bytes, 0o600)
    }

    /// Creates the folder's Maildir and records it in `st` (not yet saved).
    fn add_folder(
        &self,
        st: &mut State,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> io::Result<()> {
        let id = st.index.next_id;
        let uidvalidity = now_unix().max(st.index.last_uidvalidity.saturating_add(1));
        // A directory left by a crash before its index entry was saved is no mailbox.
        let dir = self.root.join(id.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let md = self.open_dir(id, uidvalidity)?;
        fsutil::sync_dir(&self.root)?;
        st.index.next_id += 1;
        st.index.last_uidvalidity = uidvalidity;
        st.index.folders.push(IndexEntry {
            name: name.to_string(),
            id,
            special_use,
        });
        st.open.insert(id, Arc::new(md));
        Ok(())
    }

    fn exists(st: &State, name: &str) -> bool {
        name == "INBOX" || st.index.folders.iter().any(|e| e.name == name)
    }
}

impl Mailboxes for MaildirFolders {
    fn inbox(&self) -> Arc<dyn MailStore> {
        self.inbox.clone()
    }

    fn list(&self) -> Vec<FolderInfo> {
        let st = self.lock();
        let mut v: Vec<FolderInfo> = st
            .index
            .folders
            .iter()
            .map(|e| FolderInfo {
                name: e.name.clone(),
                special_use: e.special_use,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.insert(
            0,
            FolderInfo {
                name: "INBOX".into(),
                special_use: None,
            },
        );
        v
    }

    fn open(&self, name: &str) -> Option<Arc<dyn MailStore>> {
        let name = normalize(name).ok()?;
        if name == "INBOX" {
            return Some(self.inbox.clone());
        }
        let st = self.lock();
        let e = st.index.folders.iter().find(|e| e.name == name)?;
        st.open.get(&e.id).map(|m| m.clone() as Arc<dyn MailStore>)
    }

    fn special(&self, special_use: SpecialUse) -> Option<Arc<dyn MailStore>> {
        let st = self.lock();
        let e = st
            .index
            .folders
            .iter()
            .find(|e| e.special_use == Some(special_use))?;
        st.open.get(&e.id).map(|m| m.clone() as Arc<dyn MailStore>)
    }

    fn create(&self, name: &str) -> Result<(), FolderError> {
        let name = normalize(name)?;
        if name == "INBOX" {
            return Err(FolderError::Exists(name));
        }
        let mut st = self.lock();
        if Self::exists(&st, &name) {
            return Err(FolderError::Exists(name));
        }
        if st.index.folders.len() + name.split(DELIMITER).count() > self.max_folders {
            return Err(FolderError::TooMany(self.max_folders));
        }
        let mut prefix = String::new();
        for level in name.split(DELIMITER) {
            if !prefix.is_empty() {
                prefix.push(DELIMITER);
            }
            prefix.push_str(level);
            if !Self::exists(&st, &prefix) {
                self.add_folder(&mut st, &prefix, None)?;
            }
        }
        self.save(&st.index)?;
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), FolderError> {
        let name = normalize(name)?;
        if name == "INBOX" {
            return Err(FolderError::Inbox("deleted"));
        }
        let mut st = self.lock();
        let Some(pos) = st.index.folders.iter().position(|e| e.name == name) else {
            return Err(FolderError::NotFound(name));
        };
        if st.index.folders.iter().any(|e| is_below(&e.name, &name)) {
            return Err(FolderError::HasChildren(name));
        }
        let entry = st.index.folders.remove(pos);
        if let Err(e) = self.save(&st.index) {
            st.index.folders.insert(pos, entry);
            return Err(e.into());
        }
        // The index no longer names it: from here on the directory is garbage, and a crash
        // before it is gone only leaves an unreferenced directory.
        if let Some(md) = st.open.remove(&entry.id) {
            let bytes: u64 = md.snapshot().messages.iter().map(|m| m.size).sum();
            self.usage.release(bytes);
        }
        fs::remove_dir_all(self.root.join(entry.id.to_string()))?;
        fsutil::sync_dir(&self.root)?;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), FolderError> {
        let from = normalize(from)?;
        let to = normalize(to)?;
        if to == "INBOX" || is_below(&to, &from) {
            return Err(FolderError::InvalidName {
                name: to,
                why: "cannot rename a mailbox to INBOX or below itself",
            });
        }
        if from == "INBOX" {
            self.create(&to)?;
            let dest = self
                .open(&to)
                .ok_or_else(|| FolderError::NotFound(to.clone()))?;
            let snap = self.inbox.snapshot();
            for m in &snap.messages {
                let bytes = self.inbox.read(m.uid)?;
                dest.deliver(
                    &bytes,
                    DeliverOptions {
                        flags: m.flags,
                        internal_date: Some(m.internal_date),
                        quota: Quota::Exempt,
                        ..Default::default()
                    },
                )?;
                self.inbox.expunge(&[m.uid])?;
            }
            return Ok(());
        }
        let mut st = self.lock();
        if !st.index.folders.iter().any(|e| e.name == from) {
            return Err(FolderError::NotFound(from));
        }
        if Self::exists(&st, &to) {
            return Err(FolderError::Exists(to));
        }
        let before = st.index.clone();
        for e in st.index.folders.iter_mut() {
            if e.name == from {
                e.name = to.clone();
            } else if is_below(&e.name, &from) {
                e.name = format!("{to}{}", &e.name[from.len()..]);
            }
        }
        // Levels above the new name that do not exist yet.
        let levels: Vec<&str> = to.split(DELIMITER).collect();
        if st.index.folders.len() + levels.len() > self.max_folders {
            st.index = before;
            return Err(FolderError::TooMany(self.max_folders));
        }
        for n in 1..levels.len() {
            let parent = levels[..n].join(&DELIMITER.to_string());
            if !Self::exists(&st, &parent)
                && let Err(e) = self.add_folder(&mut st, &parent, None)
            {
                st.index = before;
                return Err(e.into());
            }
        }
        if let Err(e) = self.save(&st.index) {
            st.index = before;
            return Err(e.into());
        }
        Ok(())
    }

    fn subscriptions(&self) -> Vec<String> {
        self.lock().index.subscribed.clone()
    }

    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), FolderError> {
        let name = normalize(name)?;
        let mut st = self.lock();
        let had = st.index.subscribed.contains(&name);
        if had == subscribed {
            return Ok(());
        }
        if subscribed && st.index.subscribed.len() >= self.max_folders {
            return Err(FolderError::TooMany(self.max_folders));
        }
        if subscribed {
            st.index.subscribed.push(name.clone());
        } else {
            st.index.subscribed.retain(|n| n != &name);
        }
        if let Err(e) = self.save(&st.index) {
            if subscribed {
                st.index.subscribed.retain(|n| n != &name);
            } else {
                st.index.subscribed.push(name);
            }
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Flags;

    fn open(dir: &Path) -> MaildirFolders {
        MaildirFolders::open(&dir.join("Maildir"), &dir.join("folders"), Some(1 << 20)).unwrap()
    }

    fn names(f: &MaildirFolders) -> Vec<String> {
        f.list().into_iter().map(|i| i.name).collect()
    }

    #[test]
    fn every_identity_has_the_special_use_folders_subscribed() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path());
        assert_eq!(
            names(&f),
            ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
        );
        let sent = f.list().into_iter().find(|i| i.name == "Sent").unwrap();
        assert_eq!(sent.special_use, Some(SpecialUse::Sent));
        assert_eq!(sent.special_use.unwrap().attribute(), "\\Sent");
        let mut subs = f.subscriptions();
        subs.sort();
        assert_eq!(
            subs,
            ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
        );
        // A deleted special-use folder comes back at the next open, with a new UIDVALIDITY.
        let v = f.open("Trash").unwrap().snapshot().uidvalidity;
        f.delete("Trash").unwrap();
        assert!(f.open("Trash").is_none());
        drop(f);
        let f = open(dir.path());
        assert!(f.open("Trash").unwrap().snapshot().uidvalidity > v);
        assert!(f.special(SpecialUse::Trash).is_some());
    }

    #[test]
    fn create_rename_delete_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path());
        f.create("Work/Projects/").unwrap();
        assert!(names(&f).contains(&"Work".to_string()), "parents created");
        assert!(
            matches!(f.create("work/Projects").map(|_| ()), Ok(())),
            "names are case-sensitive"
        );
        assert!(matches!(f.create("Work"), Err(FolderError::Exists(_))));
        assert!(matches!(f.create("inbox"), Err(FolderError::Exists(_))));
        assert!(matches!(
            f.create("a//b"),
            Err(FolderError::InvalidName { .. })
        ));
        assert!(matches!(
            f.create("a*"),
            Err(FolderError::InvalidName { .. })
        ));
        let p = f.open("Work/Projects").unwrap();
        p.deliver(b"Subject: p\r\n\r\n", DeliverOptions::default())
            .unwrap();
        let v = p.snapshot().uidvalidity;
        assert!(matches!(f.delete("Work"), Err(FolderError::HasChildren(_))));
        f.rename("Work", "Jobs/Old").unwrap();
        assert!(f.open("Work/Projects").is_none());
        let moved = f.open("Jobs/Old/Projects").unwrap();
        assert_eq!(moved.snapshot().uidvalidity, v, "a rename keeps UIDs valid");
        assert_eq!(moved.snapshot().messages.len(), 1);
        // The open handle follows the rename.
        p.deliver(b"Subject: q\r\n\r\n", DeliverOptions::default())
            .unwrap();
        assert_eq!(moved.snapshot().messages.len(), 2);
        assert!(matches!(f.delete("INBOX"), Err(FolderError::Inbox(_))));
        assert!(matches!(
            f.rename("Jobs", "Jobs/x"),
            Err(FolderError::InvalidName { .. })
        ));
        f.delete("work/Projects").unwrap();
        f.set_subscribed("Jobs/Old", true).unwrap();
        f.set_subscribed("Gone", true).unwrap();
        f.set_subscribed("Sent", false).unwrap();
        drop((f, p, moved));
        let f = open(dir.path());
        assert_eq!(
            names(&f),
            [
                "INBOX",
                "Archive",
                "Drafts",
                "Jobs",
                "Jobs/Old",
                "Jobs/Old/Projects",
                "Junk",
                "Sent",
                "Trash",
                "work"
            ]
        );
        assert_eq!(
            f.open("Jobs/Old/Projects").unwrap().snapshot().uidvalidity,
            v
        );
        let subs = f.subscriptions();
        assert!(subs.contains(&"Gone".to_string()) && !subs.contains(&"Sent".to_string()));
        // Deleting and creating a name again gives a new UIDVALIDITY.
        f.delete("work").unwrap();
        f.create("work").unwrap();
        let again = f.open("work").unwrap().snapshot().uidvalidity;
        assert!(again > v, "{again} > {v}");
    }

    /// A crash after a new folder's directory was made and before the index named it leaves
    /// a directory nobody refers to; it is not a mailbox, and the next CREATE starts clean.
    #[test]
    fn a_folder_half_created_by_a_crash_is_not_a_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path());
        let next = f.lock().index.next_id;
        drop(f);
        let leftover = dir.path().join("folders").join(next.to_string());
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(leftover.join(sub)).unwrap();
        }
        fs::write(leftover.join("cur/1.x:2,"), b"Subject: half\r\n\r\n").unwrap();
        let f = open(dir.path());
        assert_eq!(f.list().len(), 6, "INBOX and the special-use folders only");
        f.create("New").unwrap();
        assert!(f.open("New").unwrap().snapshot().messages.is_empty());
    }

    #[test]
    fn a_client_cannot_grow_the_index_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).with_limit(20);
        let have = f.list().len() - 1; // the special-use folders
        for i in 0..(20 - have) {
            f.create(&format!("f{i}")).unwrap();
        }
        assert!(matches!(
            f.create("one-more"),
            Err(FolderError::TooMany(20))
        ));
        assert!(f.open("one-more").is_none());
        f.delete("f0").unwrap();
        f.create("one-more").unwrap();
        for i in 0..(20 - f.subscriptions().len()) {
            f.set_subscribed(&format!("s{i}"), true).unwrap();
        }
        assert!(matches!(
            f.set_subscribed("x", true),
            Err(FolderError::TooMany(20))
        ));
        f.set_subscribed("s0", false).unwrap();
    }

    #[test]
    fn renaming_inbox_moves_its_messages_and_quota_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let f = MaildirFolders::open(
            &dir.path().join("Maildir"),
            &dir.path().join("folders"),
            Some(10),
        )
        .unwrap();
        let opts = DeliverOptions {
            flags: Flags::SEEN,
            ..Default::default()
        };
        f.inbox().deliver(b"123456", opts).unwrap();
        let err = f
            .open("Drafts")
            .unwrap()
            .deliver(b"12345", DeliverOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, StoreError::OverQuota { used: 6, .. }),
            "{err}"
        );
        f.rename("INBOX", "Old").unwrap();
        assert!(f.inbox().snapshot().messages.is_empty());
        let old = f.open("Old").unwrap().snapshot();
        assert_eq!(old.messages.len(), 1);
        assert_eq!(old.messages[0].flags, Flags::SEEN);
        f.delete("Old").unwrap();
        f.inbox()
            .deliver(b"12345", DeliverOptions::default())
            .unwrap();
    }
}
