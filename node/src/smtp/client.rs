//! A small outbound SMTP client: one transaction per connection over any byte stream, with
//! per-recipient results so the queue knows who got the message.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Text of all lines, joined with spaces.
    pub text: String,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility (250 after DATA).
    Delivered,
    /// Refused for good (5xx).
    Permanent(String),
    /// Try again later (4xx).
    Temporary(String),
}

/// Errors that end the whole session (all recipients: try again later).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection trouble.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("timeout waiting for the server")]
    Timeout,
    /// The server spoke something that is not SMTP.
    #[error("protocol error: {0}")]
    Protocol(String),
}

struct Conn<S> {
    io: BufReader<S>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.io.read_line(&mut line))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if n == 0 {
                return Err(ClientError::Protocol("connection closed".into()));
            }
            let line = line.trim_end();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| ClientError::Protocol(format!("bad reply line {line:?}")))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<Reply, ClientError> {
        self.io.get_mut().write_all(cmd.as_bytes()).await?;
        self.io.get_mut().write_all(b"\r\n").await?;
        self.io.get_mut().flush().await?;
        self.read_reply().await
    }
}

/// Dot-stuffs a message and normalises line ends to CRLF, ending with `CRLF.CRLF`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn failure(r: &Reply) -> RcptOutcome {
    if r.is_permanent() {
        RcptOutcome::Permanent(r.to_string())
    } else {
        RcptOutcome::Temporary(r.to_string())
    }
}

/// An SMTP client connection that can carry several transactions.
pub struct Client<S> {
    conn: Conn<S>,
    /// A transaction was started and not finished: send RSET before the next one.
    dirty: bool,
}

/// Why [`Client::connect`] did not produce a usable connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused us in its greeting or EHLO/HELO reply.
    #[error("refused: {0}")]
    Refused(Reply),
    /// Transport or protocol failure.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ConnectError {
    /// The outcome this means for every recipient.
    pub fn outcome(&self) -> RcptOutcome {
        match self {
            ConnectError::Refused(r) => failure(r),
            ConnectError::Client(e) => RcptOutcome::Temporary(e.to_string()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting and introduces itself as `helo` (EHLO, falling back to HELO).
    pub async fn connect(stream: S, helo: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let mut conn = Conn {
            io: BufReader::new(stream),
            timeout,
        };
        let greeting = conn.read_reply().await?;
        if !greeting.is_positive() {
            return Err(ConnectError::Refused(greeting));
        }
        let mut r = conn.command(&format!("EHLO {helo}")).await?;
        if !r.is_positive() {
            r = conn.command(&format!("HELO {helo}")).await?;
            if !r.is_positive() {
                return Err(ConnectError::Refused(r));
            }
        }
        Ok(Client { conn, dirty: false })
    }

    /// One transaction: MAIL, RCPT each, DATA. Returns one outcome per recipient, in order.
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        data: &[u8],
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let c = &mut self.conn;
        if self.dirty {
            c.command("RSET").await?;
        }
        self.dirty = true;
        let r = c.command(&format!("MAIL FROM:<{from}>")).await?;
        if !r.is_positive() {
            return Ok(vec![failure(&r); recipients.len()]);
        }
        let mut outcomes = Vec::with_capacity(recipients.len());
        for rcpt in recipients {
            let r = c.command(&format!("RCPT TO:<{rcpt}>")).await?;
            outcomes.push(if r.is_positive() {
                None
            } else {
                Some(failure(&r))
            });
        }
        if outcomes.iter().all(Option::is_some) {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let r = c.command("DATA").await?;
        if r.code != 354 {
            return Ok(outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| failure(&r)))
                .collect());
        }
        c.io.get_mut().write_all(&dot_stuff(data)).await?;
        c.io.get_mut().flush().await?;
        let r = c.read_reply().await?;
        self.dirty = false;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    if r.is_positive() {
                        RcptOutcome::Delivered
                    } else {
                        failure(&r)
                    }
                })
            })
            .collect())
    }

    /// Says QUIT (best effort).
    pub async fn quit(mut self) {
        let _ = self.conn.command("QUIT").await;
    }
}

/// Sends one message over `stream`: greeting, EHLO `helo`, MAIL, RCPT each, DATA, QUIT.
/// Returns one outcome per recipient, in order.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    helo: &str,
    from: &str,
    recipients: &[String],
    data: &[u8],
    timeout: Duration,
) -> Result<Vec<RcptOutcome>, ClientError> {
    let mut client = match Client::connect(stream, helo, timeout).await {
        Ok(c) => c,
        Err(ConnectError::Refused(r)) => return Ok(vec![failure(&r); recipients.len()]),
        Err(ConnectError::Client(e)) => return Err(e),
    };
    let out = client.send(from, recipients, data).await?;
    client.quit().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\n.b\r\nc"), b"..a\r\n..b\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\n"), b"x\r\n.\r\n");
    }

    #[tokio::test]
    async fn talks_to_a_scripted_server() {
        let (client, server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server);
            let mut r = BufReader::new(r);
            let mut log = Vec::new();
            w.write_all(b"220 hi\r\n").await.unwrap();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                log.push(line.clone());
                let reply: &[u8] = if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        b"250 ok\r\n"
                    } else {
                        continue;
                    }
                } else if line.starts_with("EHLO") {
                    b"250-x\r\n250 SIZE 10\r\n"
                } else if line.starts_with("RCPT TO:<bad") {
                    b"550 5.1.1 no\r\n"
                } else if line.starts_with("DATA") {
                    in_data = true;
                    b"354 go\r\n"
                } else if line.starts_with("QUIT") {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                } else {
                    b"250 ok\r\n"
                };
                w.write_all(reply).await.unwrap();
            }
            log
        });
        let out = send(
            client,
            "me.onion",
            "a@me.onion",
            &["good@x".into(), "bad@x".into()],
            b"Subject: t\r\n\r\n.hi\r\n",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out[0], RcptOutcome::Delivered);
        assert!(matches!(out[1], RcptOutcome::Permanent(_)));
        let log = srv.await.unwrap();
        assert_eq!(log[0], "EHLO me.onion\r\n");
        assert!(log.contains(&"..hi\r\n".to_string()));
    }
}
