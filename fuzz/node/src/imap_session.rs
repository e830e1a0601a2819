//! The IMAP session ([`onionpost_node::imap::session`]) over an in-memory mail store.
//!
//! Input: one byte of flags (bit 0: log in before the fuzzed bytes; bit 1: report a mailbox
//! change after every chunk, as the edge does in IDLE), then chunks as [`crate::chunks`]
//! cuts them. INBOX starts with three messages; Sent, Trash and Archive/2026 exist (so COPY,
//! MOVE and the mailbox commands reach real stores). Properties checked: no panic; the output
//! ends with CRLF whenever there is output; the store's invariants hold afterwards (UIDs
//! below UIDNEXT, strictly increasing); nothing comes out after the session closed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use onionpost_node::imap::session::{Accounts, Session};
use onionpost_node::store::{
    DeliverOptions, Delivered, Flags, FolderError, FolderInfo, MailStore, Mailboxes, MessageMeta,
    Snapshot, SpecialUse, StoreError, normalize,
};
use tokio::sync::watch;

/// An in-memory mailbox (the fuzz loop must not touch the disk).
#[derive(Debug)]
pub struct MemStore {
    /// (UIDNEXT, HIGHESTMODSEQ, messages)
    state: Mutex<(u32, u64, BTreeMap<u32, (MessageMeta, Vec<u8>)>)>,
    changes: watch::Sender<u64>,
}

impl MemStore {
    fn empty() -> Self {
        MemStore {
            state: Mutex::new((1, 1, BTreeMap::new())),
            changes: watch::channel(0).0,
        }
    }

    fn new() -> Self {
        let s = Self::empty();
        for m in [
            &b"From: a@x.onion\r\nSubject: one\r\n\r\nhello\r\n"[..],
            b"Subject: two\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n",
            b"no header at all",
        ] {
            s.deliver(m, DeliverOptions::default()).expect("memory");
        }
        s
    }
}

