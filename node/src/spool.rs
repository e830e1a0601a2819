//! The durable outbound queue: one message file plus one JSON metadata file per queued message.
//!
//! `<id>.eml` is written (and fsynced) first, then `<id>.json`; a message is queued exactly when
//! its `.json` exists. The metadata holds the retry schedule (attempt count, next attempt time)
//! so backoff survives restarts, and which recipients are already done, so a restart does not
//! resend to them. Removal deletes the `.json` first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Delivery state of one recipient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipient {
    /// The address.
    pub address: String,
    /// Delivered (or permanently failed and reported).
    pub done: bool,
    /// Last error, for status and bounces.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Metadata of one queued message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueuedMessage {
    /// Spool id (file stem).
    pub id: String,
    /// Name of the sending identity.
    pub identity: String,
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients and their state.
    pub recipients: Vec<Recipient>,
    /// When the message was queued, Unix seconds.
    pub created: f64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, Unix seconds.
    pub next_attempt: f64,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens the spool at `dir`, creating it, and removes message files whose metadata was
    /// never written (their submission was never acknowledged).
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fsutil::create_dir_mode(dir, 0o700)?;
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let orphan =
                p.extension().is_some_and(|x| x == "eml") && !p.with_extension("json").exists();
            if name.starts_with(".tmp-") || orphan {
                fs::remove_file(&p)?;
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    /// Counts the queued messages in `dir` without changing anything (for `status` while no
    /// node runs: unlike [`Spool::open`], it cleans up nothing).
    pub fn count(dir: &Path) -> io::Result<usize> {
        match fs::read_dir(dir) {
            Ok(rd) => Ok(rd
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
                .count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Queues a message durably at Unix time `t`; returns its metadata.
    pub fn enqueue(
        &self,
        identity: &str,
        from: &str,
        recipients: &[String],
        data: &[u8],
        t: f64,
    ) -> io::Result<QueuedMessage> {
        let id = format!(
            "{:013}-{}",
            (t * 1000.0) as u64,
            hex::encode(rand::random::<[u8; 6]>())
        );
        let meta = QueuedMessage {
            id: id.clone(),
            identity: identity.to_string(),
            from: from.to_string(),
            recipients: recipients
                .iter()
                .map(|a| Recipient {
                    address: a.clone(),
                    done: false,
                    last_error: None,
                })
                .collect(),
            created: t,
            attempts: 0,
            next_attempt: t,
        };
        // Both files are fsynced; one directory fsync then covers both renames.
        fsutil::write_synced_mode(&self.dir.join(format!("{id}.eml")), data, 0o600)?;
        self.update(&meta)?;
        Ok(meta)
    }

    /// Durably rewrites a message's metadata.
    pub fn update(&self, meta: &QueuedMessage) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        fsutil::write_durable_mode(&self.dir.join(format!("{}.json", meta.id)), &json, 0o600)
    }

    /// All queued messages, oldest first. Unreadable metadata files are skipped.
    pub fn list(&self) -> io::Result<Vec<QueuedMessage>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                match fs::read(&p).map(|b| serde_json::from_slice::<QueuedMessage>(&b)) {
                    Ok(Ok(m)) => out.push(m),
                    Ok(Err(e)) => tracing::warn!(path = %p.display(), "bad spool metadata: {e}"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The current metadata of one message, or `None` if it is no longer queued.
    pub fn get(&self, id: &str) -> io::Result<Option<QueuedMessage>> {
        match fs::read(self.dir.join(format!("{id}.json"))) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Number of queued messages.
    pub fn len(&self) -> io::Result<usize> {
        Ok(fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count())
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The message bytes of a queued message.
    pub fn data(&self, id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(format!("{id}.eml")))
    }

    /// Removes a message from the queue (metadata first, then the message, then one
    /// directory fsync).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        for ext in ["json", "eml"] {
            match fs::remove_file(self.dir.join(format!("{id}.{ext}"))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fsutil::sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    /// Times are stored as JSON numbers; they must come back bit for bit, or a recovered
    /// spool differs from the one written (seen: 1795539795.5234377 read back 1 ULP off,
    /// fixed by serde_json's `float_roundtrip`).
    #[test]
    fn timestamps_survive_the_disk_exactly() {
        for t in [
            1795539795.5234375f64,
            1795539795.5234377,
            1795539795.5234373,
            1.0e9 + 0.1,
        ] {
            let text = serde_json::to_string(&t).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), t.to_bits(), "{t} -> {text} -> {back}");
        }
    }

    use super::*;

    #[test]
    fn enqueue_list_update_remove_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut m = spool
            .enqueue(
                "alice",
                "a@x.onion",
                &["b@y.onion".to_string()],
                b"hello",
                1e9,
            )
            .unwrap();
        assert_eq!(spool.len().unwrap(), 1);
        m.attempts = 3;
        m.next_attempt += 100.0;
        spool.update(&m).unwrap();
        // A restart sees the same schedule.
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![m.clone()]);
        assert_eq!(spool.data(&m.id).unwrap(), b"hello");
        // An orphaned message file (crash before the metadata) is dropped at open, but
        // counting (what `status` does) leaves it alone.
        fs::write(dir.path().join("orphan.eml"), b"x").unwrap();
        assert_eq!(Spool::count(dir.path()).unwrap(), 1);
        assert!(dir.path().join("orphan.eml").exists());
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join("orphan.eml").exists());
        spool.remove(&m.id).unwrap();
        assert!(spool.is_empty().unwrap());
    }
}
