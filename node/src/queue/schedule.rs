//! The queue's decisions as pure functions of a message, the attempt's outcomes and the time:
//! when to try again, when to give up and bounce, which due messages share a connection.
//!
//! Retries back off exponentially and are jittered per message, so the retries of two
//! identities of one node never leave in lock-step (timing would link them).

use onionpost_proto::onion::OnionAddress;

use crate::config::QueueConfig;
use crate::message::FailedRecipient;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{EnhancedCode, ReplyExt};
use crate::spool::QueuedMessage;

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt, seconds.
    pub base: f64,
    /// Longest delay, seconds.
    pub max: f64,
    /// After this long undelivered (from queueing), give up and bounce.
    pub window: f64,
    /// Relative spread of each delay: a delay `d` becomes a value in `[d(1-j/2), d(1+j/2))`.
    pub jitter: f64,
}

impl From<&QueueConfig> for RetryPolicy {
    fn from(c: &QueueConfig) -> Self {
        RetryPolicy {
            base: c.retry_base_secs,
            max: c.retry_max_secs,
            window: c.retry_window_secs,
            jitter: c.retry_jitter.clamp(0.0, 1.0),
        }
    }
}

/// Delay before the next attempt after `failures` failed attempts: `base * 2^(failures-1)`,
/// capped at `max`, then spread by the jitter according to `u`, a uniform sample of `[0, 1)`.
pub fn retry_delay(failures: u32, p: &RetryPolicy, u: f64) -> f64 {
    let d = (p.base * 2f64.powi(failures.saturating_sub(1).min(60) as i32)).min(p.max);
    d * (1.0 - p.jitter / 2.0 + p.jitter * u.clamp(0.0, 1.0))
}

/// Records one attempt's outcomes (`(recipient index, outcome)`), gives up on recipients
/// past the retry window, and schedules the next attempt if any recipient is still pending.
/// Returns the recipients to report in a DSN.
pub fn after_attempt(
    m: &mut QueuedMessage,
    outcomes: Vec<(usize, RcptOutcome)>,
    now: f64,
    p: &RetryPolicy,
    u: f64,
) -> Vec<FailedRecipient> {
    let mut failed = Vec::new();
    for (i, o) in outcomes {
        let r = &mut m.recipients[i];
        match o {
            RcptOutcome::Delivered => {
                tracing::info!(id = %m.id, to = %r.address, "delivered");
                r.done = true;
            }
            RcptOutcome::Refused(reply) if reply.is_permanent() => {
                tracing::warn!(id = %m.id, to = %r.address, reply = %reply.one_line(), "permanent failure");
                r.done = true;
                failed.push(FailedRecipient {
                    address: r.address.clone(),
                    status: reply.status_or_class(),
                    diagnostic: reply.one_line(),
                });
                r.last_error = Some(reply.one_line());
            }
            RcptOutcome::Refused(reply) => {
                tracing::info!(id = %m.id, to = %r.address, reply = %reply.one_line(), "temporary failure");
                r.last_error = Some(reply.one_line());
            }
            RcptOutcome::Unreachable(why) => {
                tracing::info!(id = %m.id, to = %r.address, %why, "temporary failure");
                r.last_error = Some(why);
            }
        }
    }
    let pending = m.recipients.iter().any(|r| !r.done);
    if pending && now - m.created >= p.window {
        let attempts = m.attempts + 1;
        for r in m.recipients.iter_mut().filter(|r| !r.done) {
            r.done = true;
            failed.push(FailedRecipient {
                address: r.address.clone(),
                status: EnhancedCode([4, 4, 7]),
                diagnostic: format!(
                    "delivery time expired after {attempts} attempts; last error: {}",
                    r.last_error.as_deref().unwrap_or("none")
                ),
            });
        }
    }
    if m.recipients.iter().any(|r| !r.done) {
        m.attempts += 1;
        m.next_attempt = now + retry_delay(m.attempts, p, u);
    }
    failed
}

/// Whether every recipient is done (delivered or reported).
pub fn is_finished(m: &QueuedMessage) -> bool {
    m.recipients.iter().all(|r| r.done)
}

/// The lower-cased domain of an address.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Which connection a message can share: its sending identity and the one remote onion all
/// its pending recipients are at. `None` for mixed or local destinations.
pub type RouteKey = (String, OnionAddress);

