//! The list engine: the async shell around [`Broadcast`]. It reads the ledger (verified,
//! through [`NodeLedger`]), signs posts, queues copies durably, stores deliveries, and feeds
//! the core the acknowledgements the queue reports and the timers it asks for.
//!
//! Posting (from submission, [`Lists::post`]): the latest verified height H (the newest
//! blocks walked now), the list with all its members at H (proven), the posting checks
//! ([`check::may_post`]), the list headers (List-Id, List-Post, List-Help per RFC 2919 and
//! RFC 2369), the signature ([`Post::sign`]), then one queued copy per other member to
//! `<list>+list@<onion>`.
//!
//! Receiving ([`Lists::receive`]): the signature ([`Post::from_wire`]), the node's latest
//! verified height L, the list at H and at L, the delivery checks ([`check::may_deliver`]),
//! then the core decides: deliver (once, deduplicated by post id, durably in the list's
//! folder `Lists/<list>` too) and relay. The SMTP 250 is given only after the delivery and the relay copies are
//! on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onionpost_ledger_client::{At, Ledger};
use onionpost_proto::onion::OnionAddress;
use tokio_util::sync::CancellationToken;

use super::address::{list_address, list_id, member_address};
use super::broadcast::{Broadcast, Input, Member, Output, PostId};
use super::check::{self, Refusal};
use super::folder::open_list_folder;
use super::post::Post;
use crate::clock::Clock;
use crate::context::{Context, Hosted};
use crate::delivery::inbound::{Annotations, Filing, SenderKeys, open_and_store};
use crate::e2e::E2e;
use crate::e2e::trust::Trust;
use crate::ledger::{LedgerError, NodeLedger};
use crate::queue::Queue;
use crate::smtp::reply::{Reply, reply};
use crate::store::DedupeKey;

/// The header a receiving node puts on a post it delivers: what it verified.
pub const VERIFIED_HEADER: &str = "Onionpost-List-Verified";

/// A copy in the queue: which post, from which of our members, to whom.
#[derive(Debug, Clone, Copy)]
struct Copy {
    post: PostId,
    from: Member,
    to: Member,
}

/// The copies in the queue, and delivery reports that came before their copy was recorded.
///
/// The queue may deliver a copy (and report it) before the task that queued it has written
/// it down here; both sides take this one lock, so a report finds its copy or is kept in
/// `early` for the queuing side to find.
#[derive(Debug, Default)]
struct Copies {
    queued: HashMap<String, Copy>,
    early: std::collections::VecDeque<String>,
}

impl Copies {
    /// Reports about messages that are not list copies pass through here too: keep the last
    /// ones only.
    const EARLY_KEPT: usize = 1024;

    /// Records the copy `id`; `true` if its delivery was already reported.
    fn record(&mut self, id: String, copy: Copy) -> bool {
        if let Some(i) = self.early.iter().position(|e| *e == id) {
            self.early.remove(i);
            return true;
        }
        self.queued.insert(id, copy);
        false
    }

    /// The copy `id` taken by its recipient, if it was recorded.
    fn taken(&mut self, id: &str) -> Option<Copy> {
        let copy = self.queued.remove(id);
        if copy.is_none() {
            if self.early.len() == Self::EARLY_KEPT {
                self.early.pop_front();
            }
            self.early.push_back(id.to_string());
        }
        copy
    }
}

/// What a member's copy of a post is opened with: the list checks' field, the post's
/// message (perhaps encrypted), and what the end-to-end stage needs to verify it.
struct Opening {
    verified: String,
    message: Vec<u8>,
    sender: Arc<SenderKeys>,
    trust: Option<Trust>,
}

/// What the engine keeps of a post while its relay may still send copies.
#[derive(Debug, Clone)]
struct Held {
    list: String,
    wire: Arc<Vec<u8>>,
}

