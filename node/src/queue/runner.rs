//! The queue runner: takes due messages, routes each recipient ([`route`]), protects each
//! copy end to end ([`E2e::protect`]: signed, encrypted when every recipient's key is bound),
//! delivers over a [`Transport`] with the SMTP client (or to identities of this node through
//! the inbound stages), records the outcome with [`schedule::after_attempt`], and puts DSNs
//! into the sender's own mailbox.
//!
//! A failed attempt is never lost: the spool is updated (fsynced) before the message is
//! released, and every error path leaves the message queued for its next attempt. A spool
//! record whose message file is missing is reported to the sender and removed, instead of
//! being retried forever.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Queue;
use super::schedule::{self, Job, RetryPolicy, RouteKey};
use crate::clock::Clock;
use crate::context::Context;
use crate::delivery::inbound::Inbound;
use crate::delivery::route::{Route, invalid_destination, route};
use crate::e2e::E2e;
use crate::hosting::fallback::{self, Fallback};
use crate::hosting::sender;
use crate::message::{FailedRecipient, build_dsn};
use crate::smtp::client::{self, RcptOutcome, Transaction};
use crate::smtp::reply::EnhancedCode;
use crate::spool::QueuedMessage;
use crate::store::{DeliverOptions, Quota};
use crate::transport::Transport;

/// Most messages taken for one connection at a time.
pub const MAX_BATCH: usize = 64;
/// Most messages one connection carries before it says QUIT (the next ones get a fresh one).
pub const MAX_PER_CONNECTION: usize = 1000;
/// How long opening a connection (Tor circuit and stream included) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client waits for any one reply or write.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The name every identity gives in EHLO: the same for all, so it names neither the host
/// nor the identity (which the message's From names anyway).
pub const HELO_NAME: &str = "localhost";

/// Delivers the queue.
pub struct Runner<T: Transport> {
    queue: Arc<Queue>,
    ctx: Arc<Context>,
    inbound: Inbound,
    transport: Arc<T>,
    clock: Arc<dyn Clock>,
    e2e: Arc<E2e>,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    /// Open connections per route.
    open: Mutex<HashMap<RouteKey, usize>>,
    per_destination: usize,
    /// Where mail goes when a recipient's onion stays unreachable (none: nowhere).
    hosts: Option<Fallback>,
}

impl<T: Transport> Runner<T> {
    /// A runner for `queue`, sending over `transport`, delivering to identities of this
    /// node through `inbound`, protecting every copy with `e2e`, and going to recipients'
    /// mailbox hosts as `hosts` says.
    pub fn new(
        queue: Arc<Queue>,
        ctx: Arc<Context>,
        inbound: Inbound,
        transport: Arc<T>,
        clock: Arc<dyn Clock>,
        e2e: Arc<E2e>,
        hosts: Option<Fallback>,
    ) -> Arc<Self> {
        let q = ctx.config().queue.clone();
        let concurrency = q.concurrency.max(1);
        Arc::new(Runner {
            policy: RetryPolicy::from(&q),
            inbound,
            queue,
            ctx,
            transport,
            clock,
            e2e,
            slots: Arc::new(Semaphore::new(concurrency)),
            open: Mutex::new(HashMap::new()),
            per_destination: q.connections_per_destination.max(1),
            hosts,
        })
    }