impl MailStore for MemStore {
    fn deliver(&self, bytes: &[u8], opts: DeliverOptions) -> Result<Delivered, StoreError> {
        let mut st = self.state.lock().unwrap();
        let uid = st.0;
        st.0 += 1;
        st.1 += 1;
        let meta = MessageMeta {
            uid,
            flags: opts.flags,
            size: bytes.len() as u64,
            internal_date: opts.internal_date.unwrap_or(1_800_000_000),
            modseq: st.1,
        };
        st.2.insert(uid, (meta, bytes.to_vec()));
        Ok(Delivered::Stored(uid))
    }
    fn snapshot(&self) -> Snapshot {
        let st = self.state.lock().unwrap();
        Snapshot {
            uidvalidity: 7,
            uidnext: st.0,
            highest_modseq: st.1,
            messages: st.2.values().map(|(m, _)| m.clone()).collect(),
        }
    }
    fn read(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
        let st = self.state.lock().unwrap();
        st.2.get(&uid)
            .map(|(_, b)| b.clone())
            .ok_or(StoreError::NoSuchMessage(uid))
    }
    fn set_flags(&self, uid: u32, flags: Flags) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap();
        st.1 += 1;
        let modseq = st.1;
        if let Some((m, _)) = st.2.get_mut(&uid) {
            m.flags = flags;
            m.modseq = modseq;
        }
        drop(st);
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }
    fn expunge(&self, uids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let mut st = self.state.lock().unwrap();
        st.1 += 1;
        let removed = uids.iter().filter(|u| st.2.remove(u).is_some()).copied().collect();
        Ok(removed)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// In-memory mailboxes: INBOX and named folders.
#[derive(Debug)]
pub struct MemMailboxes {
    inbox: Arc<MemStore>,
    folders: Mutex<BTreeMap<String, (Arc<MemStore>, Option<SpecialUse>)>>,
    subscribed: Mutex<Vec<String>>,
}

impl MemMailboxes {
    fn new(inbox: Arc<MemStore>) -> Self {
        let mut f = BTreeMap::new();
        for (n, su) in [
            ("Sent", Some(SpecialUse::Sent)),
            ("Trash", Some(SpecialUse::Trash)),
            ("Archive", Some(SpecialUse::Archive)),
            ("Archive/2026", None),
        ] {
            f.insert(n.to_string(), (Arc::new(MemStore::empty()), su));
        }
        MemMailboxes {
            inbox,
            folders: Mutex::new(f),
            subscribed: Mutex::new(Vec::new()),
        }
    }
}

impl Mailboxes for MemMailboxes {
    fn inbox(&self) -> Arc<dyn MailStore> {
        self.inbox.clone()
    }
    fn list(&self) -> Vec<FolderInfo> {
        let mut v = vec![FolderInfo {
            name: "INBOX".into(),
            special_use: None,
        }];
        v.extend(self.folders.lock().unwrap().iter().map(|(n, (_, su))| FolderInfo {
            name: n.clone(),
            special_use: *su,
        }));
        v
    }
    fn open(&self, name: &str) -> Option<Arc<dyn MailStore>> {
        let name = normalize(name).ok()?;
        if name == "INBOX" {
            return Some(self.inbox.clone());
        }
        let f = self.folders.lock().unwrap();
        f.get(&name).map(|(m, _)| m.clone() as Arc<dyn MailStore>)
    }
    fn special(&self, su: SpecialUse) -> Option<Arc<dyn MailStore>> {
        let f = self.folders.lock().unwrap();
        f.values()
            .find(|(_, s)| *s == Some(su))
            .map(|(m, _)| m.clone() as Arc<dyn MailStore>)
    }
    fn create(&self, name: &str) -> Result<(), FolderError> {
        let name = normalize(name)?;
        let mut f = self.folders.lock().unwrap();
        if name == "INBOX" || f.contains_key(&name) || f.len() > 32 {
            return Err(FolderError::Exists(name));
        }
        f.insert(name, (Arc::new(MemStore::empty()), None));
        Ok(())
    }
    fn delete(&self, name: &str) -> Result<(), FolderError> {
        let name = normalize(name)?;
        self.folders
            .lock()
            .unwrap()
            .remove(&name)
            .map(|_| ())
            .ok_or(FolderError::NotFound(name))
    }
    fn rename(&self, from: &str, to: &str) -> Result<(), FolderError> {
        let (from, to) = (normalize(from)?, normalize(to)?);
        let mut f = self.folders.lock().unwrap();
        if f.contains_key(&to) || to == "INBOX" {
            return Err(FolderError::Exists(to));
        }
        let v = f.remove(&from).ok_or(FolderError::NotFound(from))?;
        f.insert(to, v);
        Ok(())
    }
    fn subscriptions(&self) -> Vec<String> {
        self.subscribed.lock().unwrap().clone()
    }
    fn set_subscribed(&self, name: &str, on: bool) -> Result<(), FolderError> {
        let name = normalize(name)?;
        let mut s = self.subscribed.lock().unwrap();
        s.retain(|n| n != &name);
        if on && s.len() < 32 {
            s.push(name);
        }
        Ok(())
    }
}

struct OneAccount(Arc<MemMailboxes>);

impl Accounts for OneAccount {
    fn login(&self, user: &str, password: &str) -> Option<Arc<dyn Mailboxes>> {
        (user == "bob" && password == "pw").then(|| self.0.clone() as Arc<dyn Mailboxes>)
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let store = Arc::new(MemStore::new());
    let mut s = Session::new(OneAccount(Arc::new(MemMailboxes::new(store.clone()))), 4096);
    if flags & 1 != 0 {
        s.receive(b"a LOGIN bob pw\r\n");
    }
    let mut out = s.take_output();
    for chunk in crate::chunks(data) {
        s.receive(chunk);
        if flags & 2 != 0 {
            s.mailbox_changed();
        }
        let more = s.take_output();
        if !more.is_empty() {
            assert!(more.ends_with(b"\r\n") || more.ends_with(b"+ "), "{more:?}");
        }
        out.extend_from_slice(&more);
        if s.is_closed() {
            s.receive(b"z NOOP\r\n");
            assert!(s.take_output().is_empty(), "output after close");
            break;
        }
        if out.len() > 1 << 20 {
            out.clear();
        }
    }
    let snap = store.snapshot();
    let uids: Vec<u32> = snap.messages.iter().map(|m| m.uid).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]));
    assert!(uids.iter().all(|&u| u < snap.uidnext));
}
