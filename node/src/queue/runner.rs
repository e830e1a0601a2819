//! The queue runner: takes due messages, routes each recipient ([`route`]), delivers over a
//! [`Transport`] with the SMTP client (or to identities of this node through the inbound
//! stages), records the outcome with [`schedule::after_attempt`], and puts DSNs into the
//! sender's own mailbox.
//!
//! A failed attempt is never lost: the spool is updated (fsynced) before the message is
//! released, and every error path leaves the message queued for its next attempt. A spool
//! record whose message file is missing is reported to the sender and removed, instead of
//! being retried forever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Queue;
use super::schedule::{self, Job, RetryPolicy};
use crate::clock::Clock;
use crate::context::Context;
use crate::delivery::inbound::Inbound;
use crate::delivery::route::{Route, invalid_destination, route};
use crate::message::{FailedRecipient, build_dsn};
use crate::smtp::client::{self, RcptOutcome};
use crate::smtp::reply::EnhancedCode;
use crate::spool::QueuedMessage;
use crate::store::{DeliverOptions, Quota};
use crate::transport::Transport;

/// Most messages sent over one SMTP connection in a row.
pub const MAX_BATCH: usize = 64;
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
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    concurrency: usize,
}

impl<T: Transport> Runner<T> {
    /// A runner for `queue`, sending over `transport`.
    pub fn new(
        queue: Arc<Queue>,
        ctx: Arc<Context>,
        transport: Arc<T>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let q = &ctx.config().queue;
        let concurrency = q.concurrency.max(1);
        Arc::new(Runner {
            policy: RetryPolicy::from(q),
            inbound: Inbound::new(ctx.clone()),
            queue,
            ctx,
            transport,
            clock,
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        })
    }

    /// Delivers until `shutdown` is cancelled; attempts already started are tracked by
    /// `tasks` so the caller can wait for them to finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            let (due, next) = self.queue.take_due(now);
            let ids = self.ctx.identities();
            let jobs = schedule::plan_jobs(
                due,
                |o| ids.by_onion(o).is_some(),
                self.concurrency,
                MAX_BATCH,
            );
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
                let this = self.clone();
                let span = tracing::info_span!("deliver", first = %job_ids(&job)[0], n = job_ids(&job).len());
                tasks.spawn(
                    async move {
                        let ids = job_ids(&job);
                        match job {
                            Job::Batch { onion, messages } => this.batch(onion, messages).await,
                            Job::Single(m) => this.single(m).await,
                        }
                        for id in ids {
                            this.queue.release(&id);
                        }
                        drop(permit);
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

    /// Several messages from one identity to one onion over one connection.
    async fn batch(&self, onion: OnionAddress, messages: Vec<QueuedMessage>) {
        let mut conn: Option<client::Client<T::Stream>> = None;
        let mut broken: Option<RcptOutcome> = None;
        for listed in messages {
            let Some((m, data)) = self.load(&listed).await else {
                continue;
            };
            let Some(sender) = self.sender_onion(&m) else {
                self.orphaned(&m).await;
                continue;
            };
            let idx: Vec<usize> = (0..m.recipients.len())
                .filter(|&i| !m.recipients[i].done)
                .collect();
            let rcpts: Vec<String> = idx
                .iter()
                .map(|&i| m.recipients[i].address.clone())
                .collect();
            if conn.is_none() && broken.is_none() {
                match self.connect(&onion, &sender).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => broken = Some(e.outcome()),
                }
            }
            let outcomes = match (&mut conn, &broken) {
                (Some(c), _) => match c.send(&m.from, &rcpts, &data).await {
                    Ok(o) => o,
                    Err(e) => {
                        conn = None;
                        let o = e.outcome();
                        broken = Some(o.clone());
                        vec![o; rcpts.len()]
                    }
                },
                (None, Some(o)) => vec![o.clone(); rcpts.len()],
                (None, None) => unreachable!("either connected or broken"),
            };
            self.record(m, &data, idx.into_iter().zip(outcomes).collect())
                .await;
        }
        if let Some(c) = conn {
            c.quit().await;
        }
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
        let mut groups: BTreeMap<Route, Vec<usize>> = BTreeMap::new();
        for (i, r) in m.recipients.iter().enumerate() {
            if !r.done {
                groups.entry(route(&r.address, &ids)).or_default().push(i);
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
                Route::Local => self.inbound.deliver_local(&rcpts, &data).await,
                Route::Onion(onion) => match self.connect(&onion, &sender).await {
                    Err(e) => vec![e.outcome(); rcpts.len()],
                    Ok(mut c) => {
                        let o = c
                            .send(&m.from, &rcpts, &data)
                            .await
                            .unwrap_or_else(|e| vec![e.outcome(); rcpts.len()]);
                        c.quit().await;
                        o
                    }
                },
            };
            results.extend(idx.into_iter().zip(outcomes));
        }
        self.record(m, &data, results).await;
    }

    /// Applies an attempt's outcomes and persists the result.
    async fn record(&self, mut m: QueuedMessage, data: &[u8], outcomes: Vec<(usize, RcptOutcome)>) {
        let now = self.clock.now();
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

fn job_ids(job: &Job) -> Vec<String> {
    match job {
        Job::Batch { messages, .. } => messages.iter().map(|m| m.id.clone()).collect(),
        Job::Single(m) => vec![m.id.clone()],
    }
}
