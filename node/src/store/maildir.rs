//! [`MailStore`] on a Maildir whose file names carry the IMAP UID and the dedupe key.
//!
//! Files live in `cur/` as `<uid>.<unique>[.<dedupe key>].M<modseq>:2,<flags>` (standard
//! Maildir flag letters), so any Maildir reader can open the store and IMAP UIDs and
//! CONDSTORE mod-sequences survive restarts (a file without `.M<modseq>` has mod-sequence 1).
//! Mod-sequences come from a durable ceiling in `modseq`, like UIDs (below), so
//! HIGHESTMODSEQ never goes backwards either.
//! `uidvalidity` sits beside `cur/`, and so does `uidnext`: a durable ceiling below which
//! every UID ever handed out lies. UIDs are reserved in blocks of [`UID_BLOCK`]: the ceiling
//! is raised (and fsynced) before a UID at or above it is assigned, so after a crash, even one
//! that lost a message a client had already seen, no UID is ever handed out twice and UIDNEXT
//! never goes backwards.
//!
//! Deduplication without a window for duplicates: a message's [`DedupeKey`] is part of its
//! file name, so the rename that makes the message durable also records the key, atomically.
//! At open, the keys are collected from the file names plus `dedupe-keys`, a log to which
//! [`MailStore::expunge`] appends the keys of the messages it removes (before removing them),
//! so a message expunged by the user is still recognised if its sender retries.
//!
//! Every write is durable (fsync of the file and of `cur/`) before it returns.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::{
    DedupeKey, DeliverOptions, Delivered, Flags, MailStore, MessageMeta, Quota, Snapshot,
    StoreError, header_len,
};
use crate::fsutil;

/// How much of a message file one read of [`MailStore::read_header`] takes.
const HEADER_BLOCK: usize = 8 * 1024;

/// The most bytes of headers ([`MailStore::read_header`]) and rendered envelopes
/// ([`MailStore::envelope`]) one mailbox keeps in memory (header fetches, searches and
/// ENVELOPE then touch no files and parse nothing): 32 MiB, the headers and envelopes of
/// some 20,000 to 60,000 messages. Past it, they are read and rendered each time.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The log of dedupe keys of expunged messages.
const DEDUPE_LOG: &str = "dedupe-keys";

/// How many UIDs one durable write of the `uidnext` ceiling reserves.
pub const UID_BLOCK: u32 = 64;

/// How many mod-sequences one durable write of the `modseq` ceiling reserves.
pub const MODSEQ_BLOCK: u64 = 1024;

/// The bytes stored in all of one identity's mailboxes, against its quota (shared by the
/// folders of one identity, so the quota counts them all).
#[derive(Debug)]
pub struct Usage {
    limit: Option<u64>,
    used: AtomicU64,
}

