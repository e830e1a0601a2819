//! The gateway's queue runner: delivers both directions from the one durable queue.
//!
//! A recipient at an onion (a participant, for mail from the internet or a DSN) is reached
//! over the [`Transport`]; any other recipient at the MX hosts of its domain (RFC 5321 5.1:
//! MX records by preference, the domain's own addresses when it has none, a null MX refused
//! for good), or at the configured smarthost, with STARTTLS where offered ([`StartTls`]).
//! Outcomes go through the node's schedule ([`schedule::after_attempt`]): retries with
//! backoff, and a DSN when a recipient fails for good or the retry window ends, to the
//! participant for mail it sent, and to the external sender for mail to a participant.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::StartTls as StartTlsMode;
use super::tls::StartTls;
use super::{Gateway, INBOUND};
use crate::message::{FailedRecipient, build_dsn_from};
use crate::queue::schedule::{self, RetryPolicy, domain_of};
use crate::smtp::client::{Client, ConnectError, RcptOutcome};
use crate::smtp::reply::reply;
use crate::spool::QueuedMessage;
use crate::transport::Transport;

/// The `identity` of queued DSNs (their own failures are not reported: RFC 3461).
pub const DSN: &str = "<dsn>";
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client waits for any one reply or write.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The EHLO name towards participants' onions (the same for all, as a node's).
pub const ONION_HELO: &str = "localhost";

/// Where one domain's mail goes: (host name for TLS and logs, socket address), in order.
pub type Targets = Vec<(String, SocketAddr)>;

/// Delivers the gateway's queue.
pub struct Relay<T: Transport> {
    g: Arc<Gateway>,
    transport: Arc<T>,
    tls: StartTls,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
}

impl<T: Transport> Relay<T> {
    /// A runner for the gateway `g`, reaching onions over `transport`.
    pub fn new(g: Arc<Gateway>, transport: Arc<T>) -> Arc<Self> {
        Arc::new(Relay {
            policy: RetryPolicy::from(&g.config.queue),
            slots: Arc::new(Semaphore::new(g.config.relay.concurrency.max(1))),
            tls: StartTls::new(),
            transport,
            g,
        })
    }