/// The [`RouteKey`] of a message, if it has one. `is_local` says whether an onion is hosted
/// by this node.
pub fn route_key(m: &QueuedMessage, is_local: impl Fn(&OnionAddress) -> bool) -> Option<RouteKey> {
    let mut domains = m
        .recipients
        .iter()
        .filter(|r| !r.done)
        .map(|r| domain_of(&r.address));
    let first = domains.next()?;
    if !domains.all(|d| d == first) {
        return None;
    }
    let onion: OnionAddress = first.parse().ok()?;
    (!is_local(&onion)).then(|| (m.identity.clone(), onion))
}

/// Work for one delivery task.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Messages of one sending identity, all for one remote onion: one connection, which then
    /// keeps taking what becomes due for the same route.
    Batch {
        /// The route.
        key: RouteKey,
        /// The messages, oldest first.
        messages: Vec<QueuedMessage>,
    },
    /// A message with recipients at several destinations (or local ones).
    Single(QueuedMessage),
}

/// Groups due messages into jobs. Messages sharing a [`RouteKey`] share a connection; a group
/// is split into at most `slots(key)` jobs (connections that route may still open; 0 means the
/// route's connections are all busy and will take the messages themselves) of at most
/// `max_batch` messages each. Returns the jobs and the messages left for the route's open
/// connections.
pub fn plan_jobs(
    due: Vec<QueuedMessage>,
    is_local: impl Fn(&OnionAddress) -> bool,
    slots: impl Fn(&RouteKey) -> usize,
    max_batch: usize,
) -> (Vec<Job>, Vec<QueuedMessage>) {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<RouteKey, Vec<QueuedMessage>> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut left = Vec::new();
    for m in due {
        match route_key(&m, &is_local) {
            Some(k) => groups.entry(k).or_default().push(m),
            None => jobs.push(Job::Single(m)),
        }
    }
    for (key, msgs) in groups {
        let n = slots(&key).min(msgs.len());
        if n == 0 {
            left.extend(msgs);
            continue;
        }
        let per = msgs.len().div_ceil(n).clamp(1, max_batch.max(1));
        let mut msgs = msgs.into_iter().peekable();
        for _ in 0..n {
            if msgs.peek().is_none() {
                break;
            }
            jobs.push(Job::Batch {
                key: key.clone(),
                messages: msgs.by_ref().take(per).collect(),
            });
        }
        left.extend(msgs);
    }
    (jobs, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::reply;
    use crate::spool::Recipient;
    use rand::{Rng, SeedableRng};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: 30.0,
            max: 3600.0,
            window: 5.0 * 86400.0,
            jitter: 0.5,
        }
    }

    fn message(identity: &str, to: &[&str], created: f64) -> QueuedMessage {
        QueuedMessage {
            id: format!("{created}-{identity}"),
            identity: identity.into(),
            from: format!("{identity}@a.onion"),
            recipients: to
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    done: false,
                    last_error: None,
                })
                .collect(),
            created,
            attempts: 0,
            next_attempt: created,
        }
    }

    #[test]
    fn delays_double_cap_and_spread() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..policy()
        };
        assert_eq!(retry_delay(1, &p, 0.3), 30.0);
        assert_eq!(retry_delay(2, &p, 0.3), 60.0);
        assert_eq!(retry_delay(5, &p, 0.3), 480.0);
        assert_eq!(retry_delay(50, &p, 0.3), 3600.0);
        let p = policy();
        assert_eq!(retry_delay(1, &p, 0.0), 22.5);
        assert!(retry_delay(1, &p, 0.999_999) < 37.5);
        assert_eq!(retry_delay(1, &p, 0.5), 30.0);
    }

    /// A message whose recipient never answers, followed on virtual time through every
    /// attempt until it bounces: the attempt times back off, and the bounce comes at the end
    /// of the retry window with status 4.4.7 and the last error.
    #[test]
    fn unreachable_recipient_is_retried_then_bounced_on_virtual_time() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = 1_000_000.0;
        let mut m = message("alice", &["bob@b.onion"], t0);
        let mut now = t0;
        let mut times = vec![];
        let failed = loop {
            times.push(now);
            let out = vec![(0, RcptOutcome::Unreachable("connection refused".into()))];
            let failed = after_attempt(&mut m, out, now, &p, rng.r#gen());
            if is_finished(&m) {
                break failed;
            }
            assert!(m.next_attempt > now);
            now = m.next_attempt;
        };
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= 22.5 && gaps[0] < 37.5, "{gaps:?}");
        assert!(gaps[5] > gaps[0] * 8.0, "backs off: {gaps:?}");
        assert!(gaps.iter().all(|&g| g < 3600.0 * 1.25), "capped: {gaps:?}");
        assert!(now - t0 >= p.window && now - t0 < p.window + 3600.0 * 1.25);
        // ~ 7 doubling steps, then one per ~hour for the rest of five days.
        assert!((110..145).contains(&times.len()), "{}", times.len());
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].status, EnhancedCode([4, 4, 7]));
        assert!(
            failed[0].diagnostic.contains("connection refused"),
            "{}",
            failed[0].diagnostic
        );
    }

    #[test]
    fn per_recipient_outcomes() {
        let p = policy();
        let mut m = message("alice", &["a@b.onion", "b@b.onion", "c@b.onion"], 0.0);
        let failed = after_attempt(
            &mut m,
            vec![
                (0, RcptOutcome::Delivered),
                (
                    1,
                    RcptOutcome::Refused(reply(550, [5, 1, 1], "no such user")),
                ),
                (
                    2,
                    RcptOutcome::Refused(reply(452, [4, 2, 2], "mailbox full")),
                ),
            ],
            10.0,
            &p,
            0.5,
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].address, "b@b.onion");
        assert_eq!(failed[0].status, EnhancedCode([5, 1, 1]));
        assert_eq!(failed[0].diagnostic, "550 5.1.1 no such user");
        assert!(!is_finished(&m));
        assert_eq!(m.attempts, 1);
        assert_eq!(m.next_attempt, 40.0);
        assert_eq!(
            m.recipients[2].last_error.as_deref(),
            Some("452 4.2.2 mailbox full")
        );
        let failed = after_attempt(&mut m, vec![(2, RcptOutcome::Delivered)], 41.0, &p, 0.5);
        assert!(failed.is_empty() && is_finished(&m));
    }

    /// Two identities whose mail failed at the same moment are retried at different times,
    /// and never at a fixed offset from each other.
    #[test]
    fn two_identities_do_not_retry_in_lock_step() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut a = message("alice", &["x@b.onion"], 0.0);
        let mut b = message("bob", &["x@b.onion"], 0.0);
        let mut offsets = Vec::new();
        let mut now = 0.0;
        for _ in 0..8 {
            let down = || vec![(0, RcptOutcome::Unreachable("down".into()))];
            after_attempt(&mut a, down(), now, &p, rng.r#gen());
            after_attempt(&mut b, down(), now, &p, rng.r#gen());
            offsets.push(a.next_attempt - b.next_attempt);
            now = a.next_attempt.max(b.next_attempt);
        }
        assert!(offsets.iter().all(|o| o.abs() > 1e-9), "{offsets:?}");
        let spread = offsets.iter().cloned().fold(f64::MIN, f64::max)
            - offsets.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 10.0, "offsets vary: {offsets:?}");
    }

    #[test]
    fn jobs_share_connections_per_identity_and_destination() {
        let b = OnionAddress::from_public_key([2; 32]).hostname();
        let c = OnionAddress::from_public_key([3; 32]).hostname();
        let local = OnionAddress::from_public_key([4; 32]);
        let to_b = format!("x@{b}");
        let to_c = format!("y@{c}");
        let to_local = format!("z@{}", local.hostname());
        let mut due = vec![];
        for i in 0..5 {
            due.push(message("alice", &[&to_b], i as f64));
        }
        due.push(message("bob", &[&to_b], 9.0));
        due.push(message("carol", &[&to_b], 9.5));
        due.push(message("alice", &[&to_b, &to_c], 10.0));
        due.push(message("alice", &[&to_local], 11.0));
        // alice may open 2 connections to b, bob 1, carol none (hers are busy).
        let (jobs, left) = plan_jobs(
            due,
            |o| *o == local,
            |k| match k.0.as_str() {
                "alice" => 2,
                "bob" => 1,
                _ => 0,
            },
            64,
        );
        let batches: Vec<(usize, &str)> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Batch { messages, key } => Some((messages.len(), key.0.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(batches, [(3, "alice"), (2, "alice"), (1, "bob")]);
        assert_eq!(
            jobs.iter().filter(|j| matches!(j, Job::Single(_))).count(),
            2
        );
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].identity, "carol");
        // A batch never exceeds max_batch; what does not fit is left.
        let many: Vec<_> = (0..10)
            .map(|i| message("alice", &[&to_b], i as f64))
            .collect();
        let (jobs, left) = plan_jobs(many, |_| false, |_| 1, 4);
        assert_eq!(jobs.len(), 1);
        assert_eq!(left.len(), 6);
    }
}