/// Mail for lists: posting, receiving, relaying.
pub struct Lists {
    ledger: NodeLedger,
    ctx: Arc<Context>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    e2e: Arc<E2e>,
    core: Mutex<Broadcast>,
    copies: Mutex<Copies>,
    held: Mutex<HashMap<PostId, Held>>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Lists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lists")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

fn ledger_reply(e: &LedgerError) -> Reply {
    match e {
        LedgerError::NotConfigured => {
            reply(554, [5, 3, 5], format!("Error: list mail refused: {e}"))
        }
        e if e.is_transient() => reply(
            451,
            [4, 4, 3],
            format!("Error: the ledger gave no verified answer; try again later ({e})"),
        ),
        e => reply(
            451,
            [4, 3, 5],
            format!("Error: the ledger client needs its operator; try again later ({e})"),
        ),
    }
}

fn local_error(what: &str) -> Reply {
    tracing::error!("{what}");
    reply(
        451,
        [4, 3, 0],
        "Error: local storage error; try again later",
    )
}

/// Adds the list header fields at the end of a message's header.
fn with_list_headers(message: &[u8], list: &str) -> Vec<u8> {
    let fields = format!(
        "List-Id: {}\r\nList-Post: <mailto:{}>\r\nList-Help: <mailto:{}?subject=help>\r\n",
        list_id(list),
        list_address(list),
        list_address(list)
    );
    let split = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    let mut out = Vec::with_capacity(message.len() + fields.len());
    out.extend_from_slice(&message[..split]);
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(&message[split..]);
    out
}

impl Lists {
    /// The engine for the identities of `ctx`, queueing into `queue`, protecting posts and
    /// opening them with `e2e`.
    pub fn new(
        ledger: NodeLedger,
        ctx: Arc<Context>,
        queue: Arc<Queue>,
        clock: Arc<dyn Clock>,
        e2e: Arc<E2e>,
    ) -> Arc<Self> {
        let timeout = ledger.config().map_or(30.0, |c| c.relay_timeout_secs);
        Arc::new(Self {
            ledger,
            ctx,
            queue,
            clock,
            e2e,
            core: Mutex::new(Broadcast::new(timeout)),
            copies: Mutex::new(Copies::default()),
            held: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn window(&self) -> u64 {
        self.ledger
            .config()
            .map_or(crate::config::DEFAULT_HEIGHT_WINDOW, |c| c.height_window)
    }

    /// Posts a submitted (sanitized) message from `sender` to `list`.
    pub async fn post(&self, sender: &Hosted, list: &str, message: &[u8]) -> Result<(), Reply> {
        let client = self.ledger.client().map_err(|e| ledger_reply(&e))?;
        let me: Member = sender.identity.onion.public_key();
        // The newest certified membership, not one up to the refresh interval old: a member
        // added just before the post gets it once the next block certifies the change.
        let height = client
            .latest_height_now()
            .await
            .map_err(|e| ledger_reply(&e.into()))?;
        let at_h = client
            .list(list, At::Height(height))
            .await
            .map_err(|e| ledger_reply(&e.into()))?;
        let message = with_list_headers(message, list);
        check::may_post(list, at_h.value.as_ref(), height, &me, message.len())
            .map_err(|r| r.reply(list))?;
        let members = at_h
            .value
            .as_ref()
            .map(|l| l.members.clone())
            .unwrap_or_default();
        // One ciphertext for every member (or signed only, if one has no key); the size
        // limit applies to what goes on the wire.
        let message = self
            .e2e
            .protect_post(&sender.identity, &members, &message)
            .await?;
        check::may_post(list, at_h.value.as_ref(), height, &me, message.len())
            .map_err(|r| r.reply(list))?;
        let key = sender
            .identity
            .signing_key()
            .map_err(|e| local_error(&format!("reading the identity key: {e}")))?;
        let post = Post::sign(&key, list, height, message)
            .map_err(|e| reply(550, [5, 6, 0], format!("Error: {e}")))?;
        let id = post.id();
        let out = self
            .core()
            .handle(Input::Authored { id, me, members }, self.clock.now());
        let wire = Arc::new(post.to_wire());
        self.held.lock().expect("held").insert(
            id,
            Held {
                list: list.to_string(),
                wire: wire.clone(),
            },
        );
        let sends = out.len();
        self.execute(out).await?;
        tracing::info!(%list, height, sends, post = %hex::encode(&id[..8]), "list post queued");
        Ok(())
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Broadcast> {
        self.core.lock().expect("broadcast lock")
    }

    /// Checks a post that arrived for `recipients` (hosted here, each `(identity, list
    /// named by its address)`) and delivers and relays it; one result per recipient.
    pub async fn receive(
        &self,
        recipients: &[(Arc<Hosted>, String)],
        data: &[u8],
    ) -> Vec<Result<(), Reply>> {
        let all = |r: Reply| vec![Err(r); recipients.len()];
        let client = match self.ledger.client() {
            Ok(c) => c,
            Err(e) => return all(ledger_reply(&e)),
        };
        let post = match Post::from_wire(data) {
            Ok(p) => p,
            Err(e) => {
                let list = recipients.first().map_or("", |(_, l)| l.as_str());
                return all(Refusal::Signature(e.to_string()).reply(list));
            }
        };
        let read = async {
            let mut latest = client.latest_height().await?;
            if post.height > latest {
                // The author saw a newer block than we did: look for it now, not in a second.
                latest = client.sync().await?.height;
            }
            if post.height > latest {
                return Err(onionpost_ledger_client::Error::NotYetVerified {
                    asked: post.height,
                    latest,
                });
            }
            let at_h = client.list(&post.list, At::Height(post.height)).await?;
            let now = client.list(&post.list, At::Height(latest)).await?;
            Ok((latest, at_h.value, now.value))
        };
        let (latest, at_h, now) = match read.await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(list = %post.list, "deferring a post: {e}");
                return all(ledger_reply(&e.into()));
            }
        };
        // The author's OpenPGP keys, to verify (and decrypt) the post for each member here.
        let sender = match self.e2e.sender_keys(&post.message).await {
            Ok(s) => Arc::new(s),
            Err(r) => {
                tracing::warn!(list = %post.list, "deferring a post: {}", r.message);
                return all(r);
            }
        };
        let id = post.id();
        let wire = Arc::new(data.to_vec());
        let mut results = Vec::with_capacity(recipients.len());
        for (hosted, list) in recipients {
            let me: Member = hosted.identity.onion.public_key();
            let to = hosted.identity.name.as_str();
            if *list != post.list {
                results.push(Err(reply(
                    550,
                    [5, 7, 1],
                    format!(
                        "Error: list post refused (list check): sent to the address of {list} but signed for {}",
                        post.list
                    ),
                )));
                continue;
            }
            let claim = check::Claim {
                list,
                height: post.height,
                author: &post.author,
                size: post.message.len(),
            };
            let evidence = check::Evidence {
                at_h: at_h.as_ref(),
                latest,
                now: now.as_ref(),
                window: self.window(),
            };
            if let Err(r) = check::may_deliver(claim, &me, evidence) {
                tracing::warn!(%list, %to, check = r.check(), "list post refused");
                results.push(Err(r.reply(list)));
                continue;
            }
            let members = at_h.as_ref().map(|l| l.members.clone()).unwrap_or_default();
            self.held.lock().expect("held").insert(
                id,
                Held {
                    list: list.clone(),
                    wire: wire.clone(),
                },
            );
            let out = self.core().handle(
                Input::Received {
                    id,
                    me,
                    author: post.author,
                    members,
                },
                self.clock.now(),
            );
            tracing::info!(%list, %to, height = post.height, latest, post = %hex::encode(&id[..8]), "list post verified");
            let trust = match &*sender {
                SenderKeys::Ledger(k) if !k.history.is_empty() => {
                    Some(self.e2e.trust(&me, &k.identity, k.height).await)
                }
                _ => None,
            };
            let opening = Opening {
                verified: self.stamp(&post, latest),
                message: post.message.clone(),
                sender: sender.clone(),
                trust,
            };
            let r = self
                .execute_for(out, hosted.clone(), list, opening, id)
                .await;
            results.push(r);
        }
        self.changed.notify_one();
        results
    }

    /// The field that says what the list checks verified about a post.
    fn stamp(&self, post: &Post, latest: u64) -> String {
        format!(
            "{VERIFIED_HEADER}: list={}; author={}; height={}; still-member-at={latest}; signature=ok\r\n",
            post.list,
            OnionAddress::from_public_key(post.author).hostname(),
            post.height
        )
    }

    /// Runs outputs for a received post: the delivery to `hosted` and any sends.
    async fn execute_for(
        &self,
        out: Vec<Output>,
        hosted: Arc<Hosted>,
        list: &str,
        opening: Opening,
        id: PostId,
    ) -> Result<(), Reply> {
        let (deliver, sends): (Vec<Output>, Vec<Output>) = out
            .into_iter()
            .partition(|o| matches!(o, Output::Deliver { .. }));
        // Relay copies first: if the store then fails, the sender retries and the copies
        // are at worst sent twice (receivers drop duplicates); a stored post whose relay
        // was lost could not be repaired.
        self.execute(sends).await?;
        if deliver.is_empty() {
            tracing::info!("duplicate post dropped");
            return Ok(());
        }
        let key = DedupeKey(id[..16].try_into().expect("16 bytes"));
        let list = list.to_owned();
        let e2e = self.e2e.clone();
        // Opened (decrypted, verified) for this member and filed in the list's own folder
        // (created with its first post), off the async workers.
        let stored = tokio::task::spawn_blocking(move || {
            let folder = open_list_folder(&*hosted.mailboxes, &list)
                .map_err(|e| local_error(&format!("opening the folder of list {list}: {e}")))?;
            let filing = Filing {
                mailbox: &*folder,
                prefix: opening.verified.as_bytes(),
                dedupe: Some(key),
            };
            open_and_store(
                &hosted,
                &filing,
                &opening.message,
                &opening.sender,
                Annotations {
                    trust: opening.trust,
                    key_change: None,
                    gateway: None,
                },
                &e2e,
            )
        });
        match stored.await {
            Ok(r) => r,
            Err(e) => Err(local_error(&format!("store task: {e}"))),
        }
    }

    /// Queues the copies of `Send` outputs (durably, before returning).
    async fn execute(&self, out: Vec<Output>) -> Result<(), Reply> {
        // The bytes of every copy are taken now, before the first wait: meanwhile the timer
        // may find no copy outstanding and drop what is held.
        let sends: Vec<(PostId, Member, Member, Option<Held>)> = {
            let held = self.held.lock().expect("held");
            out.into_iter()
                .filter_map(|o| match o {
                    Output::Send { id, from, to } => Some((id, from, to, held.get(&id).cloned())),
                    Output::Deliver { .. } => None,
                })
                .collect()
        };
        let mut already_taken = Vec::new();
        for (id, from, to, held) in sends {
            let Some(held) = held else {
                tracing::error!(post = %hex::encode(&id[..8]), "no bytes held for a post to send");
                continue;
            };
            let ids = self.ctx.identities();
            let Some(sender) = ids.by_onion(&OnionAddress::from_public_key(from)).cloned() else {
                tracing::warn!("the sending identity is gone; copy not sent");
                continue;
            };
            let rcpt = member_address(&held.list, &OnionAddress::from_public_key(to));
            let (queue, name, addr, wire, now) = (
                self.queue.clone(),
                sender.identity.name.clone(),
                sender.identity.address(),
                held.wire.clone(),
                self.clock.now(),
            );
            let queued = tokio::task::spawn_blocking(move || {
                queue.enqueue(&name, &addr, &[rcpt], &wire, now)
            })
            .await;
            match queued {
                Ok(Ok(m)) => {
                    tracing::debug!(id = %m.id, "post copy queued");
                    let copy = Copy { post: id, from, to };
                    if self.copies.lock().expect("copies").record(m.id, copy) {
                        already_taken.push(copy);
                    }
                }
                Ok(Err(e)) => return Err(local_error(&format!("spooling a post copy: {e}"))),
                Err(e) => return Err(local_error(&format!("spool task: {e}"))),
            }
        }
        for c in already_taken {
            self.acked(c).await;
        }
        Ok(())
    }

    /// Tells the core that copy `c` was taken, and queues what follows from it.
    async fn acked(&self, c: Copy) {
        let out = self.core().handle(
            Input::Acked {
                id: c.post,
                me: c.from,
                to: c.to,
            },
            self.clock.now(),
        );
        if let Err(r) = Box::pin(self.execute(out)).await {
            tracing::warn!("copies after an acknowledgement not queued: {}", r.message);
        }
    }

    /// Feeds the core the queue's acknowledgements and its timers until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut taken = self.queue.watch_deliveries();
        loop {
            let wait = self
                .core()
                .next_deadline()
                .map_or(1.0, |d| (d - self.clock.now()).clamp(0.01, 1.0));
            tokio::select! {
                t = taken.recv() => {
                    let Some(t) = t else { return };
                    let copy = self.copies.lock().expect("copies").taken(&t.id);
                    if let Some(c) = copy {
                        self.acked(c).await;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs_f64(wait)) => {
                    let out = self.core().handle(Input::Tick, self.clock.now());
                    if !out.is_empty() {
                        tracing::info!(copies = out.len(), "relay not acknowledged in time; sending to the next member");
                    }
                    if let Err(r) = self.execute(out).await {
                        tracing::warn!("relay copies not queued: {}", r.message);
                    }
                    self.forget_finished();
                }
                () = self.changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Drops held bytes of posts whose relays are over and whose copies are all taken.
    fn forget_finished(&self) {
        let core = self.core();
        if core.pending_relays() > 0 {
            return;
        }
        drop(core);
        let copies = self.copies.lock().expect("copies");
        if copies.queued.is_empty() {
            self.held.lock().expect("held").clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_report_finds_its_copy_whichever_comes_first() {
        let c = Copy {
            post: [1; 32],
            from: [2; 32],
            to: [3; 32],
        };
        let mut copies = Copies::default();
        // Recorded, then reported.
        assert!(!copies.record("a".into(), c));
        assert_eq!(copies.taken("a").map(|x| x.to), Some([3; 32]));
        assert!(copies.queued.is_empty());
        // Reported before it was recorded: the recording side learns it was taken.
        assert!(copies.taken("b").is_none());
        assert!(copies.record("b".into(), c));
        assert!(copies.queued.is_empty() && copies.early.is_empty());
        // Reports of other mail are kept only up to the bound.
        for i in 0..Copies::EARLY_KEPT + 10 {
            assert!(copies.taken(&format!("other{i}")).is_none());
        }
        assert_eq!(copies.early.len(), Copies::EARLY_KEPT);
    }

    #[test]
    fn list_headers_go_at_the_end_of_the_header() {
        let m = with_list_headers(b"From: a\r\nSubject: s\r\n\r\nbody\r\n", "dev");
        let s = String::from_utf8(m).unwrap();
        assert!(
            s.starts_with("From: a\r\nSubject: s\r\nList-Id: <dev.list.invalid>\r\nList-Post: <mailto:dev@list.invalid>\r\n"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\nbody\r\n"), "{s}");
    }
}
