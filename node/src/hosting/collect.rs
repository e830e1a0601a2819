//! The recipient's side: each hosted identity collects its held mail from each of its
//! mailbox hosts (read from the ledger with a proof), at start and then about every
//! `[hosting] collect_every_secs`, on a schedule of its own (see [`Collector::run`]).
//!
//! Exactly once: a fetched message goes through the inbound stages (decrypted, verified,
//! deduplicated by Message-ID and content, stored durably) before its id is acknowledged, and
//! the host deletes only what is acknowledged. Killed before the store: the host still has
//! it. Killed between the store and the acknowledgement: it comes again next time, and the
//! mailbox's durable dedupe drops the second copy before it is acknowledged again.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use onionpost_ledger_client::{At, Ledger};
use onionpost_proto::onion::OnionAddress;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Answer, Command};
use super::serve::Lines;
use crate::context::{Context, Hosted};
use crate::delivery::inbound::{Inbound, Scope};
use crate::ledger::NodeLedger;
use crate::smtp::reply::ReplyExt;
use crate::transport::Transport;

/// How long the collector waits for any one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long opening a connection to a host may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The EHLO name, as every identity gives it (names neither the host nor the identity).
pub const HELO_NAME: &str = "localhost";

/// Why one collection from one host stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Connection trouble.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The host said something this protocol does not expect.
    #[error("the host answered {0:?}")]
    Protocol(String),
    /// The host refused the collector's proof of identity.
    #[error("the host refused our signature: {0}")]
    Refused(String),
    /// The identity's key could not be read.
    #[error("reading the identity's key: {0}")]
    Key(String),
}

/// What one collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Messages stored (or found stored already) and acknowledged.
    pub stored: usize,
    /// Messages left on the host (the mailbox refused them for now).
    pub left: usize,
}

/// Collects held mail for the node's identities.
pub struct Collector<T: Transport> {
    ctx: Arc<Context>,
    inbound: Inbound,
    transport: Arc<T>,
    ledger: NodeLedger,
    every: f64,
}

async fn expect<S>(l: &mut Lines<S>) -> Result<Answer, CollectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let line = l
        .line(ANSWER_TIMEOUT)
        .await?
        .ok_or_else(|| CollectError::Io(io::ErrorKind::UnexpectedEof.into()))?;
    protocol::parse_answer(&line).ok_or(CollectError::Protocol(line))
}

/// Reads one SMTP reply (all its lines); its code and last line.
async fn smtp_reply<S>(l: &mut Lines<S>) -> Result<(u16, String), CollectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let line = l
            .line(ANSWER_TIMEOUT)
            .await?
            .ok_or_else(|| CollectError::Io(io::ErrorKind::UnexpectedEof.into()))?;
        let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
        match (code, line.as_bytes().get(3)) {
            (Some(_), Some(b'-')) => continue,
            (Some(c), _) => return Ok((c, line)),
            (None, _) => return Err(CollectError::Protocol(line)),
        }
    }
}

impl<T: Transport> Collector<T> {
    /// A collector for the identities of `ctx`, storing through `inbound`, reaching hosts
    /// over `transport`, reading hosts from `ledger`, every `every` seconds (0: only when
    /// asked).
    pub fn new(
        ctx: Arc<Context>,
        inbound: Inbound,
        transport: Arc<T>,
        ledger: NodeLedger,
        every: f64,
    ) -> Arc<Self> {
        Arc::new(Collector {
            ctx,
            inbound,
            transport,
            ledger,
            every,
        })
    }

