//! The runtime wires the node together and runs it: it takes the home lock, opens the
//! context and the queue, binds the listeners (each with its connection cap), starts the
//! transport and one onion service per identity, the queue runner and the control socket,
//! and shuts down gracefully on SIGTERM or SIGINT: stop accepting, tell idle sessions, let
//! running deliveries and stores finish (up to [`DRAIN`]), exit 0.
//!
//! Nothing imports this module but `main`: it is the top of the one-way import graph.

pub mod control;
pub mod lock;
pub mod services;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onionpost_proto::onion::OnionAddress;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, TransportKind};
use crate::context::{Context, ContextError, Hosted};
use crate::delivery::inbound::{Inbound, Scope};
use crate::delivery::outbound::Submission;
use crate::e2e::E2e;
use crate::e2e::monitor::Monitor;
use crate::hosting::Hosting;
use crate::hosting::collect::Collector;
use crate::hosting::fallback::Fallback;
use crate::ledger::NodeLedger;
use crate::listener::{self, ConnectionLimit, ListenerSpec};
use crate::lists::engine::Lists;
use crate::onion::{OnionError, OnionTransport, StreamHandler};
use crate::queue::Queue;
use crate::queue::runner::Runner;
use crate::smtp::server::{BUSY, Timing};
use crate::smtp::session::{Mode, SessionConfig};
use crate::transport::DirectTransport;
use crate::{imap, smtp};
use control::{Answer, Request};
use services::{ContextAccounts, InboundService, SubmissionService};
use status::{ListenerStatus, Status};

/// How long shutdown waits for running sessions and deliveries before exiting anyway
/// (nothing is lost: the spool is durable, and an interrupted delivery is retried).
pub const DRAIN: Duration = Duration::from_secs(10);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Another node runs on this home.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Identities or mailboxes could not be opened.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A file or socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A direct-transport route is not an onion name.
    #[error("[transport.direct] {name:?} is not an onion host name: {why}")]
    DirectRoute {
        /// The configured name.
        name: String,
        /// Why.
        why: String,
    },
    /// The onion transport did not start.
    #[error(transparent)]
    Onion(#[from] OnionError),
    /// `[ledger]` cannot be used.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::SetupError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// Per-identity caps on inbound onion streams, created as identities appear.
#[derive(Default)]
struct ServiceLimits {
    max: usize,
    by_identity: Mutex<HashMap<OnionAddress, ConnectionLimit>>,
}

impl ServiceLimits {
    fn get(&self, onion: OnionAddress) -> ConnectionLimit {
        self.by_identity
            .lock()
            .expect("limits lock")
            .entry(onion)
            .or_insert_with(|| ConnectionLimit::new(self.max))
            .clone()
    }
}

/// Everything `status` and `reload` need from the running node.
struct Live {
    ctx: Arc<Context>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    listeners: BTreeMap<String, (SocketAddr, ConnectionLimit)>,
    tor: Option<Arc<OnionTransport>>,
    monitor: Arc<Monitor>,
    hosting: Option<Arc<Hosting>>,
}

impl Live {
    fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            identities: self
                .ctx
                .identities()
                .iter()
                .map(|h| h.identity.address())
                .collect(),
            listeners: self
                .listeners
                .iter()
                .map(|(name, (addr, limit))| {
                    (
                        name.clone(),
                        ListenerStatus {
                            address: *addr,
                            connections: limit.active(),
                            max_connections: limit.max(),
                        },
                    )
                })
                .collect(),
            queue: self.queue.status(self.clock.now()),
            tor: self.tor.as_ref().map(|t| t.status()),
            alerts: self.monitor.alerts(),
            held: self.hosting.as_ref().map(|h| h.store().totals()),
        }
    }

    async fn reload(&self) -> Answer {
        let ctx = self.ctx.clone();
        let r = match tokio::task::spawn_blocking(move || ctx.reload()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Answer::Error(e.to_string()),
            Err(e) => return Answer::Error(e.to_string()),
        };
        if let Some(tor) = &self.tor {
            for h in &r.added {
                if let Err(e) = tor.add(&h.identity) {
                    return Answer::Error(e.to_string());
                }
            }
            for h in &r.removed {
                tor.remove(&h.identity.onion);
            }
        }
        let names = |v: &[Arc<Hosted>]| v.iter().map(|h| h.identity.address()).collect();
        tracing::info!(
            added = r.added.len(),
            removed = r.removed.len(),
            "identities reloaded"
        );
        Answer::Reloaded {
            added: names(&r.added),
            removed: names(&r.removed),
        }
    }
}

