//! Held mail on disk: what this node holds for identities that named one of its identities as
//! a mailbox host, kept apart from the node's own mailboxes.
//!
//! `<home>/held/<recipient key, hex>/<id>.held`, one file per message: a JSON line of
//! metadata ([`HeldMeta`]) and then the message exactly as it came (ciphertext). Each file is
//! written durably (temporary file, fsync, rename, directory fsync) before [`HeldStore::hold`]
//! returns, so the sender's `250` means it is on disk; [`HeldStore::delete`] removes it
//! durably too. An in-memory index of every held message (recipient, sender, size, time),
//! rebuilt at open, answers the quota checks; one lock serialises a check and the write that
//! follows it, so two senders cannot both squeeze under a quota.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use onionpost_ledger_client::IdentityKey;
use serde::{Deserialize, Serialize};

use super::check::{self, Limits, Usage};
use crate::fsutil;
use crate::smtp::reply::Reply;

/// What is recorded with each held message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMeta {
    /// The message's id on this host (`<ms>-<12 hex>`), unique per recipient.
    pub id: String,
    /// The recipient address as the sender gave it (RCPT TO).
    pub recipient: String,
    /// The envelope sender (MAIL FROM), for the per-sender quota and for bounces.
    pub sender: String,
    /// The onion of our identity that the recipient named as host (the one that bounces it).
    #[serde(default)]
    pub host: String,
    /// When it was taken, Unix seconds.
    pub received: f64,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a message was not held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Over a quota (the reply says which).
    #[error("{}", .0.message)]
    Quota(Reply),
    /// The disk refused.
    #[error("writing held mail under {}: {source}", .dir.display())]
    Io {
        /// The recipient's directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    sender: String,
    size: u64,
    received: f64,
}

/// What a host holds in all, as `status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTotals {
    /// Recipients with at least one message held.
    pub recipients: usize,
    /// Messages held.
    pub messages: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Held messages by recipient, then by id.
type Index = HashMap<IdentityKey, BTreeMap<String, Entry>>;

/// The held-mail store.
#[derive(Debug)]
pub struct HeldStore {
    dir: PathBuf,
    index: Mutex<Index>,
}

