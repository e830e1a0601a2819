//! The outbound queue: the durable [`Spool`] on disk, an index of it in memory, and the
//! [`runner`] that delivers due messages. Its decisions (retry times, bounces, batching) are
//! the pure functions of [`schedule`].
//!
//! The index is the one source of truth while the node runs: the runner and `status` read
//! it, and every change goes to the spool first (fsynced) and then to the index. All methods
//! that touch the disk block; async callers run them on blocking threads.

pub mod runner;
pub mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::spool::{QueuedMessage, Spool};

/// What `status` shows about the queue.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    /// Messages queued.
    pub messages: usize,
    /// Messages being delivered right now.
    pub in_flight: usize,
    /// Seconds until the next scheduled attempt (if any message waits).
    pub next_attempt_in: Option<f64>,
}

#[derive(Debug, Default)]
struct Index {
    messages: BTreeMap<String, QueuedMessage>,
    in_flight: HashSet<String>,
}

/// One recipient of one queued message took it (its server said 250), as reported to the
/// watcher ([`Queue::watch_deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The spool id of the message.
    pub id: String,
    /// The recipient's address.
    pub recipient: String,
}

/// The outbound queue.
#[derive(Debug)]
pub struct Queue {
    spool: Spool,
    index: Mutex<Index>,
    wakeup: Notify,
    watcher: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Taken>>>,
}

impl Queue {
    /// Opens the spool at `dir` (see [`Spool::open`]) and indexes it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let spool = Spool::open(dir)?;
        let messages = spool
            .list()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        Ok(Queue {
            spool,
            index: Mutex::new(Index {
                messages,
                in_flight: HashSet::new(),
            }),
            wakeup: Notify::new(),
            watcher: Mutex::new(None),
        })
    }

    /// Reports every recipient that takes a message from now on (the list relay learns its
    /// acknowledgements here). One watcher at a time; a new one replaces the old.
    pub fn watch_deliveries(&self) -> tokio::sync::mpsc::UnboundedReceiver<Taken> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.watcher.lock().expect("watcher lock") = Some(tx);
        rx
    }

    /// Tells the watcher, if any, that `recipient` took message `id`.
    pub fn taken(&self, id: &str, recipient: &str) {
        if let Some(w) = self.watcher.lock().expect("watcher lock").as_ref() {
            let _ = w.send(Taken {
                id: id.to_string(),
                recipient: recipient.to_string(),
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("queue index lock")
    }

    /// Queues a message durably at time `now` and wakes the runner.
    pub fn enqueue(
        &self,
        identity: &str,
        from: &str,
        recipients: &[String],
        data: &[u8],
        now: f64,
    ) -> io::Result<QueuedMessage> {
        let m = self.spool.enqueue(identity, from, recipients, data, now)?;
        self.lock().messages.insert(m.id.clone(), m.clone());
        self.wakeup.notify_one();
        Ok(m)
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live state, at time `now`.
    pub fn status(&self, now: f64) -> QueueStatus {
        let ix = self.lock();
        QueueStatus {
            messages: ix.messages.len(),
            in_flight: ix.in_flight.len(),
            next_attempt_in: ix
                .messages
                .values()
                .filter(|m| !ix.in_flight.contains(&m.id))
                .map(|m| (m.next_attempt - now).max(0.0))
                .reduce(f64::min),
        }
    }

    /// Takes the messages due at `now` that no task is delivering (marking them in flight),
    /// and the time of the next attempt after them.
    pub fn take_due(&self, now: f64) -> (Vec<QueuedMessage>, Option<f64>) {
        self.take_due_where(now, usize::MAX, |_| true)
    }

    /// Like [`Queue::take_due`], but only messages that `wanted` accepts and at most `max` of
    /// them (oldest first). The next attempt time covers every message not taken.
    pub fn take_due_where(
        &self,
        now: f64,
        max: usize,
        wanted: impl Fn(&QueuedMessage) -> bool,
    ) -> (Vec<QueuedMessage>, Option<f64>) {
        let mut ix = self.lock();
        let Index {
            messages,
            in_flight,
        } = &mut *ix;
        let mut due = Vec::new();
        let mut next: Option<f64> = None;
        for m in messages.values() {
            if in_flight.contains(&m.id) {
                continue;
            }
            if m.next_attempt <= now && due.len() < max && wanted(m) {
                in_flight.insert(m.id.clone());
                due.push(m.clone());
            } else if m.next_attempt > now {
                next = Some(next.map_or(m.next_attempt, |n| n.min(m.next_attempt)));
            }
        }
        (due, next)
    }

    /// Marks a message as no longer in flight and wakes the runner.
    pub fn release(&self, id: &str) {
        self.lock().in_flight.remove(id);
        self.wakeup.notify_one();
    }

    /// Wakes the runner (a connection slot came free).
    pub fn wake(&self) {
        self.wakeup.notify_one();
    }

    /// Marks a message as no longer in flight without waking the runner (for messages left
    /// to a connection that will take them).
    pub fn release_quietly(&self, id: &str) {
        self.lock().in_flight.remove(id);
    }

    /// Durably records a message's new state.
    pub fn update(&self, m: &QueuedMessage) -> io::Result<()> {
        self.spool.update(m)?;
        if let Some(slot) = self.lock().messages.get_mut(&m.id) {
            *slot = m.clone();
        }
        Ok(())
    }

    /// Durably removes a message.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        self.spool.remove(id)?;
        self.lock().messages.remove(id);
        Ok(())
    }

    /// A queued message's bytes.
    pub fn data(&self, id: &str) -> io::Result<Vec<u8>> {
        self.spool.data(id)
    }

    /// Waits until something was queued or released.
    pub async fn changed(&self) {
        self.wakeup.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_messages_are_taken_once_and_index_follows_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let a = q
            .enqueue("alice", "a@x.onion", &["b@y.onion".into()], b"one", 100.0)
            .unwrap();
        let mut b = q
            .enqueue("alice", "a@x.onion", &["b@y.onion".into()], b"two", 100.0)
            .unwrap();
        b.next_attempt = 160.0;
        q.update(&b).unwrap();
        let (due, next) = q.take_due(120.0);
        assert_eq!(due.iter().map(|m| &m.id).collect::<Vec<_>>(), [&a.id]);
        assert_eq!(next, Some(160.0));
        assert!(q.take_due(120.0).0.is_empty(), "in flight: not taken twice");
        assert_eq!(
            q.status(120.0),
            QueueStatus {
                messages: 2,
                in_flight: 1,
                next_attempt_in: Some(40.0)
            }
        );
        q.remove(&a.id).unwrap();
        q.release(&a.id);
        assert_eq!(q.len(), 1);
        // A restart sees what the spool holds.
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.take_due(200.0).0, vec![b]);
    }
}
