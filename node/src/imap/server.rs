//! The tokio edge of the IMAP server: one task per connection shuttling bytes between the
//! socket and a [`Session`], waking IDLE sessions when their mailbox changes.
//!
//! The session reads and writes the mailbox (the [`MailStore`](crate::store::MailStore) seam
//! blocks on the disk: reads, renames, fsyncs), so every call into it runs on tokio's blocking
//! pool; a slow disk then stalls only this connection, never the async workers that serve
//! the others.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::session::{Accounts, Session};

/// RFC 3501 §5.4: the autologout timer is at least 30 minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a connection over the listener's cap is sent.
pub const BUSY: &[u8] = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n";

type Shared = Arc<dyn Accounts + Send + Sync>;

/// Runs `f` on the session on a blocking thread and gives the session back.
async fn blocking(
    mut session: Session<Shared>,
    f: impl FnOnce(&mut Session<Shared>) + Send + 'static,
) -> std::io::Result<Session<Shared>> {
    tokio::task::spawn_blocking(move || {
        f(&mut session);
        session
    })
    .await
    .map_err(std::io::Error::other)
}

/// Serves one IMAP connection until the client logs out, goes silent, or `shutdown`.
pub async fn handle(
    mut stream: TcpStream,
    accounts: Shared,
    max_literal: u32,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut session = Session::new(accounts, max_literal);
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
                Ok(Ok(n)) => {
                    let bytes = buf[..n].to_vec();
                    session = blocking(session, move |s| s.receive(&bytes)).await?;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => session.timeout(),
            },
            Ok(()) = async { changes.as_mut().expect("checked").changed().await }, if idling && changes.is_some() => {
                session = blocking(session, |s| s.mailbox_changed()).await?;
            }
            () = shutdown.cancelled() => session.shutdown(),
        }
    }
}