/// Whether `id` has the form this store gives ids (so it can never name another path).
pub fn valid_id(id: &str) -> bool {
    let Some((ms, rand)) = id.split_once('-') else {
        return false;
    };
    !ms.is_empty()
        && ms.len() <= 20
        && ms.bytes().all(|b| b.is_ascii_digit())
        && rand.len() == 12
        && rand
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What the per-sender quota counts by: the sending identity (the domain of its address).
fn sender_key(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

fn read_meta(path: &Path) -> io::Result<HeldMeta> {
    let mut r = io::BufReader::new(fs::File::open(path)?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    serde_json::from_str(line.trim_end()).map_err(io::Error::other)
}

impl HeldStore {
    /// Opens (creating) the store at `dir` and indexes what it holds; leftover temporary
    /// files of interrupted writes are removed (their sender never got a 250). Blocks on the
    /// disk.
    pub fn open(dir: &Path) -> io::Result<HeldStore> {
        fsutil::create_dir_mode(dir, 0o700)?;
        let mut index = Index::new();
        for e in fs::read_dir(dir)? {
            let sub = e?.path();
            let Some(key) = sub
                .file_name()
                .and_then(|n| hex::decode(n.to_string_lossy().as_bytes()).ok())
                .and_then(|k| <IdentityKey>::try_from(k).ok())
            else {
                continue;
            };
            let mut held = BTreeMap::new();
            for f in fs::read_dir(&sub)? {
                let p = f?.path();
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with(".tmp-") {
                    fs::remove_file(&p)?;
                    continue;
                }
                if p.extension().is_none_or(|x| x != "held") {
                    continue;
                }
                match read_meta(&p) {
                    Ok(m) => {
                        held.insert(
                            m.id.clone(),
                            Entry {
                                sender: sender_key(&m.sender),
                                size: m.size,
                                received: m.received,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(path = %p.display(), "unreadable held message, left alone: {e}")
                    }
                }
            }
            index.insert(key, held);
        }
        Ok(HeldStore {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    /// How many recipients have mail held.
    pub fn recipients(&self) -> usize {
        let index = self.index.lock().expect("held index");
        index.values().filter(|m| !m.is_empty()).count()
    }

    /// What is held in all: messages, bytes, and for how many recipients (for `status`).
    pub fn totals(&self) -> HeldTotals {
        let index = self.index.lock().expect("held index");
        let mut t = HeldTotals::default();
        for held in index.values().filter(|m| !m.is_empty()) {
            t.recipients += 1;
            t.messages += held.len();
            t.bytes += held.values().map(|e| e.size).sum::<u64>();
        }
        t
    }

    fn recipient_dir(&self, who: &IdentityKey) -> PathBuf {
        self.dir.join(hex::encode(who))
    }

    fn path(&self, who: &IdentityKey, id: &str) -> PathBuf {
        self.recipient_dir(who).join(format!("{id}.held"))
    }

    /// How much is held for `who`.
    pub fn recipient_usage(&self, who: &IdentityKey) -> Usage {
        let index = self.index.lock().expect("held index");
        recipient_usage(&index, who)
    }

    /// Holds `message` for `who` if it fits the quotas; durable when it returns `Ok`, with
    /// the new id. `origin` is (recipient address, envelope sender address, our host
    /// identity's onion); the per-sender quota counts by the sender's onion. Blocks on the
    /// disk.
    pub fn hold(
        &self,
        who: &IdentityKey,
        origin: (&str, &str, &str),
        message: &[u8],
        now: f64,
        limits: &Limits,
    ) -> Result<String, HoldError> {
        let (recipient, sender, host) = origin;
        let size = message.len() as u64;
        let mut index = self.index.lock().expect("held index");
        let r = recipient_usage(&index, who);
        let s = sender_usage(&index, &sender_key(sender));
        check::quota(limits, r, s, size, recipient).map_err(HoldError::Quota)?;
        let id = format!(
            "{:013}-{}",
            (now * 1000.0) as u64,
            hex::encode(rand::random::<[u8; 6]>())
        );
        let meta = HeldMeta {
            id: id.clone(),
            recipient: recipient.to_string(),
            sender: sender.to_string(),
            host: host.to_string(),
            received: now,
            size,
        };
        let dir = self.recipient_dir(who);
        let io = |source| HoldError::Io {
            dir: dir.clone(),
            source,
        };
        if !dir.exists() {
            fsutil::create_dir_mode(&dir, 0o700).map_err(io)?;
            fsutil::sync_dir(&self.dir).map_err(io)?;
        }
        let mut bytes = serde_json::to_vec(&meta).map_err(|e| io(io::Error::other(e)))?;
        bytes.push(b'\n');
        bytes.extend_from_slice(message);
        fsutil::write_durable_mode(&self.path(who, &id), &bytes, 0o600).map_err(io)?;
        index.entry(*who).or_default().insert(
            id.clone(),
            Entry {
                sender: sender_key(sender),
                size,
                received: now,
            },
        );
        Ok(id)
    }

    /// The ids and sizes of what is held for `who`, oldest first.
    pub fn list(&self, who: &IdentityKey) -> Vec<(String, u64)> {
        let index = self.index.lock().expect("held index");
        index
            .get(who)
            .map(|m| m.iter().map(|(id, e)| (id.clone(), e.size)).collect())
            .unwrap_or_default()
    }

    /// One held message's bytes (as it came, without the metadata line). Blocks on the disk.
    pub fn read(&self, who: &IdentityKey, id: &str) -> io::Result<Vec<u8>> {
        if !valid_id(id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such id"));
        }
        let mut r = io::BufReader::new(fs::File::open(self.path(who, id))?);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Deletes one held message durably; whether it was there. Blocks on the disk.
    pub fn delete(&self, who: &IdentityKey, id: &str) -> io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        let mut index = self.index.lock().expect("held index");
        let known = index.get_mut(who).and_then(|m| m.remove(id)).is_some();
        fsutil::remove_durable(&self.path(who, id))?;
        Ok(known)
    }

    /// Deletes every message held since before `cutoff` (Unix seconds), each after `bounce`
    /// was given its metadata and bytes and succeeded (a crash in between bounces it again;
    /// it never goes unreported). Returns how many went. Blocks on the disk.
    pub fn expire(
        &self,
        cutoff: f64,
        mut bounce: impl FnMut(&HeldMeta, &[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let old: Vec<(IdentityKey, String)> = {
            let index = self.index.lock().expect("held index");
            index
                .iter()
                .flat_map(|(who, m)| {
                    m.iter()
                        .filter(|(_, e)| e.received < cutoff)
                        .map(|(id, _)| (*who, id.clone()))
                })
                .collect()
        };
        let mut gone = 0;
        for (who, id) in old {
            match read_meta(&self.path(&who, &id)) {
                Ok(m) => bounce(&m, &self.read(&who, &id)?)?,
                Err(e) => tracing::warn!(%id, "expired held message has unreadable metadata: {e}"),
            }
            if self.delete(&who, &id)? {
                gone += 1;
            }
        }
        Ok(gone)
    }
}

fn recipient_usage(index: &Index, who: &IdentityKey) -> Usage {
    index.get(who).map_or_else(Usage::default, |m| Usage {
        messages: m.len(),
        bytes: m.values().map(|e| e.size).sum(),
    })
}

fn sender_usage(index: &Index, sender: &str) -> Usage {
    let mut u = Usage::default();
    for e in index.values().flat_map(|m| m.values()) {
        if e.sender == sender {
            u.messages += 1;
            u.bytes += e.size;
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_messages_per_recipient: 3,
            max_bytes_per_recipient: 1000,
            max_messages_per_sender: 2,
            max_bytes_per_sender: 1000,
        }
    }

    #[test]
    fn holds_durably_reopens_lists_reads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = HeldStore::open(dir.path()).unwrap();
        let x = [7u8; 32];
        let id = s
            .hold(
                &x,
                ("bob@x.onion", "a@a.onion", "h"),
                b"ciphertext",
                100.0,
                &limits(),
            )
            .unwrap();
        assert!(valid_id(&id), "{id}");
        let s = HeldStore::open(dir.path()).unwrap();
        assert_eq!(s.list(&x), vec![(id.clone(), 10)]);
        assert_eq!(s.read(&x, &id).unwrap(), b"ciphertext");
        assert!(s.delete(&x, &id).unwrap());
        assert!(!s.delete(&x, &id).unwrap(), "deleting twice is harmless");
        assert!(s.list(&x).is_empty());
        assert!(s.read(&x, "../../etc/passwd").is_err());
        assert!(HeldStore::open(dir.path()).unwrap().list(&x).is_empty());
    }

    #[test]
    fn quotas_per_sender_and_recipient_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = HeldStore::open(dir.path()).unwrap();
        let (x, y) = ([1u8; 32], [2u8; 32]);
        s.hold(&x, ("x@x.onion", "a@a.onion", "h"), b"1", 1.0, &limits())
            .unwrap();
        s.hold(&y, ("y@y.onion", "a@a.onion", "h"), b"2", 2.0, &limits())
            .unwrap();
        let e = s
            .hold(&x, ("x@x.onion", "a@a.onion", "h"), b"3", 3.0, &limits())
            .unwrap_err();
        assert!(
            matches!(&e, HoldError::Quota(r) if r.esc == [4, 7, 1]),
            "{e}"
        );
        s.hold(&x, ("x@x.onion", "b@b.onion", "h"), b"3", 3.0, &limits())
            .unwrap();
        s.hold(&x, ("x@x.onion", "c@c.onion", "h"), b"4", 4.0, &limits())
            .unwrap();
        let e = s
            .hold(&x, ("x@x.onion", "d@d.onion", "h"), b"5", 5.0, &limits())
            .unwrap_err();
        assert!(
            matches!(&e, HoldError::Quota(r) if r.esc == [4, 2, 2]),
            "{e}"
        );
        let mut bounced = Vec::new();
        let gone = s
            .expire(2.5, |m, data| {
                bounced.push((m.recipient.clone(), data.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(gone, 2);
        bounced.sort();
        assert_eq!(
            bounced,
            [
                ("x@x.onion".to_string(), b"1".to_vec()),
                ("y@y.onion".to_string(), b"2".to_vec())
            ]
        );
        // A bounce that cannot be queued keeps the message.
        let e = s.expire(3.5, |_, _| Err(io::Error::other("queue full")));
        assert!(e.is_err());
        assert_eq!(s.list(&x).len(), 2);
        assert_eq!(s.list(&x).len(), 2);
        assert!(s.list(&y).is_empty());
    }
}
