//! The outbound SMTP client: transactions over any byte stream, with per-recipient results so
//! the queue knows who got the message.
//!
//! Replies are read with smtp-proto's `ResponseReceiver`, which bounds a reply (all its lines)
//! to 4 KiB: a hostile server cannot make the client buffer without limit. When the server
//! offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in one write, so a message
//! costs two round trips instead of three plus one per recipient; over an onion circuit a
//! round trip is the expensive part.

use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reply::{Reply, ReplyExt};

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility (250 after DATA).
    Delivered,
    /// The server refused: 4xx (try again later) or 5xx (for good).
    Refused(Reply),
    /// No usable answer (connection or protocol trouble): try again later.
    Unreachable(String),
}

impl RcptOutcome {
    /// Whether this is final (delivered, or refused for good).
    pub fn is_final(&self) -> bool {
        match self {
            RcptOutcome::Delivered => true,
            RcptOutcome::Refused(r) => r.is_permanent(),
            RcptOutcome::Unreachable(_) => false,
        }
    }
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
    /// A reply longer than smtp-proto's limit (4 KiB).
    #[error("the server sent a reply longer than 4 KiB")]
    ReplyTooLong,
    /// The server spoke something that is not SMTP.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The outcome this means for every recipient of the transaction.
    pub fn outcome(&self) -> RcptOutcome {
        RcptOutcome::Unreachable(self.to_string())
    }
}