    /// Delivers until `shutdown` is cancelled; attempts already started are tracked by
    /// `tasks`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let (due, next) = self.g.queue.take_due(self.g.clock.now());
            for m in due {
                let permit = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.expect("semaphore open"),
                    () = shutdown.cancelled() => {
                        self.g.queue.release(&m.id);
                        continue;
                    }
                };
                let this = self.clone();
                tasks.spawn(async move {
                    let id = m.id.clone();
                    this.deliver(m).await;
                    this.g.queue.release(&id);
                    drop(permit);
                });
            }
            let wait = next.map_or(1.0, |t| (t - self.g.clock.now()).clamp(0.01, 1.0));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                () = self.g.queue.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn deliver(&self, m: QueuedMessage) {
        let q = self.g.queue.clone();
        let id = m.id.clone();
        let data = match tokio::task::spawn_blocking(move || q.data(&id)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(id = %m.id, "queued message file is missing; dropping the record");
                let q = self.g.queue.clone();
                let id = m.id.clone();
                let _ = tokio::task::spawn_blocking(move || q.remove(&id)).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(id = %m.id, "reading queued message: {e}; will retry");
                return;
            }
            Err(e) => {
                tracing::error!("spool task: {e}");
                return;
            }
        };
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in m.recipients.iter().enumerate() {
            if !r.done {
                groups.entry(domain_of(&r.address)).or_default().push(i);
            }
        }
        let mut results = Vec::new();
        for (domain, idx) in groups {
            let rcpts: Vec<String> = idx
                .iter()
                .map(|&i| m.recipients[i].address.clone())
                .collect();
            let outcomes = match domain.parse::<OnionAddress>() {
                Ok(onion) => self.to_onion(&onion, &m.from, &rcpts, &data).await,
                Err(_) => self.to_internet(&domain, &m.from, &rcpts, &data).await,
            };
            results.extend(idx.into_iter().zip(outcomes));
        }
        self.record(m, &data, results).await;
    }

    async fn to_onion(
        &self,
        onion: &OnionAddress,
        from: &str,
        rcpts: &[String],
        data: &[u8],
    ) -> Vec<RcptOutcome> {
        let n = rcpts.len();
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.transport.connect(onion, 25, &self.g.onion),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return vec![RcptOutcome::Unreachable(e.to_string()); n],
            Err(_) => return vec![RcptOutcome::Unreachable("connect timeout".into()); n],
        };
        // Signed, so that the participant's node can tell the gateway's
        // Authentication-Results from any that a sender wrote itself.
        let t = self.g.clock.now().max(0.0) as u64;
        let copy = super::auth::attach_forward(self.g.key(), &onion.public_key(), rcpts, t, data);
        match Client::connect(stream, ONION_HELO, REPLY_TIMEOUT).await {
            Ok(mut c) => {
                let o = c
                    .send(from, rcpts, &copy)
                    .await
                    .unwrap_or_else(|e| vec![e.outcome(); n]);
                c.quit().await;
                o
            }
            Err(e) => vec![e.outcome(); n],
        }
    }

    /// Where mail for `domain` goes, or the outcome for all its recipients.
    async fn targets(&self, domain: &str) -> Result<Targets, RcptOutcome> {
        if let Some(s) = self.g.config.relay.smarthost {
            return Ok(vec![(s.ip().to_string(), s)]);
        }
        let port = self.g.config.relay.mx_port;
        let resolver = self.g.dns.resolver();
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let hosts: Vec<String> = match resolver.mx_lookup(fqdn.as_str()).await {
            Ok(mx) => {
                let mut list: Vec<(u16, String)> = mx
                    .iter()
                    .map(|r| (r.preference(), r.exchange().to_ascii()))
                    .collect();
                list.sort();
                if list.len() == 1 && (list[0].1 == "." || list[0].1.is_empty()) {
                    return Err(RcptOutcome::Refused(reply(
                        556,
                        [5, 1, 10],
                        format!("{domain} accepts no mail (null MX, RFC 7505)"),
                    )));
                }
                list.into_iter().map(|(_, h)| h).collect()
            }
            Err(e) if e.is_nx_domain() => {
                return Err(RcptOutcome::Refused(reply(
                    550,
                    [5, 1, 2],
                    format!("the domain {domain} does not exist (DNS NXDOMAIN)"),
                )));
            }
            // No MX: the domain itself is the mail host (RFC 5321 5.1).
            Err(e) if e.is_no_records_found() => vec![fqdn.clone()],
            Err(e) => {
                return Err(RcptOutcome::Unreachable(format!(
                    "MX lookup of {domain}: {e}"
                )));
            }
        };
        let mut out = Vec::new();
        let mut why = String::new();
        for h in hosts {
            match resolver.lookup_ip(h.as_str()).await {
                Ok(ips) => out.extend(ips.iter().map(|ip| (h.clone(), SocketAddr::new(ip, port)))),
                Err(e) => why = format!("address of {h}: {e}"),
            }
        }
        if out.is_empty() {
            return Err(RcptOutcome::Unreachable(format!(
                "no address for the mail hosts of {domain}: {why}"
            )));
        }
        Ok(out)
    }

    async fn to_internet(
        &self,
        domain: &str,
        from: &str,
        rcpts: &[String],
        data: &[u8],
    ) -> Vec<RcptOutcome> {
        let n = rcpts.len();
        let targets = match self.targets(domain).await {
            Ok(t) => t,
            Err(o) => return vec![o; n],
        };
        let mut last = RcptOutcome::Unreachable(format!("no mail host of {domain} answered"));
        for (host, addr) in targets {
            match self.smtp(&host, addr, from, rcpts, data).await {
                Ok(o) => {
                    tracing::info!(%domain, %host, %addr, "relayed");
                    return o;
                }
                Err(e) => {
                    tracing::info!(%domain, %host, %addr, "mail host failed: {e}");
                    last = e.outcome();
                }
            }
        }
        vec![last; n]
    }

    /// One SMTP transaction with one MX host; `Err` when no transaction happened (try the
    /// next host).
    async fn smtp(
        &self,
        host: &str,
        addr: SocketAddr,
        from: &str,
        rcpts: &[String],
        data: &[u8],
    ) -> Result<Vec<RcptOutcome>, ConnectError> {
        let helo = self.g.config.hostname().to_string();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| crate::smtp::client::ClientError::Timeout)?
            .map_err(crate::smtp::client::ClientError::Io)?;
        let _ = tcp.set_nodelay(true);
        let c = Client::connect(tcp, &helo, REPLY_TIMEOUT).await?;
        let n = rcpts.len();
        if c.starttls_offered() && self.g.config.relay.starttls == StartTlsMode::Opportunistic {
            let tcp = c.starttls().await?;
            let tls = self
                .tls
                .handshake(host, tcp)
                .await
                .map_err(crate::smtp::client::ClientError::Io)?;
            let mut c = Client::resume(tls, &helo, REPLY_TIMEOUT).await?;
            tracing::debug!(%host, "STARTTLS");
            let o = c
                .send(from, rcpts, data)
                .await
                .unwrap_or_else(|e| vec![e.outcome(); n]);
            c.quit().await;
            return Ok(o);
        }
        let mut c = c;
        let o = c
            .send(from, rcpts, data)
            .await
            .unwrap_or_else(|e| vec![e.outcome(); n]);
        c.quit().await;
        Ok(o)
    }

    async fn record(&self, mut m: QueuedMessage, data: &[u8], outcomes: Vec<(usize, RcptOutcome)>) {
        let now = self.g.clock.now();
        let failed = schedule::after_attempt(&mut m, outcomes, now, &self.policy, rand::random());
        if !failed.is_empty() {
            self.bounce(&m, data, &failed).await;
        }
        let q = self.g.queue.clone();
        let done = schedule::is_finished(&m);
        let r =
            tokio::task::spawn_blocking(move || if done { q.remove(&m.id) } else { q.update(&m) })
                .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("recording the delivery attempt in the spool: {e}"),
            Err(e) => tracing::error!("spool task: {e}"),
        }
    }

    /// Queues a DSN to whoever sent `m`: the participant (its onion address) for mail it
    /// sent, the external sender for mail to a participant; none for a DSN or a null sender.
    async fn bounce(&self, m: &QueuedMessage, data: &[u8], failed: &[FailedRecipient]) {
        if m.identity == DSN || m.from.is_empty() {
            return;
        }
        let to = if m.identity == INBOUND {
            m.from.clone()
        } else {
            match self
                .g
                .config
                .participant
                .iter()
                .find(|p| p.name == m.identity)
            {
                Some(p) => p.address.clone(),
                None => {
                    tracing::warn!(participant = %m.identity, "no longer served; its bounce is dropped");
                    return;
                }
            }
        };
        let from = format!(
            "Mail Delivery System <MAILER-DAEMON@{}>",
            self.g.config.domain
        );
        let dsn = build_dsn_from(
            &from,
            &self.g.onion,
            &to,
            data,
            failed,
            m.created as i64,
            chrono::Utc::now(),
        );
        let q = self.g.queue.clone();
        let now = self.g.clock.now();
        tracing::warn!(id = %m.id, failed = failed.len(), "bouncing");
        match tokio::task::spawn_blocking(move || q.enqueue(DSN, "", &[to], &dsn, now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("queueing the bounce: {e}"),
            Err(e) => tracing::error!("bounce task: {e}"),
        }
    }
}
