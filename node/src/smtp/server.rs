//! The tokio edge of the SMTP server: feeds bytes to a [`Session`], performs its effects
//! through a [`Service`] (the delivery stages), and enforces the idle timeout, the
//! whole-session deadline and shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::reply::{Reply, ReplyExt};
use super::session::{Envelope, Output, Policy, Session, SessionConfig};

/// What a listener does with its sessions: the policy of a new session, and where its
/// complete messages go.
pub trait Service: Send + Sync + 'static {
    /// The session policy.
    type Policy: Policy + Send;
    /// The policy for a session starting now.
    fn policy(&self) -> Self::Policy;
    /// Stores or queues a message durably; `Ok` only once it is (the client's 250 waits).
    fn accept(&self, env: Envelope) -> impl Future<Output = Result<(), Reply>> + Send;
    /// Takes over a connection whose session said `XHELD` (only when the policy allows it),
    /// with the bytes the client sent after it. Default: closes it.
    fn handover<S>(
        &self,
        stream: S,
        buffered: Vec<u8>,
    ) -> impl Future<Output = std::io::Result<()>> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        drop((stream, buffered));
        async { Ok(()) }
    }
}

/// Timing limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Client silence before 421.
    pub idle: Duration,
    /// Longest whole session (a slow-drip client is closed).
    pub deadline: Duration,
}

/// What a connection over the listener's cap is sent.
pub const BUSY: &[u8] = b"421 4.7.0 Too many connections, try again later\r\n";

