//! The tokio edge of the IMAP server: one task per connection shuttling bytes between the
//! socket and a [`Session`], waking IDLE sessions when their mailbox changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::session::{Accounts, Session};
use crate::maildir::Maildir;
use crate::node::Node;

/// RFC 3501 §5.4: the autologout timer is at least 30 minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

struct NodeAccounts(Arc<Node>);

impl Accounts for NodeAccounts {
    fn login(&self, user: &str, password: &str) -> Option<Arc<Maildir>> {
        self.0.login(user, password).map(|h| h.maildir.clone())
    }
}

/// Accepts IMAP connections forever.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let node = node.clone();
                let span = tracing::info_span!("imap", %peer);
                tokio::spawn(
                    async move {
                        if let Err(e) = handle(stream, node).await {
                            tracing::debug!("connection ended: {e}");
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, node: Arc<Node>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let max = node.config.limits.max_message_size.min(u32::MAX as usize) as u32;
    let mut session = Session::new(NodeAccounts(node), max);
    let mut changes = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let out = session.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if session.is_closed() {
            return Ok(());
        }
        if changes.is_none() {
            changes = session.mailbox().map(|m| m.subscribe());
        }
        let idling = session.is_idling();
        tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => session.receive(&buf[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_) => session.timeout(),
            },
            Ok(()) = async { changes.as_mut().expect("checked").changed().await }, if idling && changes.is_some() => {
                session.mailbox_changed();
            }
        }
    }
}