    /// Collects at start (every identity at once: the node's start shows anyway), then for
    /// each identity on its own schedule, every interval spread by a random delay drawn per
    /// identity and round, so that the identities of one node never collect in lock-step
    /// (timing would link them for a host, or hosts, serving several of them). Until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.every <= 0.0 {
            return;
        }
        tokio::select! {
            () = self.collect_all() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            let round = tokio_util::task::TaskTracker::new();
            for h in self.ctx.identities().iter() {
                let (this, h, stop) = (self.clone(), h.clone(), shutdown.clone());
                let delay = Duration::from_secs_f64(self.every * rand::random::<f64>());
                round.spawn(async move {
                    tokio::select! {
                        () = async {
                            tokio::time::sleep(delay).await;
                            this.collect_identity(&h).await;
                        } => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
            round.close();
            tokio::select! {
                () = async {
                    tokio::time::sleep(Duration::from_secs_f64(self.every)).await;
                    round.wait().await;
                } => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One round: every identity, every host.
    pub async fn collect_all(&self) {
        for h in self.ctx.identities().iter() {
            self.collect_identity(h).await;
        }
    }

    /// Every host of one identity.
    async fn collect_identity(&self, h: &Arc<Hosted>) {
        let Ok(client) = self.ledger.client() else {
            return;
        };
        let me = h.identity.onion;
        let hosts = match client.mailbox_hosts(&me.public_key(), At::Latest).await {
            Ok(v) => v.value,
            Err(e) => {
                tracing::info!(identity = %h.identity.name, "no verified answer about our mailbox hosts; collecting later: {e}");
                return;
            }
        };
        for key in hosts {
            let host = OnionAddress::from_public_key(key);
            match self.collect(h, &host).await {
                Ok(c) if c.stored > 0 || c.left > 0 => {
                    tracing::info!(identity = %h.identity.name, %host, stored = c.stored, left = c.left, "collected held mail")
                }
                Ok(_) => tracing::debug!(identity = %h.identity.name, %host, "nothing held"),
                Err(e) => {
                    tracing::info!(identity = %h.identity.name, %host, "collecting: {e}")
                }
            }
        }
    }

    /// Collects what `host` holds for `me`.
    pub async fn collect(
        &self,
        me: &Arc<Hosted>,
        host: &OnionAddress,
    ) -> Result<Collected, CollectError> {
        let onion = me.identity.onion;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, self.transport.connect(host, 25, &onion))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the host"))??;
        let mut l = Lines::new(stream, Vec::new());
        let (code, text) = smtp_reply(&mut l).await?;
        if code != 220 {
            return Err(CollectError::Protocol(text));
        }
        l.send(format!("EHLO {HELO_NAME}\r\n").as_bytes()).await?;
        let (code, text) = smtp_reply(&mut l).await?;
        if code != 250 {
            return Err(CollectError::Protocol(text));
        }
        l.send(format!("{}\r\n", protocol::VERB).as_bytes()).await?;
        let (code, text) = smtp_reply(&mut l).await?;
        if code != 220 {
            return Err(CollectError::Protocol(text));
        }
        let Answer::Challenge(challenge) = expect(&mut l).await? else {
            return Err(CollectError::Protocol("no challenge".into()));
        };
        let key = me
            .identity
            .signing_key()
            .map_err(|e| CollectError::Key(e.to_string()))?;
        let signature = protocol::sign_challenge(&key, &host.public_key(), &challenge);
        let auth = Command::Auth {
            recipient: onion,
            host: *host,
            signature,
        };
        l.send(protocol::format(&auth).as_bytes()).await?;
        match expect(&mut l).await? {
            Answer::Ok(_) => {}
            Answer::Err(why) => return Err(CollectError::Refused(why)),
            other => return Err(CollectError::Protocol(format!("{other:?}"))),
        }
        l.send(protocol::format(&Command::List).as_bytes()).await?;
        let mut ids = Vec::new();
        loop {
            match expect(&mut l).await? {
                Answer::Entry(id, _) => ids.push(id),
                Answer::Ok(_) => break,
                other => return Err(CollectError::Protocol(format!("{other:?}"))),
            }
        }
        let mut done = Collected::default();
        for (i, id) in ids.iter().enumerate() {
            l.send(protocol::format(&Command::Fetch(id.clone())).as_bytes())
                .await?;
            let n = match expect(&mut l).await? {
                Answer::Data(n) => n,
                Answer::Err(why) => {
                    tracing::info!(%id, "the host no longer has it: {why}");
                    continue;
                }
                other => return Err(CollectError::Protocol(format!("{other:?}"))),
            };
            let bytes = l.bytes(n as usize, ANSWER_TIMEOUT).await?;
            if !self.store(me, id, bytes).await {
                done.left = ids.len() - i;
                break;
            }
            l.send(protocol::format(&Command::Ack(id.clone())).as_bytes())
                .await?;
            match expect(&mut l).await? {
                Answer::Ok(_) => done.stored += 1,
                other => return Err(CollectError::Protocol(format!("{other:?}"))),
            }
        }
        l.send(protocol::format(&Command::Quit).as_bytes()).await?;
        let _ = expect(&mut l).await;
        Ok(done)
    }

    /// Stores one fetched message for `me` through the inbound stages; whether to
    /// acknowledge it (stored now or before, or refused for good by the end-to-end policy).
    async fn store(&self, me: &Arc<Hosted>, id: &str, bytes: Vec<u8>) -> bool {
        let scope = Scope::Identity(me.identity.onion);
        let out = self
            .inbound
            .deliver(scope, vec![me.identity.address()], bytes)
            .await;
        match out.into_iter().next() {
            Some(Ok(())) => true,
            Some(Err(r)) if r.is_permanent() => {
                tracing::warn!(%id, "held message refused by the end-to-end policy, dropped: {}", r.one_line());
                true
            }
            Some(Err(r)) => {
                tracing::info!(%id, "not stored now, left on the host: {}", r.one_line());
                false
            }
            None => false,
        }
    }
}
