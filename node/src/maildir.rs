//! The per-identity mail store: a Maildir whose file names carry the IMAP UID.
//!
//! Files live in `cur/` as `<uid>.<unique>:2,<flags>` (standard Maildir flag letters), so any
//! Maildir reader can open the store, and IMAP UIDs survive restarts. `uidvalidity` and the
//! persisted `uidnext` sit beside `cur/`; `seen-message-ids` records the hashes of accepted
//! Message-IDs for deduplication. Every write is durable (fsync) before it returns.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::fsutil;

/// IMAP system flags kept by the store, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// `\Seen` (Maildir `S`).
    pub const SEEN: Flags = Flags(1);
    /// `\Answered` (Maildir `R`).
    pub const ANSWERED: Flags = Flags(2);
    /// `\Flagged` (Maildir `F`).
    pub const FLAGGED: Flags = Flags(4);
    /// `\Deleted` (Maildir `T`).
    pub const DELETED: Flags = Flags(8);
    /// `\Draft` (Maildir `D`).
    pub const DRAFT: Flags = Flags(16);

    const TABLE: [(Flags, char, &'static str); 5] = [
        (Flags::DRAFT, 'D', "\\Draft"),
        (Flags::FLAGGED, 'F', "\\Flagged"),
        (Flags::ANSWERED, 'R', "\\Answered"),
        (Flags::SEEN, 'S', "\\Seen"),
        (Flags::DELETED, 'T', "\\Deleted"),
    ];

    /// Whether all bits of `other` are set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Difference.
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Maildir info letters, in ASCII order.
    pub fn to_maildir(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, c, _)| *c)
            .collect()
    }

    /// Parses Maildir info letters; unknown letters are ignored.
    pub fn from_maildir(s: &str) -> Flags {
        Self::TABLE
            .iter()
            .filter(|(_, c, _)| s.contains(*c))
            .fold(Flags::default(), |acc, (f, _, _)| acc.with(*f))
    }

    /// IMAP flag list contents, e.g. `\Seen \Flagged`.
    pub fn to_imap(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, _, n)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the store knows about one message without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// IMAP UID.
    pub uid: u32,
    /// System flags.
    pub flags: Flags,
    /// Size in bytes (RFC822.SIZE).
    pub size: u64,
    /// Arrival time, Unix seconds (INTERNALDATE).
    pub internal_date: i64,
    file: String,
}

/// A consistent view of the mailbox.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// The UID the next message will get.
    pub uidnext: u32,
    /// Messages in UID order.
    pub messages: Vec<MessageMeta>,
}

#[derive(Debug)]
struct State {
    uidvalidity: u32,
    uidnext: u32,
    messages: BTreeMap<u32, MessageMeta>,
    seen_ids: HashSet<String>,
}