fn session_config(config: &Config, mode: Mode, hostname: String) -> SessionConfig {
    let l = &config.limits;
    SessionConfig {
        mode,
        hostname,
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        max_line_length: l.max_line_length,
    }
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(io_err(format!("binding the {what} listener on {addr}")))
}

/// Binds the listener `name` on `addr` with its connection cap, and records both for
/// `status`.
async fn open_listener(
    name: &'static str,
    addr: SocketAddr,
    cfg: &Config,
    listeners: &mut BTreeMap<String, (SocketAddr, ConnectionLimit)>,
) -> Result<(TcpListener, ConnectionLimit), RuntimeError> {
    let l = bind(name, addr).await?;
    let limit = ConnectionLimit::new(cfg.limits.max_connections);
    listeners.insert(
        name.to_string(),
        (l.local_addr().map_err(io_err(name))?, limit.clone()),
    );
    Ok((l, limit))
}

/// Serves SMTP sessions configured by `sc` on `l`, each answered by `svc`.
#[allow(clippy::too_many_arguments)]
fn spawn_smtp<V: smtp::server::Service>(
    l: TcpListener,
    name: &'static str,
    limit: ConnectionLimit,
    svc: Arc<V>,
    sc: SessionConfig,
    timing: Timing,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) {
    let stop = shutdown.clone();
    tokio::spawn(listener::serve(
        l,
        ListenerSpec {
            name,
            limit,
            busy: BUSY,
        },
        shutdown.clone(),
        tasks.clone(),
        move |stream, _| {
            let (svc, stop, sc) = (svc.clone(), stop.clone(), sc.clone());
            async move {
                if let Err(e) = smtp::server::handle(stream, &*svc, sc, timing, &stop).await {
                    tracing::debug!("session ended: {e}");
                }
            }
        },
    ));
}

/// The host's side of mailbox hosting, if `[hosting] enabled` (it needs `[ledger]`).
fn open_hosting(
    home: &Path,
    cfg: &Config,
    ledger: &NodeLedger,
    clock: &Arc<dyn Clock>,
) -> Result<Option<Arc<Hosting>>, RuntimeError> {
    if !cfg.hosting.enabled {
        return Ok(None);
    }
    if ledger.config().is_none() {
        tracing::warn!(
            "[hosting] enabled, but there is no [ledger] to check who names us as host; holding nobody's mail"
        );
        return Ok(None);
    }
    let h = Hosting::open(home, cfg.hosting.clone(), ledger.clone(), clock.clone())
        .map_err(io_err("opening the held-mail store"))?;
    tracing::info!(held_for = h.store().recipients(), "mailbox hosting on");
    Ok(Some(h))
}

/// Starts collecting the identities' held mail from their mailbox hosts (with a ledger).
fn spawn_collector<T: crate::transport::Transport>(
    ctx: &Arc<Context>,
    inbound: &Inbound,
    transport: Arc<T>,
    ledger: &NodeLedger,
    cfg: &Config,
    shutdown: &CancellationToken,
) {
    if ledger.config().is_none() {
        return;
    }
    let c = Collector::new(
        ctx.clone(),
        inbound.clone(),
        transport,
        ledger.clone(),
        cfg.hosting.collect_every_secs,
    );
    tokio::spawn(c.run(shutdown.clone()));
}

