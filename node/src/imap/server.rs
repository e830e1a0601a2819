//! The tokio edge of the IMAP server: one task per connection shuttling bytes between the
//! socket and a [`Session`], waking IDLE sessions when their mailbox changes.
//!
//! IDLE is pushed, not polled: every mailbox has a watch channel that the store bumps right
//! after a change is durable (a delivery's fsyncs, a flag rename, an expunge), and an idling
//! connection waits on the channel of the mailbox it has selected.
//!
//! The session reads and writes the mailbox (the [`MailStore`](crate::store::MailStore) seam
//! blocks on the disk: reads, renames, fsyncs), so every call into it runs on tokio's blocking
//! pool; a slow disk then stalls only this connection, never the async workers that serve
//! the others.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session::{Accounts, Session};
use crate::store::MailStore;

/// RFC 3501 §5.4: the autologout timer is at least 30 minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a connection over the listener's cap is sent.
pub const BUSY: &[u8] = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n";

type Shared = Arc<dyn Accounts + Send + Sync>;

/// How many spilled chunks of output (each about
/// [`SPILL_BYTES`](super::session::SPILL_BYTES)) may wait for the socket
/// before the session waits: the memory a connection holds stays bounded.
const SPILL_QUEUE: usize = 4;

/// Runs `f` on the session on a blocking thread and gives the session back. Output the
/// session spills meanwhile is written to `stream` as it comes, so the client reads a large
/// answer while the rest is being made.
async fn blocking<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut session: Session<Shared>,
    f: impl FnOnce(&mut Session<Shared>) + Send + 'static,
) -> std::io::Result<Session<Shared>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(SPILL_QUEUE);
    let work = tokio::task::spawn_blocking(move || {
        session.set_spill(Some(Box::new(move |chunk| tx.blocking_send(chunk).is_ok())));
        f(&mut session);
        // Drops the sender: the loop below ends.
        session.set_spill(None);
        session
    });
    while let Some(chunk) = rx.recv().await {
        // On an error the receiver is dropped with this future, the session's next spill
        // fails and it closes.
        stream.write_all(&chunk).await?;
    }
    work.await.map_err(std::io::Error::other)
}

