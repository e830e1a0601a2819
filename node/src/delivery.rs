//! The queue runner: picks due messages from the spool, delivers them (locally or over a
//! [`Transport`] with the SMTP client), reschedules with exponential backoff, and bounces a DSN
//! to the sender's own mailbox when the retry window is over.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::message::{self, FailedRecipient};
use crate::node::Node;
use crate::smtp::client::{self, RcptOutcome};
use crate::spool::{self, QueuedMessage};
use crate::transport::Transport;

/// Delay before attempt number `attempts + 1`: `base * 2^(attempts-1)`, capped at `max`.
pub fn backoff(attempts: u32, base: f64, max: f64) -> f64 {
    (base * 2f64.powi(attempts.saturating_sub(1).min(60) as i32)).min(max)
}

/// Most messages sent over one SMTP connection in a row.
const MAX_BATCH: usize = 64;

/// Runs forever, delivering queued messages. Due messages for the same (sending identity,
/// destination onion) share an SMTP connection; the others are attempted one by one.
pub async fn run_queue<T: Transport>(node: Arc<Node>, transport: Arc<T>) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let concurrency = node.config.queue.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        let mut next_due = spool::now() + 1.0;
        let mut due = Vec::new();
        match node.spool.list() {
            Ok(list) => {
                let now = spool::now();
                for m in list {
                    if m.next_attempt > now {
                        next_due = next_due.min(m.next_attempt);
                    } else if in_flight.lock().expect("lock").insert(m.id.clone()) {
                        due.push(m);
                    }
                }
            }
            Err(e) => tracing::error!("reading spool: {e}"),
        }
        let mut batches: BTreeMap<(String, OnionAddress), Vec<QueuedMessage>> = BTreeMap::new();
        let mut singles = Vec::new();
        for m in due {
            match batch_key(&node, &m) {
                Some(k) => batches.entry(k).or_default().push(m),
                None => singles.push(vec![m]),
            }
        }
        let mut jobs: Vec<(Option<OnionAddress>, Vec<QueuedMessage>)> =
            singles.into_iter().map(|m| (None, m)).collect();
        for ((_, onion), msgs) in batches {
            let per = msgs.len().div_ceil(concurrency).clamp(1, MAX_BATCH);
            let mut msgs = msgs.into_iter().peekable();
            while msgs.peek().is_some() {
                jobs.push((Some(onion), msgs.by_ref().take(per).collect()));
            }
        }
        for (onion, msgs) in jobs {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let (node, transport, in_flight) = (node.clone(), transport.clone(), in_flight.clone());
            let span = tracing::info_span!("deliver", first = %msgs[0].id, n = msgs.len());
            tokio::spawn(
                async move {
                    let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
                    let result = match onion {
                        Some(onion) => attempt_batch(&node, &*transport, onion, msgs).await,
                        None => {
                            attempt(&node, &*transport, msgs.into_iter().next().expect("one")).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::error!("delivery attempt failed: {e}");
                    }
                    let mut f = in_flight.lock().expect("lock");
                    for id in ids {
                        f.remove(&id);
                    }
                    drop(f);
                    drop(permit);
                    node.queue_wakeup.notify_one();
                }
                .instrument(span),
            );
        }
        let wait = (next_due - spool::now()).clamp(0.01, 1.0);
        let _ =
            tokio::time::timeout(Duration::from_secs_f64(wait), node.queue_wakeup.notified()).await;
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The batch a message can join: all its pending recipients at one remote onion.
fn batch_key(node: &Node, m: &QueuedMessage) -> Option<(String, OnionAddress)> {
    let mut domains = m
        .recipients
        .iter()
        .filter(|r| !r.done)
        .map(|r| domain_of(&r.address));
    let first = domains.next()?;
    if domains.any(|d| d != first) {
        return None;
    }
    let onion: OnionAddress = first.parse().ok()?;
    if node.by_onion(&onion).is_some() {
        return None;
    }
    Some((m.identity.clone(), onion))
}

/// Re-reads a listed message (the listing may be stale: another attempt may have finished
/// it meanwhile); `None` if it is gone or not due.
fn load(node: &Node, listed: &QueuedMessage) -> std::io::Result<Option<(QueuedMessage, Vec<u8>)>> {
    let Some(m) = node.spool.get(&listed.id)? else {
        return Ok(None);
    };
    if m.next_attempt > spool::now() {
        return Ok(None);
    }
    let data = node.spool.data(&m.id)?;
    Ok(Some((m, data)))
}

/// Records per-recipient outcomes in `m`, collecting permanent failures.
fn apply(
    m: &mut QueuedMessage,
    idx: &[usize],
    outcomes: Vec<RcptOutcome>,
    failed: &mut Vec<FailedRecipient>,
) {
    for (&i, o) in idx.iter().zip(outcomes) {
        let r = &mut m.recipients[i];
        match o {
            RcptOutcome::Delivered => {
                tracing::info!(id = %m.id, to = %r.address, "delivered");
                r.done = true;
            }
            RcptOutcome::Permanent(why) => {
                tracing::warn!(id = %m.id, to = %r.address, %why, "permanent failure");
                r.done = true;
                failed.push(FailedRecipient {
                    address: r.address.clone(),
                    status: enhanced_status(&why, "5.0.0"),
                    diagnostic: why.clone(),
                });
                r.last_error = Some(why);
            }
            RcptOutcome::Temporary(why) => {
                tracing::info!(id = %m.id, to = %r.address, %why, "temporary failure");
                r.last_error = Some(why);
            }
        }
    }
}

async fn connect<T: Transport>(
    transport: &T,
    onion: &OnionAddress,
    sender: &OnionAddress,
) -> Result<client::Client<T::Stream>, client::ConnectError> {
    let stream = tokio::time::timeout(
        Duration::from_secs(60),
        transport.connect(onion, 25, sender),
    )
    .await
    .map_err(|_| client::ClientError::Timeout)?
    .map_err(client::ClientError::Io)?;
    client::Client::connect(stream, &sender.hostname(), Duration::from_secs(300)).await
}

/// Several messages from one identity to one onion over one connection.
async fn attempt_batch<T: Transport>(
    node: &Arc<Node>,
    transport: &T,
    onion: OnionAddress,
    batch: Vec<QueuedMessage>,
) -> std::io::Result<()> {
    let mut conn: Option<client::Client<T::Stream>> = None;
    let mut broken: Option<RcptOutcome> = None;
    for listed in batch {
        let Some((mut m, data)) = load(node, &listed)? else {
            continue;
        };
        let Some(sender) = node.by_name(&m.identity).map(|h| h.identity.onion) else {
            tracing::error!(identity = %m.identity, "sending identity is gone; dropping message");
            node.spool.remove(&m.id)?;
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
            match connect(transport, &onion, &sender).await {
                Ok(c) => conn = Some(c),
                Err(e) => broken = Some(e.outcome()),
            }
        }
        let outcomes = match (&mut conn, &broken) {
            (Some(c), _) => match c.send(&m.from, &rcpts, &data).await {
                Ok(o) => o,
                Err(e) => {
                    conn = None;
                    broken = Some(RcptOutcome::Temporary(format!("{onion}: {e}")));
                    vec![RcptOutcome::Temporary(format!("{onion}: {e}")); rcpts.len()]
                }
            },
            (None, Some(o)) => vec![o.clone(); rcpts.len()],
            (None, None) => unreachable!("either connected or broken"),
        };
        let mut failed = Vec::new();
        apply(&mut m, &idx, outcomes, &mut failed);
        finish(node, m, &data, failed).await?;
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    Ok(())
}

/// One delivery attempt for one queued message (any mix of destinations).
async fn attempt<T: Transport>(
    node: &Arc<Node>,
    transport: &T,
    listed: QueuedMessage,
) -> std::io::Result<()> {
    let Some((mut m, data)) = load(node, &listed)? else {
        return Ok(());
    };
    let Some(sender) = node.by_name(&m.identity) else {
        tracing::error!(identity = %m.identity, "sending identity is gone; dropping message");
        return node.spool.remove(&m.id);
    };
    let sender_onion = sender.identity.onion;
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in m.recipients.iter().enumerate() {
        if !r.done {
            by_domain.entry(domain_of(&r.address)).or_default().push(i);
        }
    }
    let mut failed: Vec<FailedRecipient> = Vec::new();
    for (domain, idx) in by_domain {
        let rcpts: Vec<String> = idx
            .iter()
            .map(|&i| m.recipients[i].address.clone())
            .collect();
        let outcomes: Vec<RcptOutcome> = match domain.parse::<OnionAddress>() {
            Err(e) => {
                vec![RcptOutcome::Permanent(format!("550 5.1.2 bad destination: {e}")); rcpts.len()]
            }
            Ok(onion) if node.by_onion(&onion).is_some() => {
                deliver_local(node, &m.from, &rcpts, &data).await
            }
            Ok(onion) => match connect(transport, &onion, &sender_onion).await {
                Err(e) => vec![e.outcome(); rcpts.len()],
                Ok(mut c) => {
                    let o = c.send(&m.from, &rcpts, &data).await;
                    c.quit().await;
                    o.unwrap_or_else(|e| {
                        vec![RcptOutcome::Temporary(format!("{onion}: {e}")); rcpts.len()]
                    })
                }
            },
        };
        apply(&mut m, &idx, outcomes, &mut failed);
    }
    finish(node, m, &data, failed).await
}

/// After an attempt: bounce what failed, drop the message if nothing is pending, else
/// reschedule with backoff (or bounce the rest when the retry window is over).
async fn finish(
    node: &Arc<Node>,
    mut m: QueuedMessage,
    data: &[u8],
    mut failed: Vec<FailedRecipient>,
) -> std::io::Result<()> {
    let now = spool::now();
    let q = &node.config.queue;
    let pending = m.recipients.iter().any(|r| !r.done);
    if pending && now - m.created >= q.retry_window_secs {
        for r in m.recipients.iter_mut().filter(|r| !r.done) {
            r.done = true;
            failed.push(FailedRecipient {
                address: r.address.clone(),
                status: "4.4.7".into(),
                diagnostic: format!(
                    "delivery time expired after {} attempts; last error: {}",
                    m.attempts + 1,
                    r.last_error.clone().unwrap_or_default()
                ),
            });
        }
    }
    if !failed.is_empty() {
        bounce(node, &m, data, &failed).await?;
    }
    if m.recipients.iter().all(|r| r.done) {
        node.spool.remove(&m.id)
    } else {
        m.attempts += 1;
        m.next_attempt = now + backoff(m.attempts, q.retry_base_secs, q.retry_max_secs);
        tracing::info!(id = %m.id, attempts = m.attempts, next_in = m.next_attempt - now, "rescheduled");
        node.spool.update(&m)
    }
}

fn enhanced_status(reply: &str, default: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| s.split('.').count() == 3 && s.starts_with(['2', '4', '5']))
        .unwrap_or(default)
        .to_string()
}

async fn deliver_local(
    node: &Arc<Node>,
    from: &str,
    rcpts: &[String],
    data: &[u8],
) -> Vec<RcptOutcome> {
    let (node, from, rcpts, data) = (
        node.clone(),
        from.to_string(),
        rcpts.to_vec(),
        data.to_vec(),
    );
    let n = rcpts.len();
    tokio::task::spawn_blocking(move || {
        rcpts
            .iter()
            .map(|r| {
                let env = crate::smtp::session::Envelope {
                    from: from.clone(),
                    recipients: vec![r.clone()],
                    data: data.clone(),
                    authenticated: None,
                };
                match crate::smtp::server::store_inbound(&node, &env) {
                    Ok(()) => RcptOutcome::Delivered,
                    Err(crate::smtp::session::DeliveryFailure::Permanent(e)) => {
                        RcptOutcome::Permanent(format!("550 5.1.1 {e}"))
                    }
                    Err(crate::smtp::session::DeliveryFailure::Temporary(e)) => {
                        RcptOutcome::Temporary(e)
                    }
                }
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| vec![RcptOutcome::Temporary(e.to_string()); n])
}

/// Puts a DSN into the sending identity's own mailbox.
async fn bounce(
    node: &Arc<Node>,
    m: &QueuedMessage,
    data: &[u8],
    failed: &[FailedRecipient],
) -> std::io::Result<()> {
    let Some(sender) = node.by_name(&m.identity) else {
        return Ok(());
    };
    let dsn = message::build_dsn(
        &sender.identity.onion,
        &m.from,
        data,
        failed,
        m.created as i64,
        chrono::Utc::now(),
    );
    let md = sender.maildir.clone();
    tracing::warn!(to = %m.from, failed = failed.len(), "bouncing");
    tokio::task::spawn_blocking(move || md.deliver(&dsn, Default::default(), None))
        .await
        .map_err(std::io::Error::other)?
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_recipients_are_delivered_and_bad_ones_bounce() {
        use crate::config::Config;
        use crate::identity::IdentityStore;
        let home = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(home.path());
        let (alice, _) = store.create("alice").unwrap();
        let (bob, _) = store.create("bob").unwrap();
        let node = Arc::new(Node::open(home.path(), Config::default()).unwrap());
        let msg = b"Message-ID: <l@x>\r\nSubject: local\r\n\r\nhi\r\n";
        node.spool
            .enqueue(
                "alice",
                &alice.address(),
                &[bob.address(), "eve@example.com".into()],
                msg,
            )
            .unwrap();
        let transport = Arc::new(crate::transport::DirectTransport::default());
        let runner = tokio::spawn(run_queue(node.clone(), transport));
        let bob_box = node.by_name("bob").unwrap().maildir.clone();
        let alice_box = node.by_name("alice").unwrap().maildir.clone();
        for _ in 0..200 {
            if node.spool.is_empty().unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runner.abort();
        assert!(node.spool.is_empty().unwrap());
        assert_eq!(bob_box.read(1).unwrap(), msg);
        let dsn = String::from_utf8(alice_box.read(1).unwrap()).unwrap();
        assert!(
            dsn.contains("Final-Recipient: rfc822; eve@example.com"),
            "{dsn}"
        );
        assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1, 30.0, 3600.0), 30.0);
        assert_eq!(backoff(2, 30.0, 3600.0), 60.0);
        assert_eq!(backoff(5, 30.0, 3600.0), 480.0);
        assert_eq!(backoff(50, 30.0, 3600.0), 3600.0);
        assert_eq!(enhanced_status("550 5.1.1 no such user", "5.0.0"), "5.1.1");
        assert_eq!(enhanced_status("554 rejected", "5.0.0"), "5.0.0");
    }
}