/// Runs the node on `home` until SIGTERM or SIGINT.
pub async fn run(home: &Path, config: Config) -> Result<(), RuntimeError> {
    let _lock = lock::HomeLock::acquire(home)?;
    let ctx = Arc::new(Context::open(home, config)?);
    let cfg = ctx.config().clone();
    let queue = Arc::new(Queue::open(&home.join("spool")).map_err(io_err("opening the spool"))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let ledger = NodeLedger::open(home, cfg.ledger.as_ref())?;
    match ledger.config() {
        Some(l) => {
            tracing::info!(chain = %l.chain_id, endpoints = ?l.endpoints, "ledger configured: list mail on, end-to-end keys checked against it")
        }
        None => tracing::info!(
            "no [ledger] configuration: one-to-one mail only, signed but not encrypted; list mail is refused until one is configured"
        ),
    }
    let e2e = E2e::new(ledger.clone(), cfg.e2e.clone());
    let monitor = {
        let (ctx, e2e) = (ctx.clone(), e2e.clone());
        tokio::task::spawn_blocking(move || {
            let interval = e2e.monitor_interval();
            Monitor::new(ctx, e2e, interval)
        })
        .await
        .expect("reading the ledger watch state")
    };
    tokio::spawn(monitor.clone().run(shutdown.clone()));
    let lists = Lists::new(
        ledger.clone(),
        ctx.clone(),
        queue.clone(),
        clock.clone(),
        e2e.clone(),
    );
    tokio::spawn(lists.clone().run(shutdown.clone()));
    let mut inbound = Inbound::with_lists(ctx.clone(), lists.clone()).with_e2e(e2e.clone());
    let hosting = open_hosting(home, &cfg, &ledger, &clock)?;
    if let Some(h) = &hosting {
        tokio::spawn(
            h.clone()
                .sweep(queue.clone(), ctx.clone(), shutdown.clone()),
        );
        inbound = inbound.with_hosting(h.clone());
    }
    let fallback = ledger
        .config()
        .map(|_| Fallback::new(ledger.clone(), cfg.queue.hosts_after_secs));
    let submission = Arc::new(Submission::with_lists(
        ctx.clone(),
        queue.clone(),
        clock.clone(),
        lists.clone(),
    ));
    let timing = Timing {
        idle: cfg.limits.idle_timeout(),
        deadline: cfg.limits.session_timeout(),
    };
    let mut listeners = BTreeMap::new();

    if let Some(addr) = cfg.smtp.listen {
        let (l, limit) = open_listener("smtp", addr, &cfg, &mut listeners).await?;
        if cfg.transport.kind == TransportKind::Onion {
            tracing::warn!(%addr, "the [smtp] listener accepts mail for every identity of this node, which links them for anyone who can reach it; leave it out with the onion transport");
        }
        let svc = Arc::new(InboundService {
            inbound: inbound.clone(),
            scope: Scope::AllHosted,
        });
        // Never the host's name; the same for every node.
        let sc = session_config(&cfg, Mode::Inbound, "onion".into());
        spawn_smtp(l, "smtp", limit, svc, sc, timing, &shutdown, &tasks);
    }
    if let Some(addr) = cfg.submission.listen {
        let (l, limit) = open_listener("submission", addr, &cfg, &mut listeners).await?;
        let svc = Arc::new(SubmissionService(submission.clone()));
        let sc = session_config(&cfg, Mode::Submission, "localhost".into());
        spawn_smtp(l, "submission", limit, svc, sc, timing, &shutdown, &tasks);
    }
    if let Some(addr) = cfg.imap.listen {
        let (l, limit) = open_listener("imap", addr, &cfg, &mut listeners).await?;
        let accounts: Arc<dyn imap::session::Accounts + Send + Sync> =
            Arc::new(ContextAccounts(ctx.clone()));
        let max_literal = cfg.limits.max_message_size.min(u32::MAX as usize) as u32;
        let stop = shutdown.clone();
        tokio::spawn(listener::serve(
            l,
            ListenerSpec {
                name: "imap",
                limit,
                busy: imap::server::BUSY,
            },
            shutdown.clone(),
            tasks.clone(),
            move |stream, _| {
                let (accounts, stop) = (accounts.clone(), stop.clone());
                async move {
                    if let Err(e) = imap::server::handle(stream, accounts, max_literal, &stop).await
                    {
                        tracing::debug!("session ended: {e}");
                    }
                }
            },
        ));
    }

    let tor = match cfg.transport.kind {
        TransportKind::Direct => {
            let mut map = HashMap::new();
            for (name, addr) in &cfg.transport.direct {
                let onion: OnionAddress = name.parse().map_err(|e| RuntimeError::DirectRoute {
                    name: name.clone(),
                    why: format!("{e}"),
                })?;
                map.insert(onion, *addr);
            }
            let transport = Arc::new(DirectTransport::new(map));
            let runner = Runner::new(
                queue.clone(),
                ctx.clone(),
                inbound.clone(),
                transport.clone(),
                clock.clone(),
                e2e.clone(),
                fallback.clone(),
            );
            tokio::spawn(runner.run(shutdown.clone(), tasks.clone()));
            spawn_collector(&ctx, &inbound, transport, &ledger, &cfg, &shutdown);
            None
        }
        TransportKind::Onion => {
            let limits = Arc::new(ServiceLimits {
                max: cfg.limits.max_connections,
                ..Default::default()
            });
            let (inb, cfg2, stop, tracked) = (
                inbound.clone(),
                cfg.clone(),
                shutdown.clone(),
                tasks.clone(),
            );
            let handler: StreamHandler = Arc::new(move |onion, mut stream| {
                let limit = limits.get(onion);
                let svc = InboundService {
                    inbound: inb.clone(),
                    scope: Scope::Identity(onion),
                };
                let sc = session_config(&cfg2, Mode::Inbound, onion.hostname());
                let stop = stop.clone();
                Box::pin(tracked.track_future(async move {
                    let span = tracing::info_span!("onion-smtp", %onion);
                    let _e = span.enter();
                    let Some(_permit) = limit.try_acquire() else {
                        tracing::warn!("connection cap of the onion service reached; refusing");
                        let _ = stream.write_all(BUSY).await;
                        let _ = stream.flush().await;
                        return;
                    };
                    drop(_e);
                    if let Err(e) = smtp::server::handle(stream, &svc, sc, timing, &stop).await {
                        tracing::debug!(%onion, "onion SMTP session ended: {e}");
                    }
                }))
            });
            let t = OnionTransport::new(&cfg.transport.onion, &home.join("arti"), handler);
            for h in ctx.identities().iter() {
                t.add(&h.identity)?;
            }
            let runner = Runner::new(
                queue.clone(),
                ctx.clone(),
                inbound.clone(),
                t.clone(),
                clock.clone(),
                e2e.clone(),
                fallback.clone(),
            );
            tokio::spawn(runner.run(shutdown.clone(), tasks.clone()));
            spawn_collector(&ctx, &inbound, t.clone(), &ledger, &cfg, &shutdown);
            Some(t)
        }
    };

    let live = Arc::new(Live {
        ctx: ctx.clone(),
        queue: queue.clone(),
        clock: clock.clone(),
        listeners: listeners.clone(),
        tor,
        monitor,
        hosting,
    });
    let handler: control::Handler = {
        let live = live.clone();
        Arc::new(move |req| {
            let live = live.clone();
            Box::pin(async move {
                match req {
                    Request::Status => Answer::Status(live.status()),
                    Request::Reload => live.reload().await,
                }
            })
        })
    };
    control::serve(home, handler, shutdown.clone())
        .await
        .map_err(io_err("binding the control socket"))?;
    let bound: BTreeMap<&String, SocketAddr> =
        listeners.iter().map(|(k, (a, _))| (k, *a)).collect();
    tracing::info!(listeners = ?bound, identities = ctx.identities().len(), transport = ?cfg.transport.kind, "node running");

    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; finishing running sessions and deliveries");
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "drain time over; exiting (interrupted deliveries will be retried)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