/// Serves one IMAP connection until the client logs out, goes silent, or `shutdown`.
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    accounts: Shared,
    max_literal: u32,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut session = Session::new(accounts, max_literal);
    // The selected mailbox and the receiver of its changes.
    let mut watched: Option<(Arc<dyn MailStore>, watch::Receiver<u64>)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let out = session.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if session.is_closed() {
            return Ok(());
        }
        let selected = session.selected_store();
        let same = match (selected, watched.as_ref()) {
            (Some(a), Some((b, _))) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // Subscribed when the mailbox is selected, so a change between the SELECT and a
            // later IDLE wakes that IDLE at once (the session then reports what it missed).
            watched = selected.map(|m| (m.clone(), m.subscribe()));
        }
        let idling = session.is_idling();
        tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => {
                    let bytes = buf[..n].to_vec();
                    session = blocking(&mut stream, session, move |s| s.receive(&bytes)).await?;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => session.timeout(),
            },
            Ok(()) = async { watched.as_mut().expect("checked").1.changed().await }, if idling && watched.is_some() => {
                session = blocking(&mut stream, session, |s| s.mailbox_changed()).await?;
            }
            () = shutdown.cancelled() => session.shutdown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        DeliverOptions, Flags, FolderError, FolderInfo, Mailboxes, Maildir, SpecialUse, StoreError,
    };
    use std::sync::{Condvar, Mutex};
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    /// A mailbox whose reads block until the test opens the gate (a disk that hangs).
    #[derive(Debug)]
    struct SlowDisk {
        inner: Maildir,
        open: Mutex<bool>,
        gate: Condvar,
    }

    impl MailStore for SlowDisk {
        fn deliver(
            &self,
            b: &[u8],
            o: DeliverOptions,
        ) -> Result<crate::store::Delivered, StoreError> {
            self.inner.deliver(b, o)
        }
        fn snapshot(&self) -> crate::store::Snapshot {
            self.inner.snapshot()
        }
        fn read(&self, uid: u32) -> Result<Vec<u8>, StoreError> {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.gate.wait(open).unwrap();
            }
            self.inner.read(uid)
        }
        fn set_flags(&self, uid: u32, f: Flags) -> Result<(), StoreError> {
            self.inner.set_flags(uid, f)
        }
        fn expunge(&self, uids: &[u32]) -> Result<Vec<u32>, StoreError> {
            self.inner.expunge(uids)
        }
        fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.subscribe()
        }
    }

    /// Just an INBOX (a unit test of the layer above the store).
    #[derive(Debug)]
    struct InboxOnly(Arc<SlowDisk>);
    impl Mailboxes for InboxOnly {
        fn inbox(&self) -> Arc<dyn MailStore> {
            self.0.clone()
        }
        fn list(&self) -> Vec<FolderInfo> {
            vec![FolderInfo {
                name: "INBOX".into(),
                special_use: None,
            }]
        }
        fn open(&self, name: &str) -> Option<Arc<dyn MailStore>> {
            name.eq_ignore_ascii_case("INBOX").then(|| self.inbox())
        }
        fn special(&self, _: SpecialUse) -> Option<Arc<dyn MailStore>> {
            None
        }
        fn create(&self, _: &str) -> Result<(), FolderError> {
            Err(FolderError::Inbox("created"))
        }
        fn delete(&self, _: &str) -> Result<(), FolderError> {
            Err(FolderError::Inbox("deleted"))
        }
        fn rename(&self, _: &str, _: &str) -> Result<(), FolderError> {
            Err(FolderError::Inbox("renamed"))
        }
        fn subscriptions(&self) -> Vec<String> {
            Vec::new()
        }
        fn set_subscribed(&self, _: &str, _: bool) -> Result<(), FolderError> {
            Ok(())
        }
    }

    struct Bob(Arc<InboxOnly>);
    impl Accounts for Bob {
        fn login(&self, u: &str, p: &str) -> Option<Arc<dyn Mailboxes>> {
            (u == "bob" && p == "pw").then(|| self.0.clone() as Arc<dyn Mailboxes>)
        }
    }

    async fn until(r: &mut BufReader<DuplexStream>, tag: &str) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l))
                .await
                .expect("a reply in time")
                .unwrap();
            all += &l;
            if l.starts_with(tag) {
                return all;
            }
        }
    }

    /// On a single-threaded runtime, one connection whose FETCH waits on a hung disk does not
    /// stop another connection from being served: the mailbox I/O is off the async worker.
    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_disk_stalls_only_its_own_connection() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(SlowDisk {
            inner: Maildir::open(dir.path(), None).unwrap(),
            open: Mutex::new(false),
            gate: Condvar::new(),
        });
        disk.deliver(b"Subject: x\r\n\r\nbody\r\n", DeliverOptions::default())
            .unwrap();
        let accounts: Shared = Arc::new(Bob(Arc::new(InboxOnly(disk.clone()))));
        let stop = CancellationToken::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (c, s) = tokio::io::duplex(1 << 16);
            let (a, st) = (accounts.clone(), stop.clone());
            tokio::spawn(async move {
                let _ = handle(s, a, 1 << 20, &st).await;
            });
            clients.push(BufReader::new(c));
        }
        let (mut one, mut two) = (clients.remove(0), clients.remove(0));
        // Whatever happens, the hung read ends with the test (or the runtime never stops).
        struct OpenOnDrop(Arc<SlowDisk>);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                *self.0.open.lock().unwrap() = true;
                self.0.gate.notify_all();
            }
        }
        let _guard = OpenOnDrop(disk.clone());
        one.get_mut()
            .write_all(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n")
            .await
            .unwrap();
        until(&mut one, "b OK").await;
        one.get_mut()
            .write_all(b"c FETCH 1 BODY[]\r\n")
            .await
            .unwrap();
        // `one` is now stuck in its FETCH; `two` is still served.
        two.get_mut()
            .write_all(b"x LOGIN bob pw\r\ny NOOP\r\n")
            .await
            .unwrap();
        assert!(until(&mut two, "y ").await.contains("y OK"));
        *disk.open.lock().unwrap() = true;
        disk.gate.notify_all();
        assert!(until(&mut one, "c ").await.contains("body"));
    }
}
