//! The `MailStore` and `Mailboxes` seams: one identity's mail, as IMAP and the delivery
//! stages see it. A [`MailStore`] is one mailbox (INBOX or a folder); [`Mailboxes`] is the
//! identity's set of them (LIST, CREATE, DELETE, RENAME, subscriptions, special use).
//!
//! Contract: every method that changes the store is durable (fsynced) before it returns `Ok`,
//! and every method may block on the disk, so async callers run them on blocking threads
//! (`tokio::task::spawn_blocking`), never on an async worker. [`Maildir`] and
//! [`MaildirFolders`] are the implementations.

mod flags;
mod folders;
mod maildir;

use std::fmt;
use std::io;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub use flags::Flags;
pub use folders::{
    DELIMITER, FolderError, FolderInfo, Mailboxes, MaildirFolders, SpecialUse, normalize,
};
pub use maildir::{Maildir, UID_BLOCK, Usage};

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
    /// CONDSTORE mod-sequence: raised whenever the message is stored or re-flagged.
    pub modseq: u64,
}

/// A consistent view of a mailbox.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// The UID the next message will get.
    pub uidnext: u32,
    /// The highest mod-sequence of any change so far (CONDSTORE HIGHESTMODSEQ).
    pub highest_modseq: u64,
    /// Messages in UID order.
    pub messages: Vec<MessageMeta>,
}

/// The length of the prefix of `bytes` that ends with the first empty line (`\r\n\r\n`
/// or `\n\n`), or all of `bytes` if there is none.
pub fn header_len(bytes: &[u8]) -> usize {
    let mut at_line_start = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' if at_line_start => return i + 1,
            b'\n' => at_line_start = true,
            b'\r' if at_line_start && bytes.get(i + 1) == Some(&b'\n') => return i + 2,
            _ => at_line_start = false,
        }
    }
    bytes.len()
}

/// Identifies "the same message" for deduplication: its Message-ID *and* its content, so a
/// retried delivery is recognised while a different message reusing a known Message-ID is not
/// dropped.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupeKey(pub [u8; 16]);

impl DedupeKey {
    /// The key of a message with this Message-ID (angle brackets and white space ignored)
    /// and these bytes.
    pub fn new(message_id: &str, bytes: &[u8]) -> Self {
        let id = message_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        let mut h = Sha256::new();
        h.update(b"onionpost/dedupe/v1\0");
        h.update((id.len() as u64).to_be_bytes());
        h.update(id.as_bytes());
        h.update(Sha256::digest(bytes));
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        DedupeKey(k)
    }

    /// The key of the node's own copy of a message its user submitted, filed in Sent: the
    /// client's Message-ID alone, so the copy the client APPENDs to Sent afterwards (with
    /// the headers the node removed or changed at submission) is recognised as the same.
    pub fn sent_copy(message_id: &str) -> Self {
        let id = message_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        let mut h = Sha256::new();
        h.update(b"onionpost/sent-copy/v1\0");
        h.update(id.as_bytes());
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        DedupeKey(k)
    }

    /// Lower-case hex, as stored on disk.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`DedupeKey::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b: [u8; 16] = hex::decode(s).ok()?.try_into().ok()?;
        Some(DedupeKey(b))
    }
}

impl fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DedupeKey({})", self.to_hex())
    }
}

/// Whether a delivery counts against the mailbox quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quota {
    /// Refuse when the mailbox is full (mail from others, APPEND).
    #[default]
    Enforce,
    /// Store anyway (the node's own notices to its user, such as bounces, which have nowhere
    /// else to go).
    Exempt,
}

/// How to store a message.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliverOptions {
    /// Skip the message if one with this key was stored before (even if since expunged).
    pub dedupe: Option<DedupeKey>,
    /// Initial flags.
    pub flags: Flags,
    /// INTERNALDATE, Unix seconds; default now.
    pub internal_date: Option<i64>,
    /// Quota handling.
    pub quota: Quota,
}