/// One identity's mailbox (INBOX).
#[derive(Debug)]
pub struct Maildir {
    dir: PathBuf,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hash_id(message_id: &str) -> String {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

impl Maildir {
    /// Opens (creating if needed) the Maildir at `dir` and indexes its messages.
    pub fn open(dir: &Path) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fsutil::create_dir_mode(&dir.join(sub), 0o700)?;
        }
        let uidvalidity = match fs::read_to_string(dir.join("uidvalidity")) {
            Ok(s) => s.trim().parse().unwrap_or(1),
            Err(_) => {
                let v = (now_unix() as u32).max(1);
                fsutil::write_durable(&dir.join("uidvalidity"), v.to_string().as_bytes())?;
                v
            }
        };
        let mut uidnext: u32 = fs::read_to_string(dir.join("uidnext"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        // Leftovers in tmp/ were never acknowledged; drop them.
        for e in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        let mut messages = BTreeMap::new();
        let mut foreign = Vec::new();
        for e in fs::read_dir(dir.join("cur"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let (base, info) = name.split_once(":2,").unwrap_or((&name, ""));
            match base.split('.').next().and_then(|u| u.parse::<u32>().ok()) {
                Some(uid) if uid > 0 => {
                    let md = e.metadata()?;
                    uidnext = uidnext.max(uid + 1);
                    messages.insert(
                        uid,
                        MessageMeta {
                            uid,
                            flags: Flags::from_maildir(info),
                            size: md.len(),
                            internal_date: mtime(&md),
                            file: base.to_string(),
                        },
                    );
                }
                _ => foreign.push(e.path()),
            }
        }
        // Messages dropped into new/ (or foreign names in cur/) by other tools get UIDs now.
        for e in fs::read_dir(dir.join("new"))? {
            foreign.push(e?.path());
        }
        let seen_ids = fs::read_to_string(dir.join("seen-message-ids"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default();
        let md = Maildir {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                uidvalidity,
                uidnext,
                messages,
                seen_ids,
            }),
            changes: watch::channel(0).0,
        };
        for path in foreign {
            let info = path
                .to_string_lossy()
                .split_once(":2,")
                .map(|(_, i)| i.to_string());
            let flags = Flags::from_maildir(info.as_deref().unwrap_or(""));
            let mut st = md.state.lock().expect("maildir lock");
            let uid = st.uidnext;
            let base = format!("{uid}.{}", unique());
            let md_ = fs::metadata(&path)?;
            fs::rename(&path, md.cur_path(&base, flags))?;
            st.uidnext += 1;
            st.messages.insert(
                uid,
                MessageMeta {
                    uid,
                    flags,
                    size: md_.len(),
                    internal_date: mtime(&md_),
                    file: base,
                },
            );
        }
        fsutil::sync_dir(&dir.join("cur"))?;
        Ok(md)
    }

    fn cur_path(&self, base: &str, flags: Flags) -> PathBuf {
        self.dir
            .join("cur")
            .join(format!("{base}:2,{}", flags.to_maildir()))
    }

    /// A receiver that changes whenever messages are added, removed or re-flagged.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// The current state of the mailbox.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock().expect("maildir lock");
        Snapshot {
            uidvalidity: st.uidvalidity,
            uidnext: st.uidnext,
            messages: st.messages.values().cloned().collect(),
        }
    }

    /// Stores a message durably and returns its UID.
    pub fn deliver(
        &self,
        bytes: &[u8],
        flags: Flags,
        internal_date: Option<i64>,
    ) -> io::Result<u32> {
        self.store(None, bytes, flags, internal_date)
            .map(|uid| uid.expect("no dedup without a Message-ID"))
    }

    /// Stores a message unless one with the same Message-ID was stored before. Returns the
    /// new UID, or `None` for a duplicate. The Message-ID is recorded durably too.
    pub fn deliver_dedup(&self, message_id: Option<&str>, bytes: &[u8]) -> io::Result<Option<u32>> {
        self.store(message_id, bytes, Flags::default(), None)
    }

    /// The common path. The slow parts (writing and fsyncing the file, fsyncing the directory
    /// and the Message-ID log) run outside the lock so concurrent deliveries overlap; UIDs are
    /// assigned and messages become visible in order, under the lock.
    fn store(
        &self,
        message_id: Option<&str>,
        bytes: &[u8],
        flags: Flags,
        internal_date: Option<i64>,
    ) -> io::Result<Option<u32>> {
        let hashed = message_id.map(hash_id);
        if let Some(h) = &hashed
            && self
                .state
                .lock()
                .expect("maildir lock")
                .seen_ids
                .contains(h)
        {
            return Ok(None);
        }
        let unique = unique();
        let tmp = self.dir.join("tmp").join(&unique);
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            if let Some(t) = internal_date {
                f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))?;
            }
            f.sync_all()?;
        }
        let mut st = self.state.lock().expect("maildir lock");
        if let Some(h) = &hashed
            && !st.seen_ids.insert(h.clone())
        {
            drop(st);
            fs::remove_file(&tmp)?;
            return Ok(None);
        }
        let uid = st.uidnext;
        let base = format!("{uid}.{unique}");
        if let Err(e) = fs::rename(&tmp, self.cur_path(&base, flags)) {
            if let Some(h) = &hashed {
                st.seen_ids.remove(h);
            }
            return Err(e);
        }
        st.uidnext += 1;
        st.messages.insert(
            uid,
            MessageMeta {
                uid,
                flags,
                size: bytes.len() as u64,
                internal_date: internal_date.unwrap_or_else(now_unix),
                file: base,
            },
        );
        drop(st);
        // Visible before the directory fsync is harmless: nobody was told "stored" yet, and
        // after a crash the sender retries.
        fsutil::sync_dir(&self.dir.join("cur"))?;
        if let Some(h) = hashed {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("seen-message-ids"))?;
            f.write_all(format!("{h}\n").as_bytes())?;
            f.sync_data()?;
        }
        self.notify();
        Ok(Some(uid))
    }

    /// Reads a message's bytes.
    pub fn read(&self, uid: u32) -> io::Result<Vec<u8>> {
        let path = {
            let st = self.state.lock().expect("maildir lock");
            let m = st
                .messages
                .get(&uid)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such message"))?;
            self.cur_path(&m.file, m.flags)
        };
        fs::read(path)
    }

    /// Replaces a message's flags (renaming its file). Unknown UIDs are ignored.
    pub fn set_flags(&self, uid: u32, flags: Flags) -> io::Result<()> {
        let mut st = self.state.lock().expect("maildir lock");
        let Some(m) = st.messages.get_mut(&uid) else {
            return Ok(());
        };
        if m.flags == flags {
            return Ok(());
        }
        let from = self.cur_path(&m.file, m.flags);
        let to = self.cur_path(&m.file, flags);
        fs::rename(from, to)?;
        m.flags = flags;
        drop(st);
        self.notify();
        Ok(())
    }

    /// Removes messages for good; returns the UIDs removed.
    pub fn expunge(&self, uids: &[u32]) -> io::Result<Vec<u32>> {
        let mut st = self.state.lock().expect("maildir lock");
        fsutil::write_durable(&self.dir.join("uidnext"), st.uidnext.to_string().as_bytes())?;
        let mut removed = Vec::new();
        for uid in uids {
            if let Some(m) = st.messages.remove(uid) {
                fs::remove_file(self.cur_path(&m.file, m.flags))?;
                removed.push(*uid);
            }
        }
        fsutil::sync_dir(&self.dir.join("cur"))?;
        drop(st);
        self.notify();
        Ok(removed)
    }
}