    fn open_on(&self, key: &RouteKey) -> usize {
        self.open
            .lock()
            .expect("open lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Delivers until `shutdown` is cancelled; attempts already started are tracked by
    /// `tasks` so the caller can wait for them to finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            let ids = self.ctx.identities();
            let is_local = |o: &OnionAddress| ids.by_onion(o).is_some();
            // Messages for a route whose connections are all open stay queued: those
            // connections take them when they are done with what they carry.
            let (due, next) = self.queue.take_due_where(now, usize::MAX, |m| {
                schedule::route_key(m, is_local)
                    .is_none_or(|k| self.open_on(&k) < self.per_destination)
            });
            let (jobs, left) = schedule::plan_jobs(
                due,
                is_local,
                |k| self.per_destination.saturating_sub(self.open_on(k)),
                MAX_BATCH,
            );
            for m in left {
                self.queue.release_quietly(&m.id);
            }
            for job in jobs {
                let permit = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.expect("semaphore open"),
                    () = shutdown.cancelled() => {
                        for id in job_ids(&job) {
                            self.queue.release(&id);
                        }
                        continue;
                    }
                };
                if let Job::Batch { key, .. } = &job {
                    *self
                        .open
                        .lock()
                        .expect("open lock")
                        .entry(key.clone())
                        .or_default() += 1;
                }
                let this = self.clone();
                let (stop, ids) = (shutdown.clone(), job_ids(&job));
                let span = tracing::info_span!("deliver", first = %ids[0], n = ids.len());
                tasks.spawn(
                    async move {
                        match job {
                            Job::Batch { key, messages } => {
                                this.connection(&key, messages, &stop).await;
                                let mut open = this.open.lock().expect("open lock");
                                if let Some(n) = open.get_mut(&key) {
                                    *n -= 1;
                                    if *n == 0 {
                                        open.remove(&key);
                                    }
                                }
                            }
                            Job::Single(m) => {
                                this.single(m).await;
                                for id in ids {
                                    this.queue.release(&id);
                                }
                            }
                        }
                        drop(permit);
                        // A route slot is free: due messages left for it may start now.
                        this.queue.wake();
                    }
                    .instrument(span),
                );
            }
            let wait = next.map_or(1.0, |t| (t - self.clock.now()).clamp(0.01, 1.0));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                () = self.queue.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Re-reads a message (the listing may be stale) with its bytes. A missing message file
    /// is reported to the sender and the record removed: `None` then, as for a message that
    /// is no longer queued.
    async fn load(&self, listed: &QueuedMessage) -> Option<(QueuedMessage, Vec<u8>)> {
        let q = self.queue.clone();
        let id = listed.id.clone();
        let data = tokio::task::spawn_blocking(move || q.data(&id)).await;
        match data {
            Ok(Ok(d)) => Some((listed.clone(), d)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(id = %listed.id, "queued message file is missing; bouncing");
                let mut m = listed.clone();
                let mut failed = Vec::new();
                for r in m.recipients.iter_mut().filter(|r| !r.done) {
                    r.done = true;
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        status: EnhancedCode([5, 3, 0]),
                        diagnostic: "the queued copy of this message was lost from the \
                                     sender's spool (its file is missing); please send it again"
                            .into(),
                    });
                }
                self.finish(m, b"", failed).await;
                None
            }
            Ok(Err(e)) => {
                tracing::error!(id = %listed.id, "reading queued message: {e}; will retry");
                None
            }
            Err(e) => {
                tracing::error!("spool read task: {e}");
                None
            }
        }
    }

    /// The copy of `data` for `rcpts` as it goes out (see [`E2e::protect`]); `Err` is the
    /// outcome of every one of them.
    async fn protect(
        &self,
        m: &QueuedMessage,
        rcpts: &[String],
        data: &[u8],
    ) -> Result<Vec<u8>, RcptOutcome> {
        let Some(sender) = self.ctx.identities().by_name(&m.identity).cloned() else {
            return Err(RcptOutcome::Unreachable(
                "the sending identity is gone".into(),
            ));
        };
        self.e2e
            .protect(&sender.identity, rcpts, data)
            .await
            .map_err(RcptOutcome::Refused)
    }

    fn sender_onion(&self, m: &QueuedMessage) -> Option<OnionAddress> {
        self.ctx
            .identities()
            .by_name(&m.identity)
            .map(|h| h.identity.onion)
    }

    /// The sending identity was deleted: its mail cannot be sent (no key) and a bounce has
    /// nowhere to go. Drops the message, loudly.
    async fn orphaned(&self, m: &QueuedMessage) {
        tracing::error!(id = %m.id, identity = %m.identity, "sending identity is gone; dropping its queued message");
        let q = self.queue.clone();
        let id = m.id.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || q.remove(&id)).await {
            tracing::error!("removing orphaned message: {e}");
        }
    }

    async fn connect(
        &self,
        onion: &OnionAddress,
        sender: &OnionAddress,
    ) -> Result<client::Client<T::Stream>, client::ConnectError> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, self.transport.connect(onion, 25, sender))
                .await
                .map_err(|_| client::ClientError::Timeout)?
                .map_err(client::ClientError::Io)?;
        client::Client::connect(stream, HELO_NAME, REPLY_TIMEOUT).await
    }

    /// The sending identity's key (read off the async workers), or why not.
    async fn signing_key(
        &self,
        m: &QueuedMessage,
    ) -> Result<ed25519_consensus::SigningKey, String> {
        let h = self
            .ctx
            .identities()
            .by_name(&m.identity)
            .cloned()
            .ok_or("the sending identity is gone")?;
        tokio::task::spawn_blocking(move || h.identity.signing_key())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the sending identity's key: {e}"))
    }

    /// The recipients' onion could not be reached (`e`): once the message has waited long
    /// enough, the copy goes to one of their mailbox hosts instead. `None`: not (yet) for
    /// hosts; the connection failure is the outcome.
    async fn to_hosts(
        &self,
        m: &QueuedMessage,
        (onion, sender): (&OnionAddress, &OnionAddress),
        e: &client::ConnectError,
        rcpts: &[String],
        wire: &[u8],
    ) -> Option<Vec<RcptOutcome>> {
        let f = self.hosts.as_ref()?;
        if !matches!(e, client::ConnectError::Client(_)) || !f.applies(m.created, self.clock.now())
        {
            return None;
        }
        let hosts = match f.hosts(onion, wire).await {
            Ok(h) => h,
            Err(why) => return Some(vec![RcptOutcome::Unreachable(why); rcpts.len()]),
        };
        let key = match self.signing_key(m).await {
            Ok(k) => k,
            Err(why) => return Some(vec![RcptOutcome::Unreachable(why); rcpts.len()]),
        };
        let mut answers = Vec::new();
        for host in hosts {
            // Signed for this host, so that its per-sender quota counts this identity.
            let copy = sender::attach(&key, &host.public_key(), &onion.public_key(), wire);
            let o = match self.connect(&host, sender).await {
                Ok(mut c) => {
                    let o = c.send(&m.from, rcpts, &copy).await;
                    c.quit().await;
                    o.unwrap_or_else(|e| vec![e.outcome(); rcpts.len()])
                }
                Err(e) => vec![e.outcome(); rcpts.len()],
            };
            match fallback::taken(&o) {
                Ok(()) => {
                    tracing::info!(id = %m.id, %host, "delivered to mailbox host");
                    return Some(o);
                }
                Err(why) => answers.push(format!("{}: {why}", host.hostname())),
            }
        }
        Some(fallback::not_taken(onion, &answers, rcpts.len()))
    }

    /// Ordinary e-mail: the copy goes to the configured gateway's onion, signed by the
    /// sending identity for that gateway and these recipients (`gateway::auth`). It is not
    /// protected end to end: the OpenPGP key is bound to the onion identity and a signature
    /// by it would tell the outside world which identity is behind the public address.
    async fn to_gateway(
        &self,
        m: &QueuedMessage,
        (gateway, sender): (&OnionAddress, &OnionAddress),
        rcpts: &[String],
        data: &[u8],
    ) -> Vec<RcptOutcome> {
        let key = match self.signing_key(m).await {
            Ok(k) => k,
            Err(why) => return vec![RcptOutcome::Unreachable(why); rcpts.len()],
        };
        let now = self.clock.now().max(0.0) as u64;
        let mut out = Vec::with_capacity(rcpts.len());
        // One signed transaction per chunk: the signature names its envelope recipients,
        // and a gateway takes at least this many in one transaction.
        for chunk in rcpts.chunks(crate::gateway::auth::RECIPIENTS_PER_COPY) {
            let copy = crate::gateway::auth::attach(&key, &gateway.public_key(), chunk, now, data);
            out.extend(match self.connect(gateway, sender).await {
                Ok(mut c) => {
                    let o = c
                        .send(&m.from, chunk, &copy)
                        .await
                        .unwrap_or_else(|e| vec![e.outcome(); chunk.len()]);
                    c.quit().await;
                    o
                }
                Err(e) => vec![e.outcome(); chunk.len()],
            });
        }
        out
    }

    /// One connection for a route: sends `messages`, then whatever else becomes due for the
    /// same route, until nothing is left (or the connection breaks, or has carried
    /// [`MAX_PER_CONNECTION`] messages, or the node shuts down).
    async fn connection(
        &self,
        key: &RouteKey,
        messages: Vec<QueuedMessage>,
        stop: &CancellationToken,
    ) {
        let (identity, onion) = key;
        let mut conn: Option<client::Client<T::Stream>> = None;
        let mut carried = 0;
        let mut batch = messages;
        loop {
            let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
            let broken = self.send_batch(&mut conn, onion, batch).await;
            carried += ids.len();
            for id in &ids {
                self.queue.release_quietly(id);
            }
            if broken || stop.is_cancelled() || carried >= MAX_PER_CONNECTION {
                break;
            }
            let ids_now = self.ctx.identities();
            let (more, _) = self.queue.take_due_where(self.clock.now(), MAX_BATCH, |m| {
                schedule::route_key(m, |o| ids_now.by_onion(o).is_some()).as_ref() == Some(key)
            });
            if more.is_empty() {
                break;
            }
            batch = more;
        }
        if let Some(c) = conn {
            c.quit().await;
        }
        tracing::debug!(%identity, %onion, carried, "connection closed");
    }

    /// Sends a batch over `conn` (connecting first if needed) and records every outcome.
    /// Returns whether the connection is unusable now.
    async fn send_batch(
        &self,
        conn: &mut Option<client::Client<T::Stream>>,
        onion: &OnionAddress,
        batch: Vec<QueuedMessage>,
    ) -> bool {
        let mut loaded = Vec::new();
        for listed in batch {
            let Some((m, data)) = self.load(&listed).await else {
                continue;
            };
            if self.sender_onion(&m).is_none() {
                self.orphaned(&m).await;
                continue;
            }
            loaded.push((m, data));
        }
        let Some(sender) = loaded.first().and_then(|(m, _)| self.sender_onion(m)) else {
            return false;
        };
        let pending = |m: &QueuedMessage| -> (Vec<usize>, Vec<String>) {
            let idx: Vec<usize> = (0..m.recipients.len())
                .filter(|&i| !m.recipients[i].done)
                .collect();
            let rcpts = idx
                .iter()
                .map(|&i| m.recipients[i].address.clone())
                .collect();
            (idx, rcpts)
        };
        let mut plan = Vec::new();
        let mut kept = Vec::new();
        // Each copy protected for its recipients; one that cannot be (its keys unknown now)
        // is not sent and stays queued.
        for (m, data) in loaded {
            let (idx, rcpts) = pending(&m);
            match self.protect(&m, &rcpts, &data).await {
                Ok(wire) => {
                    plan.push((idx, rcpts, wire));
                    kept.push((m, data));
                }
                Err(o) => {
                    let outcomes = idx.iter().map(|&i| (i, o.clone())).collect();
                    self.record(m, &data, outcomes).await;
                }
            }
        }
        let loaded = kept;
        if loaded.is_empty() {
            return false;
        }
        if conn.is_none() {
            match self.connect(onion, &sender).await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    for ((m, data), (idx, rcpts, wire)) in loaded.into_iter().zip(plan) {
                        let o = self.to_hosts(&m, (onion, &sender), &e, &rcpts, &wire).await;
                        let o = o.unwrap_or_else(|| vec![e.outcome(); idx.len()]);
                        self.record(m, &data, idx.into_iter().zip(o).collect())
                            .await;
                    }
                    return true;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let txs: Vec<Transaction> = loaded
            .iter()
            .zip(&plan)
            .map(|((m, _), (_, rcpts, wire))| Transaction {
                from: &m.from,
                recipients: rcpts,
                data: wire,
            })
            .collect();
        let (results, err) = c.send_many(&txs).await;
        drop(txs);
        if let Some(e) = &err {
            tracing::info!(%onion, "connection broke: {e}");
            *conn = None;
        }
        for (((m, data), (idx, _, _)), outcomes) in loaded.into_iter().zip(plan).zip(results) {
            self.record(m, &data, idx.into_iter().zip(outcomes).collect())
                .await;
        }
        err.is_some()
    }

    /// One message, any mix of destinations: each group of recipients by route.
    async fn single(&self, listed: QueuedMessage) {
        let Some((m, data)) = self.load(&listed).await else {
            return;
        };
        let Some(sender) = self.sender_onion(&m) else {
            self.orphaned(&m).await;
            return;
        };
        let ids = self.ctx.identities();
        let gateway = self.ctx.config().gateway.as_ref().and_then(|g| g.address());
        let mut groups: BTreeMap<Route, Vec<usize>> = BTreeMap::new();
        for (i, r) in m.recipients.iter().enumerate() {
            if !r.done {
                groups
                    .entry(route(&r.address, &ids, gateway.as_ref()))
                    .or_default()
                    .push(i);
            }
        }
        let mut results = Vec::new();
        for (route, idx) in groups {
            let rcpts: Vec<String> = idx
                .iter()
                .map(|&i| m.recipients[i].address.clone())
                .collect();
            let outcomes = match route {
                Route::Invalid => vec![RcptOutcome::Refused(invalid_destination()); rcpts.len()],
                // Each local recipient's copy protected for it alone.
                Route::Local => {
                    let mut out = Vec::new();
                    for r in &rcpts {
                        let one = std::slice::from_ref(r);
                        match self.protect(&m, one, &data).await {
                            Ok(wire) => out.extend(self.inbound.deliver_local(one, &wire).await),
                            Err(o) => out.push(o),
                        }
                    }
                    out
                }
                Route::Gateway(gw) => self.to_gateway(&m, (&gw, &sender), &rcpts, &data).await,
                Route::Onion(onion) => match self.protect(&m, &rcpts, &data).await {
                    Err(o) => vec![o; rcpts.len()],
                    Ok(wire) => match self.connect(&onion, &sender).await {
                        Err(e) => self
                            .to_hosts(&m, (&onion, &sender), &e, &rcpts, &wire)
                            .await
                            .unwrap_or_else(|| vec![e.outcome(); rcpts.len()]),
                        Ok(mut c) => {
                            let o = c
                                .send(&m.from, &rcpts, &wire)
                                .await
                                .unwrap_or_else(|e| vec![e.outcome(); rcpts.len()]);
                            c.quit().await;
                            o
                        }
                    },
                },
            };
            results.extend(idx.into_iter().zip(outcomes));
        }
        self.record(m, &data, results).await;
    }

    /// Applies an attempt's outcomes and persists the result.
    async fn record(&self, mut m: QueuedMessage, data: &[u8], outcomes: Vec<(usize, RcptOutcome)>) {
        let now = self.clock.now();
        for (i, o) in &outcomes {
            if matches!(o, RcptOutcome::Delivered)
                && let Some(r) = m.recipients.get(*i)
            {
                self.queue.taken(&m.id, &r.address);
            }
        }
        let failed = schedule::after_attempt(&mut m, outcomes, now, &self.policy, rand::random());
        if !schedule::is_finished(&m) {
            tracing::info!(id = %m.id, attempts = m.attempts, next_in = m.next_attempt - now, "rescheduled");
        }
        self.finish(m, data, failed).await;
    }

    /// Bounces what failed (first, so a crash cannot lose a bounce), then removes the
    /// message if it is finished or records its new state.
    async fn finish(&self, m: QueuedMessage, data: &[u8], failed: Vec<FailedRecipient>) {
        if !failed.is_empty() {
            self.bounce(&m, data, &failed).await;
        }
        let q = self.queue.clone();
        let done = schedule::is_finished(&m);
        let result =
            tokio::task::spawn_blocking(move || if done { q.remove(&m.id) } else { q.update(&m) })
                .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("recording the delivery attempt in the spool: {e}"),
            Err(e) => tracing::error!("spool task: {e}"),
        }
    }

    /// Puts a DSN into the sending identity's own mailbox.
    async fn bounce(&self, m: &QueuedMessage, data: &[u8], failed: &[FailedRecipient]) {
        let ids = self.ctx.identities();
        let Some(sender) = ids.by_name(&m.identity).cloned() else {
            tracing::error!(identity = %m.identity, "no mailbox for the bounce");
            return;
        };
        let dsn = build_dsn(
            &sender.identity.onion,
            &m.from,
            data,
            failed,
            m.created as i64,
            chrono::Utc::now(),
        );
        tracing::warn!(to = %m.from, failed = failed.len(), "bouncing");
        let opts = DeliverOptions {
            quota: Quota::Exempt,
            ..Default::default()
        };
        match tokio::task::spawn_blocking(move || sender.mailbox.deliver(&dsn, opts)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("storing the bounce: {e}"),
            Err(e) => tracing::error!("bounce task: {e}"),
        }
    }
}

/// The ids of a job's messages.
fn job_ids(job: &Job) -> Vec<String> {
    match job {
        Job::Batch { messages, .. } => messages.iter().map(|m| m.id.clone()).collect(),
        Job::Single(m) => vec![m.id.clone()],
    }
}