/// The result of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Stored durably with this UID.
    Stored(u32),
    /// A message with the same [`DedupeKey`] was stored before; nothing was written.
    Duplicate,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The mailbox is at its quota; nothing was written.
    #[error("mailbox full: {used} of {limit} bytes used, message of {size} bytes")]
    OverQuota {
        /// Bytes stored now.
        used: u64,
        /// The quota.
        limit: u64,
        /// The refused message's size.
        size: u64,
    },
    /// No message with that UID.
    #[error("no message with UID {0}")]
    NoSuchMessage(u32),
    /// The disk failed.
    #[error("mail store i/o: {0}")]
    Io(#[from] io::Error),
}

/// One identity's mailbox.
pub trait MailStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a message durably (see [`DeliverOptions`]).
    fn deliver(&self, bytes: &[u8], opts: DeliverOptions) -> Result<Delivered, StoreError>;
    /// The current state of the mailbox (from memory; does not touch the disk).
    fn snapshot(&self) -> Snapshot;
    /// A message's bytes.
    fn read(&self, uid: u32) -> Result<Vec<u8>, StoreError>;
    /// A prefix of a message's bytes that holds its whole header: up to and including the
    /// first empty line, or the whole message if it has none. For ENVELOPE, header fetches
    /// and header searches, which need not read bodies. The default reads the message.
    fn read_header(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
        let mut bytes = self.read(uid)?;
        bytes.truncate(header_len(&bytes));
        Ok(bytes)
    }
    /// A message's IMAP ENVELOPE, rendered from its header (see [`MailStore::read_header`])
    /// by `render`, a pure function of the header. Messages never change, so a store may
    /// keep the result and answer later calls from memory; the default renders it every
    /// time. For `FETCH (ENVELOPE)` of a whole mailbox, which clients send on every sync.
    fn envelope(&self, uid: u32, render: fn(&[u8]) -> Vec<u8>) -> Result<Arc<[u8]>, StoreError> {
        Ok(render(&self.read_header(uid)?).into())
    }
    /// Replaces a message's flags. Unknown UIDs are ignored.
    fn set_flags(&self, uid: u32, flags: Flags) -> Result<(), StoreError>;
    /// Replaces the flags of several messages, durable together (one fsync where the store
    /// can). Unknown UIDs are ignored.
    fn set_flags_many(&self, changes: &[(u32, Flags)]) -> Result<(), StoreError> {
        changes
            .iter()
            .try_for_each(|&(uid, flags)| self.set_flags(uid, flags))
    }
    /// Removes messages for good; returns the UIDs removed.
    fn expunge(&self, uids: &[u32]) -> Result<Vec<u32>, StoreError>;
    /// A receiver that changes whenever messages are added, removed or re-flagged.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// The UID of a message in the mailbox now that was stored with this dedupe key
    /// (not one expunged since). The default knows of none.
    fn uid_of(&self, key: DedupeKey) -> Option<u32> {
        let _ = key;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_ends_at_the_first_empty_line() {
        assert_eq!(header_len(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"), 14);
        assert_eq!(header_len(b"A: 1\nB: 2\n\nbody\n"), 11);
        assert_eq!(header_len(b"\r\nbody"), 2);
        assert_eq!(header_len(b"A: 1\r\nno blank line"), 19);
        assert_eq!(header_len(b""), 0);
    }

    #[test]
    fn dedupe_key_covers_id_and_content() {
        let a = DedupeKey::new("<x@y>", b"one");
        assert_eq!(
            a,
            DedupeKey::new(" x@y ", b"one"),
            "brackets and space ignored"
        );
        assert_ne!(a, DedupeKey::new("<x@y>", b"two"), "same id, other content");
        assert_ne!(a, DedupeKey::new("<z@y>", b"one"), "other id, same content");
        assert_eq!(DedupeKey::from_hex(&a.to_hex()), Some(a));
        assert_eq!(DedupeKey::from_hex("nothex"), None);
    }
}