/// Runs one SMTP session over any byte stream (a TCP connection, or an onion-service stream
/// whose greeting names the identity's own onion in `cfg.hostname`).
pub async fn handle<S, V>(
    stream: S,
    service: &V,
    cfg: SessionConfig,
    timing: Timing,
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: Service,
{
    let session = Session::new(cfg, service.policy());
    let greeting = session.greeting();
    run(
        stream,
        service,
        session,
        vec![greeting],
        timing,
        shutdown,
        false,
    )
    .await
    .map(drop)
}

/// Like [`handle`], but a session that hands over (after STARTTLS: the only handover a
/// policy that offers STARTTLS and no collection can make) gives the stream back, for the
/// caller's TLS handshake and then [`resume`].
pub async fn handle_until_starttls<S, V>(
    stream: S,
    service: &V,
    cfg: SessionConfig,
    timing: Timing,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: Service,
{
    let session = Session::new(cfg, service.policy());
    let greeting = session.greeting();
    run(
        stream,
        service,
        session,
        vec![greeting],
        timing,
        shutdown,
        true,
    )
    .await
}

/// Runs a fresh SMTP session over a stream that just became TLS after STARTTLS: no
/// greeting, the client says EHLO again (RFC 3207 4.2).
pub async fn resume<S, V>(
    stream: S,
    service: &V,
    cfg: SessionConfig,
    timing: Timing,
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: Service,
{
    let session = Session::new(cfg, service.policy());
    run(
        stream,
        service,
        session,
        Vec::new(),
        timing,
        shutdown,
        false,
    )
    .await
    .map(drop)
}

async fn run<S, V>(
    mut stream: S,
    service: &V,
    mut session: Session<V::Policy>,
    mut pending: Vec<Output>,
    timing: Timing,
    shutdown: &CancellationToken,
    give_back: bool,
) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: Service,
{
    let deadline = tokio::time::Instant::now() + timing.deadline;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Perform effects until only replies are left.
        while !pending.is_empty() {
            let mut out = Vec::new();
            for o in std::mem::take(&mut pending) {
                match o {
                    Output::Reply(r) => r.encode(&mut out),
                    Output::Close => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(None);
                    }
                    Output::Handover(rest) => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        if give_back {
                            return Ok(Some(stream));
                        }
                        return service.handover(stream, rest).await.map(|()| None);
                    }
                    Output::Deliver(env) => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        out.clear();
                        let result = service.accept(env).await;
                        pending.extend(session.delivered(result));
                    }
                }
            }
            stream.write_all(&out).await?;
            // Onion streams buffer writes until flushed.
            stream.flush().await?;
        }
        let read = tokio::select! {
            r = tokio::time::timeout(timing.idle, stream.read(&mut buf)) => r,
            () = tokio::time::sleep_until(deadline) => {
                pending = session.deadline();
                continue;
            }
            () = shutdown.cancelled() => {
                pending = session.shutdown();
                continue;
            }
        };
        let n = match read {
            Ok(r) => r?,
            Err(_) => {
                pending = session.timeout();
                continue;
            }
        };
        if n == 0 {
            return Ok(None);
        }
        pending = session.receive(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::reply;
    use crate::smtp::session::Mode;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, BufReader};

    struct Everyone;
    impl Policy for Everyone {
        fn accepts(&self, _: &str) -> bool {
            true
        }
        fn authenticate(&self, _: &str, _: &str) -> Option<String> {
            None
        }
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Envelope>>);
    impl Service for Arc<Collect> {
        type Policy = Everyone;
        fn policy(&self) -> Everyone {
            Everyone
        }
        async fn accept(&self, env: Envelope) -> Result<(), Reply> {
            if env.data.starts_with(b"FULL") {
                return Err(reply(452, [4, 2, 2], "Mailbox full"));
            }
            self.0.lock().unwrap().push(env);
            Ok(())
        }
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            mode: Mode::Inbound,
            hostname: "me.onion".into(),
            max_message_size: 1000,
            max_recipients: 10,
            max_line_length: 512,
        }
    }

    async fn run(
        timing: Timing,
    ) -> (
        Arc<Collect>,
        BufReader<tokio::io::DuplexStream>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let svc = Arc::new(Collect::default());
        let token = CancellationToken::new();
        let (s2, t2) = (svc.clone(), token.clone());
        let task = tokio::spawn(async move {
            let _ = handle(server, &s2, cfg(), timing, &t2).await;
        });
        (svc, BufReader::new(client), token, task)
    }

    async fn line(r: &mut BufReader<tokio::io::DuplexStream>) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l))
            .await
            .expect("a reply in time")
            .unwrap();
        l
    }

    const LONG: Timing = Timing {
        idle: Duration::from_secs(60),
        deadline: Duration::from_secs(600),
    };

    #[tokio::test]
    async fn pipelined_transaction_then_a_store_refusal_is_passed_on() {
        let (svc, mut c, _t, _task) = run(LONG).await;
        assert!(line(&mut c).await.starts_with("220 me.onion"));
        c.get_mut()
            .write_all(
                b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n\
                  MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nFULL\r\n.\r\nQUIT\r\n",
            )
            .await
            .unwrap();
        let mut replies = Vec::new();
        loop {
            let l = line(&mut c).await;
            if l.is_empty() {
                break;
            }
            replies.push(l);
        }
        let codes: Vec<&str> = replies
            .iter()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            [
                "250", "250", "250", "354", "250", "250", "250", "354", "452", "221"
            ]
        );
        assert!(replies.iter().any(|l| l == "452 4.2.2 Mailbox full\r\n"));
        assert_eq!(svc.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn slow_drip_client_is_closed_at_the_deadline() {
        let timing = Timing {
            idle: Duration::from_secs(2),
            deadline: Duration::from_secs(3),
        };
        let (_svc, mut c, _t, task) = run(timing).await;
        line(&mut c).await;
        let started = tokio::time::Instant::now();
        // One byte every second never trips the 2 s idle timeout ...
        let drip = async {
            for b in b"NOOP NOOP NOOP NOOP NOOP" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if c.get_mut().write_all(&[*b]).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
        // ... but the session ends at its 3 s deadline.
        assert!(line(&mut c).await.starts_with("421 4.4.2"));
        assert!(started.elapsed() < Duration::from_secs(5));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_says_421_to_an_idle_client() {
        let (_svc, mut c, token, task) = run(LONG).await;
        line(&mut c).await;
        token.cancel();
        assert!(line(&mut c).await.starts_with("421 4.3.2"));
        task.await.unwrap();
    }
}