impl Usage {
    /// A pool with this quota (`None`: no limit) and nothing used yet.
    pub fn new(limit: Option<u64>) -> Arc<Usage> {
        Arc::new(Usage {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes stored now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` bytes off (a deleted mailbox's).
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

#[derive(Debug, Clone)]
struct Entry {
    meta: MessageMeta,
    /// File name without the mod-sequence and the `:2,<flags>` info part.
    stem: String,
    dedupe: Option<DedupeKey>,
    /// The header, once read (messages never change, so it stays true).
    header: Option<Box<[u8]>>,
    /// The rendered ENVELOPE, once asked for (likewise).
    envelope: Option<Arc<[u8]>>,
}

#[derive(Debug)]
struct State {
    uidvalidity: u32,
    uidnext: u32,
    /// The durable ceiling in `uidnext`: every UID handed out is below it.
    reserved: u32,
    /// The highest mod-sequence handed out (HIGHESTMODSEQ).
    modseq: u64,
    /// The durable ceiling in `modseq`: every mod-sequence handed out is below it.
    modseq_reserved: u64,
    messages: BTreeMap<u32, Entry>,
    seen: HashSet<DedupeKey>,
    /// Bytes of headers and envelopes kept in the entries (at most [`CACHE_BYTES`]).
    cached_bytes: usize,
}

/// One mailbox (INBOX or a folder) in a Maildir.
#[derive(Debug)]
pub struct Maildir {
    dir: PathBuf,
    usage: Arc<Usage>,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a file name in `cur/` says.
struct Name {
    uid: u32,
    stem: String,
    dedupe: Option<DedupeKey>,
    modseq: u64,
    flags: Flags,
}

fn parse_name(name: &str) -> Option<Name> {
    let (base, info) = name.split_once(":2,").unwrap_or((name, ""));
    let mut parts = base.split('.');
    let uid_part = parts.next()?;
    let uid: u32 = uid_part.parse().ok().filter(|&u| u > 0)?;
    let unique = parts.next()?;
    let mut stem = format!("{uid_part}.{unique}");
    let (mut dedupe, mut modseq) = (None, 1);
    for p in parts {
        if let Some(m) = p.strip_prefix('M').and_then(|m| m.parse().ok()) {
            modseq = m;
        } else if let Some(k) = DedupeKey::from_hex(p) {
            dedupe = Some(k);
            stem = format!("{stem}.{p}");
        } else {
            return None;
        }
    }
    Some(Name {
        uid,
        stem,
        dedupe,
        modseq,
        flags: Flags::from_maildir(info),
    })
}

fn read_ceiling(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a number: {s:?}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Maildir {
    /// Opens (creating if needed) the Maildir at `dir` and indexes its messages. `quota` is
    /// the most bytes the mailbox may hold (`None`: no limit).
    pub fn open(dir: &Path, quota: Option<u64>) -> io::Result<Maildir> {
        Self::open_shared(dir, Usage::new(quota), (now_unix() as u32).max(1))
    }

    /// Opens (creating if needed) the Maildir at `dir`, counting its bytes in `usage`.
    /// A new mailbox gets `uidvalidity`; an existing one keeps the one it has.
    pub fn open_shared(dir: &Path, usage: Arc<Usage>, uidvalidity: u32) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fsutil::create_dir_mode(&dir.join(sub), 0o700)?;
        }
        let uidvalidity = match fs::read_to_string(dir.join("uidvalidity")) {
            Ok(s) => s.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a UIDVALIDITY: {s:?}",
                        dir.join("uidvalidity").display()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let v = uidvalidity.max(1);
                fsutil::write_durable(&dir.join("uidvalidity"), v.to_string().as_bytes())?;
                v
            }
            Err(e) => return Err(e),
        };
        let mut uidnext: u32 = read_ceiling(&dir.join("uidnext"))?
            .unwrap_or(1)
            .clamp(1, u32::MAX as u64) as u32;
        let mut modseq: u64 = read_ceiling(&dir.join("modseq"))?.unwrap_or(1).max(1);
        // Leftovers in tmp/ were never acknowledged; drop them.
        for e in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        let mut seen: HashSet<DedupeKey> = match fs::read_to_string(dir.join(DEDUPE_LOG)) {
            Ok(s) => s.lines().filter_map(DedupeKey::from_hex).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        let mut messages = BTreeMap::new();
        let mut foreign = Vec::new();
        let mut used = 0;
        for e in fs::read_dir(dir.join("cur"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            match parse_name(&name) {
                Some(n) => {
                    let md = e.metadata()?;
                    uidnext = uidnext.max(n.uid.saturating_add(1));
                    modseq = modseq.max(n.modseq);
                    used += md.len();
                    if let Some(k) = n.dedupe {
                        seen.insert(k);
                    }
                    messages.insert(
                        n.uid,
                        Entry {
                            meta: MessageMeta {
                                uid: n.uid,
                                flags: n.flags,
                                size: md.len(),
                                internal_date: mtime(&md),
                                modseq: n.modseq,
                            },
                            stem: n.stem,
                            header: None,
                            envelope: None,
                            dedupe: n.dedupe,
                        },
                    );
                }
                None => foreign.push(e.path()),
            }
        }
        // Messages dropped into new/ (or foreign names in cur/) by other tools get UIDs now.
        for e in fs::read_dir(dir.join("new"))? {
            foreign.push(e?.path());
        }
        for path in foreign {
            let info = path
                .to_string_lossy()
                .split_once(":2,")
                .map(|(_, i)| i.to_string());
            let flags = Flags::from_maildir(info.as_deref().unwrap_or(""));
            let uid = uidnext;
            let stem = format!("{uid}.{}", unique());
            let md = fs::metadata(&path)?;
            fs::rename(&path, cur_path(dir, &stem, 1, flags))?;
            uidnext += 1;
            used += md.len();
            messages.insert(
                uid,
                Entry {
                    meta: MessageMeta {
                        uid,
                        flags,
                        size: md.len(),
                        internal_date: mtime(&md),
                        modseq: 1,
                    },
                    stem,
                    dedupe: None,
                    header: None,
                    envelope: None,
                },
            );
        }
        fsutil::sync_dir(&dir.join("cur"))?;
        usage.add(used);
        Ok(Maildir {
            dir: dir.to_path_buf(),
            usage,
            state: Mutex::new(State {
                uidvalidity,
                uidnext,
                // The next delivery raises the ceiling durably before it assigns a UID.
                reserved: uidnext,
                modseq,
                modseq_reserved: modseq,
                messages,
                seen,
                cached_bytes: 0,
            }),
            changes: watch::channel(0).0,
        })
    }

    fn path_of(&self, e: &Entry) -> PathBuf {
        cur_path(&self.dir, &e.stem, e.meta.modseq, e.meta.flags)
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("maildir lock")
    }

    /// Bytes stored now, in every mailbox sharing this one's quota.
    pub fn used_bytes(&self) -> u64 {
        self.usage.used()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next mod-sequence, below the durable ceiling (raised by a block when reached).
    fn next_modseq(&self, st: &mut State) -> io::Result<u64> {
        let next = st.modseq + 1;
        if next >= st.modseq_reserved {
            let ceiling = next + MODSEQ_BLOCK;
            fsutil::write_durable(&self.dir.join("modseq"), ceiling.to_string().as_bytes())?;
            st.modseq_reserved = ceiling;
        }
        st.modseq = next;
        Ok(next)
    }

    /// Makes sure `st.uidnext` is below the durable ceiling (raising it by a block if not).
    fn reserve(&self, st: &mut State) -> io::Result<()> {
        if st.uidnext >= st.reserved {
            let ceiling = st.uidnext.saturating_add(UID_BLOCK);
            fsutil::write_durable(&self.dir.join("uidnext"), ceiling.to_string().as_bytes())?;
            st.reserved = ceiling;
        }
        Ok(())
    }
}

fn cur_path(dir: &Path, stem: &str, modseq: u64, flags: Flags) -> PathBuf {
    dir.join("cur")
        .join(format!("{stem}.M{modseq}:2,{}", flags.to_maildir()))
}

impl MailStore for Maildir {
    /// The slow parts (writing and fsyncing the file, fsyncing the directory) run outside the
    /// lock so concurrent deliveries overlap; UIDs are assigned and messages become visible
    /// in order, under the lock.
    fn deliver(&self, bytes: &[u8], opts: DeliverOptions) -> Result<Delivered, StoreError> {
        let size = bytes.len() as u64;
        {
            let st = self.lock();
            if let Some(k) = opts.dedupe
                && st.seen.contains(&k)
            {
                return Ok(Delivered::Duplicate);
            }
            let used = self.usage.used();
            if let (Some(limit), Quota::Enforce) = (self.usage.limit, opts.quota)
                && used + size > limit
            {
                return Err(StoreError::OverQuota { used, limit, size });
            }
        }
        let unique = unique();
        let tmp = self.dir.join("tmp").join(&unique);
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            if let Some(t) = opts.internal_date {
                f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))?;
            }
            f.sync_all()?;
        }
        let mut st = self.lock();
        if let Some(k) = opts.dedupe
            && !st.seen.insert(k)
        {
            // A concurrent delivery of the same message won the race.
            drop(st);
            fs::remove_file(&tmp)?;
            return Ok(Delivered::Duplicate);
        }
        let reserved = self
            .reserve(&mut st)
            .and_then(|()| self.next_modseq(&mut st));
        if let Err(e) = reserved {
            if let Some(k) = opts.dedupe {
                st.seen.remove(&k);
            }
            drop(st);
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let uid = st.uidnext;
        let modseq = st.modseq;
        let stem = match opts.dedupe {
            Some(k) => format!("{uid}.{unique}.{}", k.to_hex()),
            None => format!("{uid}.{unique}"),
        };
        if let Err(e) = fs::rename(&tmp, cur_path(&self.dir, &stem, modseq, opts.flags)) {
            if let Some(k) = opts.dedupe {
                st.seen.remove(&k);
            }
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        st.uidnext += 1;
        self.usage.add(size);
        st.messages.insert(
            uid,
            Entry {
                meta: MessageMeta {
                    uid,
                    flags: opts.flags,
                    size,
                    internal_date: opts.internal_date.unwrap_or_else(now_unix),
                    modseq,
                },
                stem,
                dedupe: opts.dedupe,
                header: None,
                envelope: None,
            },
        );
        drop(st);
        // Visible before the directory fsync is harmless: nobody was told "stored" yet, and
        // after a crash the sender retries.
        fsutil::sync_dir(&self.dir.join("cur"))?;
        self.notify();
        Ok(Delivered::Stored(uid))
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            uidvalidity: st.uidvalidity,
            uidnext: st.uidnext,
            highest_modseq: st.modseq,
            messages: st.messages.values().map(|e| e.meta.clone()).collect(),
        }
    }

    fn read(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
        let path = {
            let st = self.lock();
            let e = st
                .messages
                .get(&uid)
                .ok_or(StoreError::NoSuchMessage(uid))?;
            self.path_of(e)
        };
        Ok(fs::read(path)?)
    }

    /// From memory if read before; else reads the file in blocks until the empty line that
    /// ends the header, and keeps it (within [`CACHE_BYTES`]).
    fn read_header(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
        let path = {
            let st = self.lock();
            let e = st
                .messages
                .get(&uid)
                .ok_or(StoreError::NoSuchMessage(uid))?;
            if let Some(h) = &e.header {
                return Ok(h.to_vec());
            }
            self.path_of(e)
        };
        let header = read_header_file(&path)?;
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.cached_bytes + header.len() <= CACHE_BYTES
            && let Some(e) = st.messages.get_mut(&uid)
            && e.header.is_none()
        {
            e.header = Some(header.as_slice().into());
            st.cached_bytes += header.len();
        }
        Ok(header)
    }

    /// From memory if rendered before; else rendered from the header and kept (within
    /// [`CACHE_BYTES`]).
    fn envelope(&self, uid: u32, render: fn(&[u8]) -> Vec<u8>) -> Result<Arc<[u8]>, StoreError> {
        {
            let st = self.lock();
            let e = st
                .messages
                .get(&uid)
                .ok_or(StoreError::NoSuchMessage(uid))?;
            if let Some(env) = &e.envelope {
                return Ok(env.clone());
            }
        }
        let env: Arc<[u8]> = render(&self.read_header(uid)?).into();
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.cached_bytes + env.len() <= CACHE_BYTES
            && let Some(e) = st.messages.get_mut(&uid)
            && e.envelope.is_none()
        {
            e.envelope = Some(env.clone());
            st.cached_bytes += env.len();
        }
        Ok(env)
    }

    fn set_flags(&self, uid: u32, flags: Flags) -> Result<(), StoreError> {
        self.set_flags_many(&[(uid, flags)])
    }

    /// Renames the files (each change gets a new mod-sequence), then one directory fsync.
    fn set_flags_many(&self, changes: &[(u32, Flags)]) -> Result<(), StoreError> {
        let mut st = self.lock();
        let mut changed = false;
        let mut result = Ok(());
        for &(uid, flags) in changes {
            let Some(e) = st.messages.get(&uid) else {
                continue;
            };
            if e.meta.flags == flags {
                continue;
            }
            let old = self.path_of(e);
            let modseq = match self.next_modseq(&mut st) {
                Ok(m) => m,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            let e = st.messages.get_mut(&uid).expect("present");
            let new = cur_path(&self.dir, &e.stem, modseq, flags);
            if let Err(err) = fs::rename(&old, &new) {
                result = Err(err.into());
                break;
            }
            e.meta.flags = flags;
            e.meta.modseq = modseq;
            changed = true;
        }
        if changed {
            if let Err(e) = fsutil::sync_dir(&self.dir.join("cur")) {
                result = result.and(Err(e.into()));
            }
            drop(st);
            self.notify();
        }
        result
    }

    fn expunge(&self, uids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let mut st = self.lock();
        let keys: Vec<String> = uids
            .iter()
            .filter_map(|u| st.messages.get(u).and_then(|e| e.dedupe))
            .map(|k| k.to_hex() + "\n")
            .collect();
        if !keys.is_empty() {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(DEDUPE_LOG))?;
            f.write_all(keys.concat().as_bytes())?;
            f.sync_data()?;
        }
        let mut removed = Vec::new();
        if uids.iter().any(|u| st.messages.contains_key(u)) {
            // An expunge is a change too: HIGHESTMODSEQ moves on.
            self.next_modseq(&mut st)?;
        }
        for uid in uids {
            if let Some(e) = st.messages.remove(uid) {
                st.cached_bytes -= e.header.as_ref().map_or(0, |h| h.len())
                    + e.envelope.as_ref().map_or(0, |v| v.len());
                fs::remove_file(self.path_of(&e))?;
                self.usage.release(e.meta.size);
                removed.push(*uid);
            }
        }
        fsutil::sync_dir(&self.dir.join("cur"))?;
        drop(st);
        self.notify();
        Ok(removed)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn uid_of(&self, key: DedupeKey) -> Option<u32> {
        let st = self.lock();
        st.messages
            .values()
            .find(|e| e.dedupe == Some(key))
            .map(|e| e.meta.uid)
    }
}

/// The prefix of the file at `path` that holds its whole header (see [`header_len`]).
fn read_header_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = fs::File::open(path)?;
    let mut buf = Vec::new();
    loop {
        // One read(2) per block; a message below the block size takes one in all.
        let len = buf.len();
        buf.resize(len + HEADER_BLOCK, 0);
        let n = loop {
            match f.read(&mut buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        buf.truncate(len + n);
        let end = header_len(&buf);
        if end < buf.len() || n == 0 {
            buf.truncate(end);
            return Ok(buf);
        }
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

    fn dedupe(id: &str, bytes: &[u8]) -> DeliverOptions {
        DeliverOptions {
            dedupe: Some(DedupeKey::new(id, bytes)),
            ..Default::default()
        }
    }

    #[test]
    fn uids_flags_dedup_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        assert_eq!(
            md.deliver(b"one", dedupe("<a@x>", b"one")).unwrap(),
            Delivered::Stored(1)
        );
        assert_eq!(
            md.deliver(b"one", dedupe("a@x", b"one")).unwrap(),
            Delivered::Duplicate
        );
        // Same Message-ID, different content: a different message, delivered.
        assert_eq!(
            md.deliver(b"other", dedupe("<a@x>", b"other")).unwrap(),
            Delivered::Stored(2)
        );
        let opts = DeliverOptions {
            flags: Flags::SEEN,
            internal_date: Some(1_000_000),
            ..Default::default()
        };
        assert_eq!(md.deliver(b"two", opts).unwrap(), Delivered::Stored(3));
        md.set_flags(1, Flags::FLAGGED.with(Flags::DELETED))
            .unwrap();
        assert_eq!(md.read(1).unwrap(), b"one");
        md.expunge(&[3]).unwrap();
        drop(md);
        let md = Maildir::open(dir.path(), None).unwrap();
        let snap = md.snapshot();
        assert!(snap.uidnext >= 4, "expunged UIDs are never reused");
        assert_eq!(snap.messages.len(), 2);
        assert_eq!(snap.messages[0].flags, Flags::FLAGGED.with(Flags::DELETED));
        assert_eq!(
            md.deliver(b"one", dedupe("<a@x>", b"one")).unwrap(),
            Delivered::Duplicate,
            "keys survive a restart"
        );
        // A file dropped into new/ by another tool gets the next UID.
        fs::write(dir.path().join("new/foreign"), b"hi").unwrap();
        let next = md.snapshot().uidnext;
        drop(md);
        let md = Maildir::open(dir.path(), None).unwrap();
        assert_eq!(md.snapshot().messages.last().unwrap().uid, next);
    }

    /// UIDs come from a durable ceiling: whatever a crash loses, a reopened mailbox never
    /// hands out a UID it handed out before, and UIDNEXT never goes backwards.
    #[test]
    fn uidnext_never_goes_backwards_even_when_messages_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        let validity = md.snapshot().uidvalidity;
        for i in 0..(UID_BLOCK + 3) {
            md.deliver(format!("m{i}").as_bytes(), DeliverOptions::default())
                .unwrap();
        }
        let before = md.snapshot().uidnext;
        assert_eq!(before, UID_BLOCK + 4);
        drop(md);
        // The worst crash: every message file lost (as if the directory entries never
        // reached the disk).
        for e in fs::read_dir(dir.path().join("cur")).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        let md = Maildir::open(dir.path(), None).unwrap();
        let snap = md.snapshot();
        assert_eq!(snap.uidvalidity, validity, "UIDVALIDITY is kept");
        assert!(snap.uidnext >= before, "{} < {before}", snap.uidnext);
        assert!(matches!(
            md.deliver(b"new", DeliverOptions::default()).unwrap(),
            Delivered::Stored(u) if u >= before
        ));
    }

    #[test]
    fn read_header_stops_at_the_empty_line_even_past_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        let long = format!("X-Long: {}\r\n", "a".repeat(HEADER_BLOCK - 11));
        for head in ["Subject: s\r\n".to_string(), long] {
            let msg = format!("{head}To: b\r\n\r\nbody\r\n\r\nmore\r\n");
            let Delivered::Stored(uid) = md
                .deliver(msg.as_bytes(), DeliverOptions::default())
                .unwrap()
            else {
                panic!("stored")
            };
            assert_eq!(
                md.read_header(uid).unwrap(),
                format!("{head}To: b\r\n\r\n").as_bytes()
            );
        }
        let Delivered::Stored(uid) = md.deliver(b"no: body", DeliverOptions::default()).unwrap()
        else {
            panic!("stored")
        };
        assert_eq!(md.read_header(uid).unwrap(), b"no: body");
        // Read once, the header comes from memory: even with the file gone.
        let path = md.path_of(md.lock().messages.get(&uid).unwrap());
        fs::remove_file(path).unwrap();
        assert_eq!(md.read_header(uid).unwrap(), b"no: body");
        assert!(md.read(uid).is_err());
        assert!(matches!(
            md.read_header(99),
            Err(StoreError::NoSuchMessage(99))
        ));
    }

    #[test]
    fn envelopes_are_rendered_once_and_kept() {
        use std::sync::atomic::AtomicUsize;
        static RENDERS: AtomicUsize = AtomicUsize::new(0);
        fn render(header: &[u8]) -> Vec<u8> {
            RENDERS.fetch_add(1, Ordering::SeqCst);
            [b"env:", header].concat()
        }
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        md.deliver(b"Subject: s\r\n\r\nbody\r\n", DeliverOptions::default())
            .unwrap();
        assert_eq!(&*md.envelope(1, render).unwrap(), b"env:Subject: s\r\n\r\n");
        // The second time from memory: not rendered again.
        assert_eq!(&*md.envelope(1, render).unwrap(), b"env:Subject: s\r\n\r\n");
        assert_eq!(RENDERS.load(Ordering::SeqCst), 1);
        assert!(matches!(
            md.envelope(2, render),
            Err(StoreError::NoSuchMessage(2))
        ));
        assert!(md.lock().cached_bytes > 0);
        // Expunging gives the memory back.
        md.expunge(&[1]).unwrap();
        assert_eq!(md.lock().cached_bytes, 0);
    }

    #[test]
    fn expunged_messages_are_still_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        md.deliver(b"m", dedupe("<e@x>", b"m")).unwrap();
        md.expunge(&[1]).unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        assert!(md.snapshot().messages.is_empty());
        assert_eq!(
            md.deliver(b"m", dedupe("<e@x>", b"m")).unwrap(),
            Delivered::Duplicate
        );
    }

    /// A crash after the rename into cur/ (the message is durable) and before anything else
    /// happened: the key is in the file name, so the sender's retry is a duplicate.
    #[test]
    fn crash_right_after_the_store_cannot_deliver_twice() {
        let dir = tempfile::tempdir().unwrap();
        let key = DedupeKey::new("<c@x>", b"body");
        // What a store leaves behind if the process dies right after its rename.
        fs::create_dir_all(dir.path().join("cur")).unwrap();
        fs::write(
            dir.path()
                .join("cur")
                .join(format!("1.123abc.{}:2,", key.to_hex())),
            b"body",
        )
        .unwrap();
        let md = Maildir::open(dir.path(), None).unwrap();
        assert_eq!(md.snapshot().messages.len(), 1);
        assert_eq!(
            md.deliver(b"body", dedupe("<c@x>", b"body")).unwrap(),
            Delivered::Duplicate
        );
    }

    #[test]
    fn quota_refuses_without_writing_and_bounces_are_exempt() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), Some(10)).unwrap();
        md.deliver(b"12345678", DeliverOptions::default()).unwrap();
        let err = md.deliver(b"abc", DeliverOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::OverQuota {
                    used: 8,
                    limit: 10,
                    size: 3
                }
            ),
            "{err}"
        );
        assert_eq!(md.snapshot().messages.len(), 1, "nothing written");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let exempt = DeliverOptions {
            quota: Quota::Exempt,
            ..Default::default()
        };
        assert_eq!(md.deliver(b"bounce", exempt).unwrap(), Delivered::Stored(2));
        md.expunge(&[1, 2]).unwrap();
        assert_eq!(md.used_bytes(), 0);
        md.deliver(b"abc", DeliverOptions::default()).unwrap();
    }
}
