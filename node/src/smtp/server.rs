//! The tokio edge of the SMTP server: accepts connections, feeds bytes to a
//! [`Session`](super::session::Session), performs its effects (durable store for inbound mail,
//! spooling for submission) and enforces the idle timeout.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::Instrument;

use super::session::{DeliveryFailure, Envelope, Mode, Output, Policy, Session, SessionConfig};
use crate::message;
use crate::node::Node;

/// The node as seen by an SMTP session.
struct NodePolicy(Arc<Node>);

impl Policy for NodePolicy {
    fn is_local(&self, address: &str) -> bool {
        self.0.by_address(address).is_some()
    }
    fn authenticate(&self, user: &str, password: &str) -> Option<String> {
        self.0.login(user, password).map(|h| h.identity.address())
    }
}

/// Accepts connections forever.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mode: Mode) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let node = node.clone();
                let span = tracing::info_span!("smtp", ?mode, %peer);
                tokio::spawn(
                    async move {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!("set_nodelay: {e}");
                        }
                        // Never the host's name; the same for every node.
                        let hostname = match mode {
                            Mode::Inbound => "onion",
                            Mode::Submission => "localhost",
                        };
                        if let Err(e) = handle(stream, node, mode, hostname.into()).await {
                            tracing::debug!("connection ended: {e}");
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs one SMTP session over any byte stream (a TCP connection, or an onion-service stream
/// whose greeting names the identity's own onion as `hostname`).
pub async fn handle<S>(
    mut stream: S,
    node: Arc<Node>,
    mode: Mode,
    hostname: String,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = node.config.limits.clone();
    let cfg = SessionConfig {
        mode,
        hostname,
        max_message_size: limits.max_message_size,
        max_recipients: limits.max_recipients,
        max_line_length: limits.max_line_length,
    };
    let mut session = Session::new(cfg, NodePolicy(node.clone()));
    let mut pending = vec![session.greeting()];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Perform effects until only replies are left.
        while !pending.is_empty() {
            let mut out = Vec::new();
            for o in std::mem::take(&mut pending) {
                match o {
                    Output::Reply(r) => out.extend_from_slice(r.as_bytes()),
                    Output::Close => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(());
                    }
                    Output::Deliver(env) => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        out.clear();
                        let result = accept_message(&node, mode, env).await;
                        pending.extend(session.delivered(result));
                    }
                }
            }
            stream.write_all(&out).await?;
            // Onion streams buffer writes until flushed.
            stream.flush().await?;
        }
        let n = match tokio::time::timeout(limits.idle_timeout(), stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                pending = session.timeout();
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        pending = session.receive(&buf[..n]);
    }
}

/// Stores (inbound) or queues (submission) a message durably.
async fn accept_message(
    node: &Arc<Node>,
    mode: Mode,
    env: Envelope,
) -> Result<(), DeliveryFailure> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || match mode {
        Mode::Inbound => store_inbound(&node, &env),
        Mode::Submission => queue_submission(&node, env),
    })
    .await
    .map_err(|e| DeliveryFailure::Temporary(e.to_string()))?
}

/// Stores an inbound message in each recipient's mailbox (deduplicated by Message-ID).
pub fn store_inbound(node: &Node, env: &Envelope) -> Result<(), DeliveryFailure> {
    let mid = message::message_id(&env.data);
    for rcpt in &env.recipients {
        let Some(h) = node.by_address(rcpt) else {
            return Err(DeliveryFailure::Permanent(format!("no mailbox {rcpt}")));
        };
        match h.maildir.deliver_dedup(mid.as_deref(), &env.data) {
            Ok(Some(uid)) => tracing::info!(to = %rcpt, uid, "stored"),
            Ok(None) => tracing::info!(to = %rcpt, message_id = ?mid, "duplicate dropped"),
            Err(e) => {
                tracing::error!("storing for {rcpt}: {e}");
                return Err(DeliveryFailure::Temporary("local storage error".into()));
            }
        }
    }
    Ok(())
}

fn queue_submission(node: &Node, env: Envelope) -> Result<(), DeliveryFailure> {
    let addr = env
        .authenticated
        .ok_or_else(|| DeliveryFailure::Permanent("not authenticated".into()))?;
    let h = node
        .by_address(&addr)
        .ok_or_else(|| DeliveryFailure::Permanent("unknown identity".into()))?;
    let data =
        message::sanitize_submission(&env.data, &addr, &h.identity.onion, chrono::Utc::now())
            .map_err(|e| DeliveryFailure::Permanent(e.to_string()))?;
    let q = node
        .spool
        .enqueue(&h.identity.name, &addr, &env.recipients, &data)
        .map_err(|e| {
            tracing::error!("spooling: {e}");
            DeliveryFailure::Temporary("local storage error".into())
        })?;
    tracing::info!(id = %q.id, rcpts = env.recipients.len(), "queued");
    node.queue_wakeup.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::IdentityStore;
    use std::time::Duration;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpStream;

    async fn start(idle_secs: u64) -> (tempfile::TempDir, Arc<Node>, std::net::SocketAddr, String) {
        let home = tempfile::tempdir().unwrap();
        let (id, _) = IdentityStore::new(home.path()).create("bob").unwrap();
        let mut config = Config::default();
        config.limits.idle_timeout_secs = idle_secs;
        let node = Arc::new(Node::open(home.path(), config).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, node.clone(), Mode::Inbound));
        (home, node, addr, id.address())
    }

    #[tokio::test]
    async fn stores_durably_and_deduplicates_by_message_id() {
        let (_home, node, addr, bob) = start(60).await;
        let msg = b"Message-ID: <once@a.onion>\r\nSubject: dedup\r\n\r\nhi\r\n";
        for _ in 0..2 {
            let s = TcpStream::connect(addr).await.unwrap();
            let out = crate::smtp::client::send(
                s,
                "a.onion",
                "a@a.onion",
                std::slice::from_ref(&bob),
                msg,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            assert_eq!(out, [crate::smtp::client::RcptOutcome::Delivered]);
        }
        let md = &node.by_address(&bob).unwrap().maildir;
        assert_eq!(
            md.snapshot().messages.len(),
            1,
            "the retry was deduplicated"
        );
        assert_eq!(md.read(1).unwrap(), msg);
    }

    #[tokio::test]
    async fn idle_client_gets_421() {
        let (_home, _node, addr, _) = start(1).await;
        let s = TcpStream::connect(addr).await.unwrap();
        let mut r = tokio::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("220 "), "{line}");
        line.clear();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(line.starts_with("421 4.4.2"), "{line}");
        line.clear();
        assert_eq!(r.read_line(&mut line).await.unwrap(), 0, "closed after 421");
    }
}
