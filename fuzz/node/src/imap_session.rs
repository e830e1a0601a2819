//! The IMAP session ([`onionpost_node::imap::session`]) over an in-memory mail store.
//!
//! Input: one byte of flags (bit 0: log in before the fuzzed bytes; bit 1: report a mailbox
//! change after every chunk, as the edge does in IDLE), then chunks as [`crate::chunks`]
//! cuts them. The store starts with three messages. Properties checked: no panic; the output
//! ends with CRLF whenever there is output; the store's invariants hold afterwards (UIDs
//! below UIDNEXT, strictly increasing); nothing comes out after the session closed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use onionpost_node::imap::session::{Accounts, Session};
use onionpost_node::store::{
    DeliverOptions, Delivered, Flags, MailStore, MessageMeta, Snapshot, StoreError,
};
use tokio::sync::watch;

/// An in-memory mailbox (the fuzz loop must not touch the disk).
#[derive(Debug)]
pub struct MemStore {
    state: Mutex<(u32, BTreeMap<u32, (MessageMeta, Vec<u8>)>)>,
    changes: watch::Sender<u64>,
}

impl MemStore {
    fn new() -> Self {
        let s = MemStore {
            state: Mutex::new((1, BTreeMap::new())),
            changes: watch::channel(0).0,
        };
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
        let meta = MessageMeta {
            uid,
            flags: opts.flags,
            size: bytes.len() as u64,
            internal_date: opts.internal_date.unwrap_or(1_800_000_000),
        };
        st.1.insert(uid, (meta, bytes.to_vec()));
        Ok(Delivered::Stored(uid))
    }
    fn snapshot(&self) -> Snapshot {
        let st = self.state.lock().unwrap();
        Snapshot {
            uidvalidity: 7,
            uidnext: st.0,
            messages: st.1.values().map(|(m, _)| m.clone()).collect(),
        }
    }
    fn read(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
        let st = self.state.lock().unwrap();
        st.1.get(&uid)
            .map(|(_, b)| b.clone())
            .ok_or(StoreError::NoSuchMessage(uid))
    }
    fn set_flags(&self, uid: u32, flags: Flags) -> Result<(), StoreError> {
        if let Some((m, _)) = self.state.lock().unwrap().1.get_mut(&uid) {
            m.flags = flags;
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }
    fn expunge(&self, uids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let mut st = self.state.lock().unwrap();
        let removed = uids.iter().filter(|u| st.1.remove(u).is_some()).copied().collect();
        Ok(removed)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

struct OneAccount(Arc<MemStore>);

impl Accounts for OneAccount {
    fn login(&self, user: &str, password: &str) -> Option<Arc<dyn MailStore>> {
        (user == "bob" && password == "pw").then(|| self.0.clone() as Arc<dyn MailStore>)
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let store = Arc::new(MemStore::new());
    let mut s = Session::new(OneAccount(store.clone()), 4096);
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