/// Why [`Client::connect`] did not produce a usable connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused us in its greeting or EHLO/HELO reply.
    #[error("refused: {}", .0.one_line())]
    Refused(Reply),
    /// Transport or protocol failure.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ConnectError {
    /// The outcome this means for every recipient.
    pub fn outcome(&self) -> RcptOutcome {
        match self {
            ConnectError::Refused(r) => RcptOutcome::Refused(r.clone()),
            ConnectError::Client(e) => e.outcome(),
        }
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

/// An SMTP client connection that can carry several transactions.
pub struct Client<S> {
    stream: S,
    rbuf: Vec<u8>,
    receiver: ResponseReceiver,
    timeout: Duration,
    pipelining: bool,
    /// A transaction was started and not finished: send RSET before the next one.
    dirty: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting and introduces itself as `helo` (EHLO, falling back to HELO).
    /// `timeout` bounds every read and write.
    pub async fn connect(stream: S, helo: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let mut c = Client {
            stream,
            rbuf: Vec::new(),
            receiver: ResponseReceiver::default(),
            timeout,
            pipelining: false,
            dirty: false,
        };
        let greeting = c.read_reply().await?;
        if greeting.code != 220 {
            return Err(ConnectError::Refused(greeting));
        }
        let mut r = c.command(&format!("EHLO {helo}")).await?;
        if r.is_positive() {
            c.pipelining = r
                .message
                .lines()
                .skip(1)
                .any(|l| l.trim().eq_ignore_ascii_case("PIPELINING"));
        } else {
            r = c.command(&format!("HELO {helo}")).await?;
            if !r.is_positive() {
                return Err(ConnectError::Refused(r));
            }
        }
        Ok(c)
    }

    /// Whether the server offered PIPELINING.
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let io = async {
            self.stream.write_all(bytes).await?;
            // Onion streams buffer writes until flushed.
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, io)
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            if !self.rbuf.is_empty() {
                let mut it = self.rbuf.iter();
                let parsed = self.receiver.parse(&mut it);
                let consumed = self.rbuf.len() - it.len();
                self.rbuf.drain(..consumed);
                match parsed {
                    Ok(r) => {
                        self.receiver.reset();
                        return Ok(r);
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(smtp_proto::Error::ResponseTooLong) => {
                        return Err(ClientError::ReplyTooLong);
                    }
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if n == 0 {
                return Err(ClientError::Protocol("connection closed".into()));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<Reply, ClientError> {
        self.write(format!("{cmd}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// One transaction: MAIL, RCPT each, DATA. Returns one outcome per recipient, in order.
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        data: &[u8],
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        if self.dirty {
            let r = self.command("RSET").await?;
            if !r.is_positive() {
                return Ok(vec![RcptOutcome::Refused(r); recipients.len()]);
            }
        }
        self.dirty = true;
        let mail = format!("MAIL FROM:<{from}>\r\n");
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();
        let (mail_reply, rcpt_replies, data_reply) = if self.pipelining {
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch).await?;
            let m = self.read_reply().await?;
            let mut rr = Vec::with_capacity(rcpts.len());
            for _ in &rcpts {
                rr.push(self.read_reply().await?);
            }
            let d = self.read_reply().await?;
            (m, rr, Some(d))
        } else {
            let m = self.command(mail.trim_end()).await?;
            if !m.is_positive() {
                return Ok(vec![RcptOutcome::Refused(m); recipients.len()]);
            }
            let mut rr = Vec::with_capacity(rcpts.len());
            for r in &rcpts {
                rr.push(self.command(r.trim_end()).await?);
            }
            let d = if rr.iter().any(ReplyExt::is_positive) {
                Some(self.command("DATA").await?)
            } else {
                None
            };
            (m, rr, d)
        };
        if !mail_reply.is_positive() {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                // RFC 2920 3.1: the server started DATA anyway; end it empty.
                self.write(b".\r\n").await?;
                self.read_reply().await?;
            }
            return Ok(vec![RcptOutcome::Refused(mail_reply); recipients.len()]);
        }
        let accepted: Vec<bool> = rcpt_replies.iter().map(ReplyExt::is_positive).collect();
        let mut outcomes: Vec<Option<RcptOutcome>> = rcpt_replies
            .into_iter()
            .map(|r| (!r.is_positive()).then_some(RcptOutcome::Refused(r)))
            .collect();
        let final_reply = match data_reply {
            Some(d) if d.code == 354 => {
                if accepted.iter().any(|&a| a) {
                    self.write(&dot_stuff(data)).await?;
                } else {
                    self.write(b".\r\n").await?;
                }
                let r = self.read_reply().await?;
                self.dirty = false;
                r
            }
            Some(d) => d,
            None => return Ok(outcomes.into_iter().flatten().collect()),
        };
        for o in outcomes.iter_mut().filter(|o| o.is_none()) {
            *o = Some(if final_reply.is_positive() {
                RcptOutcome::Delivered
            } else {
                RcptOutcome::Refused(final_reply.clone())
            });
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Says QUIT (best effort).
    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}

/// Sends one message over `stream`: greeting, EHLO `helo`, one transaction, QUIT.
/// Returns one outcome per recipient, in order.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    helo: &str,
    from: &str,
    recipients: &[String],
    data: &[u8],
    timeout: Duration,
) -> Vec<RcptOutcome> {
    let mut client = match Client::connect(stream, helo, timeout).await {
        Ok(c) => c,
        Err(e) => return vec![e.outcome(); recipients.len()],
    };
    let out = client
        .send(from, recipients, data)
        .await
        .unwrap_or_else(|e| vec![e.outcome(); recipients.len()]);
    client.quit().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\n.b\r\nc"), b"..a\r\n..b\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\n"), b"x\r\n.\r\n");
    }

    /// A scripted server: `ehlo` is its EHLO reply; records every line it reads.
    async fn scripted(
        server: tokio::io::DuplexStream,
        ehlo: &'static [u8],
    ) -> (Vec<String>, usize) {
        let (r, mut w) = tokio::io::split(server);
        let mut r = BufReader::new(r);
        let mut log = Vec::new();
        let mut writes = 0;
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
                    b"250 2.0.0 ok\r\n"
                } else {
                    continue;
                }
            } else if line.starts_with("EHLO") {
                ehlo
            } else if line.starts_with("RCPT TO:<bad") {
                b"550 5.1.1 no such user\r\n"
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
            writes += 1;
        }
        (log, writes)
    }

    #[tokio::test]
    async fn per_recipient_outcomes_with_and_without_pipelining() {
        for ehlo in [
            &b"250-x\r\n250-PIPELINING\r\n250 SIZE 10\r\n"[..],
            b"250-x\r\n250 SIZE 10\r\n",
        ] {
            let (client, server) = tokio::io::duplex(4096);
            let srv = tokio::spawn(scripted(server, ehlo));
            let out = send(
                client,
                "me.onion",
                "a@me.onion",
                &["good@x".into(), "bad@x".into()],
                b"Subject: t\r\n\r\n.hi\r\n",
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(out[0], RcptOutcome::Delivered);
            match &out[1] {
                RcptOutcome::Refused(r) => {
                    assert_eq!((r.code, r.esc), (550, [5, 1, 1]));
                    assert_eq!(r.message, "no such user");
                }
                o => panic!("{o:?}"),
            }
            let (log, _) = srv.await.unwrap();
            assert_eq!(log[0], "EHLO me.onion\r\n");
            assert!(log.contains(&"..hi\r\n".to_string()));
        }
    }

    #[tokio::test]
    async fn a_hostile_server_cannot_make_the_client_buffer_forever() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            server.write_all(b"220-").await.unwrap();
            let junk = vec![b'x'; 1 << 20];
            let _ = server.write_all(&junk).await;
        });
        let e = Client::connect(client, "me", Duration::from_secs(5))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(e, ConnectError::Client(ClientError::ReplyTooLong)),
            "{e}"
        );
    }
}
