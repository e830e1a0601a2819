//! The running node: hosted identities with their mailboxes, the spool, the listeners, and the
//! status file that `onionpost-node status` reads.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use onionpost_proto::onion::OnionAddress;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::{Config, TransportKind};
use crate::identity::{Identity, IdentityError, IdentityStore};
use crate::maildir::Maildir;
use crate::spool::Spool;
use crate::transport::DirectTransport;
use crate::{delivery, imap, smtp};

/// Errors starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Identity store trouble.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// File system or socket trouble.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// Bad transport configuration.
    #[error("transport: {0}")]
    Transport(String),
    /// The onion transport did not start.
    #[error(transparent)]
    Onion(#[from] crate::onion::OnionError),
}

/// An identity this node hosts, with its open mailbox.
#[derive(Debug)]
pub struct Hosted {
    /// The identity.
    pub identity: Identity,
    /// Its INBOX.
    pub maildir: Arc<Maildir>,
}

/// State shared by all tasks of a running node.
#[derive(Debug)]
pub struct Node {
    /// The home directory.
    pub home: PathBuf,
    /// The configuration.
    pub config: Config,
    /// Hosted identities.
    pub hosted: Vec<Hosted>,
    /// Outbound queue.
    pub spool: Spool,
    /// Wakes the queue runner when something was queued.
    pub queue_wakeup: Notify,
}

impl Node {
    /// Opens identities, mailboxes and the spool under `home`.
    pub fn open(home: &Path, config: Config) -> Result<Node, NodeError> {
        let io_err = |what: &str| {
            let what = what.to_string();
            move |e| NodeError::Io(what, e)
        };
        let mut hosted = Vec::new();
        for identity in IdentityStore::new(home).list()? {
            let maildir = Maildir::open(&identity.maildir())
                .map_err(io_err(&format!("mailbox of {}", identity.name)))?;
            hosted.push(Hosted {
                identity,
                maildir: Arc::new(maildir),
            });
        }
        let spool = Spool::open(&home.join("spool")).map_err(io_err("spool"))?;
        Ok(Node {
            home: home.to_path_buf(),
            config,
            hosted,
            spool,
            queue_wakeup: Notify::new(),
        })
    }

    /// The hosted identity with this e-mail address (case-insensitive).
    pub fn by_address(&self, address: &str) -> Option<&Hosted> {
        self.hosted
            .iter()
            .find(|h| h.identity.address().eq_ignore_ascii_case(address))
    }

    /// The hosted identity with this name.
    pub fn by_name(&self, name: &str) -> Option<&Hosted> {
        self.hosted.iter().find(|h| h.identity.name == name)
    }

    /// The hosted identity whose onion is `onion`.
    pub fn by_onion(&self, onion: &OnionAddress) -> Option<&Hosted> {
        self.hosted.iter().find(|h| &h.identity.onion == onion)
    }

    /// Checks client credentials (name or address, and password).
    pub fn login(&self, user: &str, password: &str) -> Option<&Hosted> {
        self.hosted
            .iter()
            .find(|h| h.identity.matches_login(user) && h.identity.check_password(password))
    }

    /// The direct transport built from the configuration.
    pub fn direct_transport(&self) -> Result<DirectTransport, NodeError> {
        let mut map = std::collections::HashMap::new();
        for (name, addr) in &self.config.transport.direct {
            let onion: OnionAddress = name
                .parse()
                .map_err(|e| NodeError::Transport(format!("{name}: {e}")))?;
            map.insert(onion, *addr);
        }
        Ok(DirectTransport::new(map))
    }
}

/// What `status` shows; written by the running node to `home/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Process id of the node.
    pub pid: u32,
    /// Hosted identities' addresses.
    pub identities: Vec<String>,
    /// Listener name -> bound address.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Messages in the outbound queue.
    pub queue_length: usize,
    /// Unix time of this snapshot.
    pub updated: f64,
    /// Tor bootstrap and onion services (onion transport only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor: Option<crate::onion::TorStatus>,
}

/// The status file path under a home directory.
pub fn status_path(home: &Path) -> PathBuf {
    home.join("status.json")
}

async fn bind(what: &str, addr: Option<SocketAddr>) -> Result<Option<TcpListener>, NodeError> {
    match addr {
        None => Ok(None),
        Some(a) => TcpListener::bind(a)
            .await
            .map(Some)
            .map_err(|e| NodeError::Io(format!("binding {what} on {a}"), e)),
    }
}

/// Runs the node until the process is stopped: listeners, queue runner, status file.
pub async fn run(node: Arc<Node>) -> Result<(), NodeError> {
    let direct = match node.config.transport.kind {
        TransportKind::Direct => Some(Arc::new(node.direct_transport()?)),
        TransportKind::Onion => None,
    };
    let mut listeners = BTreeMap::new();
    let cfg = node.config.clone();
    if let Some(l) = bind("smtp", cfg.smtp.listen).await? {
        listeners.insert(
            "smtp".to_string(),
            l.local_addr()
                .map_err(|e| NodeError::Io("smtp".into(), e))?,
        );
        tokio::spawn(smtp::server::serve(
            l,
            node.clone(),
            smtp::session::Mode::Inbound,
        ));
    }
    if let Some(l) = bind("submission", cfg.submission.listen).await? {
        listeners.insert(
            "submission".to_string(),
            l.local_addr()
                .map_err(|e| NodeError::Io("submission".into(), e))?,
        );
        tokio::spawn(smtp::server::serve(
            l,
            node.clone(),
            smtp::session::Mode::Submission,
        ));
    }
    if let Some(l) = bind("imap", cfg.imap.listen).await? {
        listeners.insert(
            "imap".to_string(),
            l.local_addr()
                .map_err(|e| NodeError::Io("imap".into(), e))?,
        );
        tokio::spawn(imap::server::serve(l, node.clone()));
    }
    tracing::info!(?listeners, identities = node.hosted.len(), "node running");
    let tor = match direct {
        Some(transport) => {
            tokio::spawn(delivery::run_queue(node.clone(), transport));
            None
        }
        None => {
            let t = crate::onion::OnionTransport::start(node.clone(), &cfg.transport.onion).await?;
            tokio::spawn(delivery::run_queue(node.clone(), t.clone()));
            Some(t)
        }
    };
    let identities: Vec<String> = node.hosted.iter().map(|h| h.identity.address()).collect();
    loop {
        let status = Status {
            pid: std::process::id(),
            identities: identities.clone(),
            listeners: listeners.clone(),
            queue_length: node.spool.len().unwrap_or(0),
            updated: crate::spool::now(),
            tor: tor.as_ref().map(|t| t.status()),
        };
        let json = serde_json::to_vec_pretty(&status).expect("status serializes");
        if let Err(e) = crate::fsutil::write_durable(&status_path(&node.home), &json) {
            tracing::warn!("writing status file: {e}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
