//! The host's side of `HELD/1` ([`super::protocol`]): a connection handed over by an SMTP
//! session after `XHELD`. It sends a fresh challenge, checks the collector's signature, then
//! lists, sends and, on `ACK`, durably deletes what it holds for that recipient only.
//!
//! A message is deleted only on the collector's `ACK` of its id, which the collector sends
//! after it stored the message durably; a connection that breaks before then leaves it held,
//! and it is sent again next time (the collector drops the copy it already has).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use onionpost_ledger_client::IdentityKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::protocol::{self, Answer, Command};
use super::store::HeldStore;

/// How long the host waits for a collector's next command.
pub const IDLE: Duration = Duration::from_secs(120);

/// Reads CRLF lines from a stream, starting with bytes already read.
pub(crate) struct Lines<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    pub(crate) fn new(stream: S, buffered: Vec<u8>) -> Self {
        Self {
            stream,
            buf: buffered,
        }
    }

    /// The next line without its line end; `None` at the end of the stream.
    pub(crate) async fn line(&mut self, idle: Duration) -> io::Result<Option<String>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
            }
            if self.buf.len() > protocol::MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(idle, self.stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer silent"))??;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Exactly `n` bytes (after what is buffered).
    pub(crate) async fn bytes(&mut self, n: usize, idle: Duration) -> io::Result<Vec<u8>> {
        let mut out: Vec<u8> = self.buf.drain(..n.min(self.buf.len())).collect();
        while out.len() < n {
            let mut chunk = vec![0u8; (n - out.len()).min(64 * 1024)];
            let got = tokio::time::timeout(idle, self.stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer silent"))??;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out.extend_from_slice(&chunk[..got]);
        }
        Ok(out)
    }

    /// Writes and flushes.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(l: &mut Lines<S>, a: Answer) -> io::Result<()> {
    l.send(protocol::format_answer(&a).as_bytes()).await
}

/// Runs the host's side of one collection. `hosts` are the identities this connection
/// speaks for (its onion service's, or every hosted one on the loopback test listener).
pub async fn serve<S>(
    stream: S,
    buffered: Vec<u8>,
    store: Arc<HeldStore>,
    hosts: Vec<IdentityKey>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut l = Lines::new(stream, buffered);
    let challenge: [u8; 32] = rand::random();
    answer(&mut l, Answer::Challenge(challenge)).await?;
    let mut who: Option<IdentityKey> = None;
    while let Some(line) = l.line(IDLE).await? {
        let cmd = match protocol::parse(&line) {
            Ok(c) => c,
            Err(why) => {
                answer(&mut l, Answer::Err(why)).await?;
                continue;
            }
        };
        match (cmd, who) {
            (
                Command::Auth {
                    recipient,
                    host,
                    signature,
                },
                None,
            ) => {
                let (r, h) = (recipient.public_key(), host.public_key());
                if !hosts.contains(&h) || !protocol::check_signature(&h, &r, &challenge, &signature)
                {
                    tracing::info!(%recipient, "collection refused: bad signature");
                    answer(&mut l, Answer::Err("authentication failed".into())).await?;
                    return Ok(());
                }
                let n = store.list(&r).len();
                tracing::info!(%recipient, held = n, "collector authenticated");
                who = Some(r);
                answer(&mut l, Answer::Ok(n.to_string())).await?;
            }
            (Command::Auth { .. }, Some(_)) => {
                answer(&mut l, Answer::Err("already authenticated".into())).await?;
            }
            (Command::Quit, _) => {
                answer(&mut l, Answer::Ok("bye".into())).await?;
                return Ok(());
            }
            (_, None) => {
                answer(&mut l, Answer::Err("AUTH first".into())).await?;
            }
            (Command::List, Some(r)) => {
                let held = store.list(&r);
                let mut out = String::new();
                for (id, size) in &held {
                    out += &protocol::format_answer(&Answer::Entry(id.clone(), *size));
                }
                out += &protocol::format_answer(&Answer::Ok(held.len().to_string()));
                l.send(out.as_bytes()).await?;
            }
            (Command::Fetch(id), Some(r)) => {
                let s = store.clone();
                let id2 = id.clone();
                let read = tokio::task::spawn_blocking(move || s.read(&r, &id2))
                    .await
                    .map_err(io::Error::other)?;
                match read {
                    Ok(bytes) => {
                        let mut out =
                            protocol::format_answer(&Answer::Data(bytes.len() as u64)).into_bytes();
                        out.extend_from_slice(&bytes);
                        l.send(&out).await?;
                    }
                    Err(e) => {
                        tracing::debug!(%id, "fetch: {e}");
                        answer(&mut l, Answer::Err(format!("no such message: {id}"))).await?;
                    }
                }
            }
            (Command::Ack(id), Some(r)) => {
                let s = store.clone();
                let id2 = id.clone();
                let deleted = tokio::task::spawn_blocking(move || s.delete(&r, &id2))
                    .await
                    .map_err(io::Error::other)?;
                match deleted {
                    Ok(true) => {
                        tracing::info!(%id, "held message collected and deleted");
                        answer(&mut l, Answer::Ok("deleted".into())).await?
                    }
                    // Deleted before (an ACK whose answer was lost): the collector has it.
                    Ok(false) => answer(&mut l, Answer::Ok("not held".into())).await?,
                    Err(e) => {
                        tracing::error!(%id, "deleting a collected message: {e}");
                        answer(&mut l, Answer::Err("could not delete; try again".into())).await?
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosting::check::Limits;
    use ed25519_consensus::SigningKey;
    use onionpost_proto::onion::OnionAddress;

    const LIMITS: Limits = Limits {
        max_messages_per_recipient: 10,
        max_bytes_per_recipient: 1000,
        max_messages_per_sender: 10,
        max_bytes_per_sender: 1000,
    };

    async fn next<S: AsyncRead + AsyncWrite + Unpin>(l: &mut Lines<S>) -> Answer {
        let line = l.line(IDLE).await.unwrap().expect("an answer");
        protocol::parse_answer(&line).unwrap_or_else(|| panic!("{line:?}"))
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(l: &mut Lines<S>, c: Command) -> Answer {
        l.send(protocol::format(&c).as_bytes()).await.unwrap();
        next(l).await
    }

    #[tokio::test]
    async fn only_the_signed_recipient_collects_and_only_acked_mail_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(HeldStore::open(dir.path()).unwrap());
        let key = SigningKey::new(rand_core::OsRng);
        let me = OnionAddress::from_public_key(key.verification_key().to_bytes());
        let host = OnionAddress::from_public_key([9; 32]);
        let (r, h) = (me.public_key(), host.public_key());
        let id = store
            .hold(&r, ("b@x", "s@s.onion", "h"), b"one", 1.0, &LIMITS)
            .unwrap();
        store
            .hold(&r, ("b@x", "s@s.onion", "h"), b"two", 2.0, &LIMITS)
            .unwrap();
        store
            .hold(
                &[1; 32],
                ("c@y", "s@s.onion", "h"),
                b"not yours",
                3.0,
                &LIMITS,
            )
            .unwrap();

        // A wrong signature ends the session.
        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, Vec::new(), store.clone(), vec![h]));
        let mut l = Lines::new(client, Vec::new());
        let Answer::Challenge(ch) = next(&mut l).await else {
            panic!("no challenge")
        };
        let other = SigningKey::new(rand_core::OsRng);
        let bad = Command::Auth {
            recipient: me,
            host,
            signature: protocol::sign_challenge(&other, &h, &ch),
        };
        assert!(matches!(command(&mut l, bad).await, Answer::Err(_)));
        task.await.unwrap().unwrap();

        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, Vec::new(), store.clone(), vec![h]));
        let mut l = Lines::new(client, Vec::new());
        let Answer::Challenge(ch) = next(&mut l).await else {
            panic!("no challenge")
        };
        assert!(
            matches!(command(&mut l, Command::List).await, Answer::Err(_)),
            "AUTH first"
        );
        let auth = Command::Auth {
            recipient: me,
            host,
            signature: protocol::sign_challenge(&key, &h, &ch),
        };
        assert_eq!(command(&mut l, auth).await, Answer::Ok("2".into()));
        l.send(b"LIST\r\n").await.unwrap();
        let mut listed = Vec::new();
        loop {
            match next(&mut l).await {
                Answer::Entry(i, _) => listed.push(i),
                Answer::Ok(_) => break,
                a => panic!("{a:?}"),
            }
        }
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], id);
        assert_eq!(
            command(&mut l, Command::Fetch(id.clone())).await,
            Answer::Data(3)
        );
        assert_eq!(l.bytes(3, IDLE).await.unwrap(), b"one");
        // Fetched but not acknowledged: still held.
        assert_eq!(store.list(&r).len(), 2);
        assert_eq!(
            command(&mut l, Command::Ack(id.clone())).await,
            Answer::Ok("deleted".into())
        );
        assert_eq!(
            command(&mut l, Command::Ack(id.clone())).await,
            Answer::Ok("not held".into())
        );
        assert!(matches!(
            command(&mut l, Command::Fetch("../x".into())).await,
            Answer::Err(_)
        ));
        assert_eq!(
            command(&mut l, Command::Quit).await,
            Answer::Ok("bye".into())
        );
        task.await.unwrap().unwrap();
        assert_eq!(store.list(&r).len(), 1);
        assert_eq!(store.list(&[1; 32]).len(), 1, "another's mail untouched");
    }
}