fn mtime(md: &fs::Metadata) -> i64 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unique() -> String {
    format!("{}{:016x}", std::process::id(), rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_flags_dedup_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        assert_eq!(md.deliver_dedup(Some("<a@x>"), b"one").unwrap(), Some(1));
        assert_eq!(md.deliver_dedup(Some("a@x"), b"one again").unwrap(), None);
        assert_eq!(md.deliver(b"two", Flags::SEEN, Some(1_000_000)).unwrap(), 2);
        md.set_flags(1, Flags::FLAGGED.with(Flags::DELETED))
            .unwrap();
        assert_eq!(md.read(1).unwrap(), b"one");
        md.expunge(&[2]).unwrap();
        drop(md);
        let md = Maildir::open(dir.path()).unwrap();
        let snap = md.snapshot();
        assert_eq!(snap.uidnext, 3, "expunged UIDs are never reused");
        assert_eq!(snap.messages.len(), 1);
        assert_eq!(snap.messages[0].flags, Flags::FLAGGED.with(Flags::DELETED));
        assert_eq!(md.deliver_dedup(Some("<a@x>"), b"dup").unwrap(), None);
        // A file dropped into new/ by another tool gets the next UID.
        fs::write(dir.path().join("new/foreign"), b"hi").unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        assert_eq!(md.snapshot().messages.last().unwrap().uid, 3);
    }
}
