//! The outbound SMTP client: transactions over any byte stream, with per-recipient results so
//! the queue knows who got the message.
//!
//! Replies are read with smtp-proto's `ResponseReceiver`, which bounds a reply (all its lines)
//! to 4 KiB: a hostile server cannot make the client buffer without limit.
//!
//! Over an onion circuit a round trip is the expensive part (about 10-20 ms on the loopback
//! test network, far more on the real one), so the client spends as few as it can. With
//! PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in one write: two round trips per
//! message. With PIPELINING and CHUNKING (RFC 3030), [`Client::send_many`] sends many whole
//! transactions (MAIL, RCPT, `BDAT n LAST` and the message) in one write and then reads all
//! the replies: one round trip for the lot.

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
    chunking: bool,
    starttls: bool,
    /// A transaction was started and not finished: send RSET before the next one.
    dirty: bool,
}

/// One message for [`Client::send_many`].
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// Reverse path.
    pub from: &'a str,
    /// Forward paths.
    pub recipients: &'a [String],
    /// The message (CRLF line ends; a bare LF is sent as CRLF).
    pub data: &'a [u8],
}

/// Most bytes of transactions put into one pipelined write.
pub const PIPELINE_BYTES: usize = 1 << 20;

/// The message with every bare LF turned into CRLF (BDAT sends bytes as they are).
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn over(stream: S, timeout: Duration) -> Self {
        Client {
            stream,
            rbuf: Vec::new(),
            receiver: ResponseReceiver::default(),
            timeout,
            pipelining: false,
            chunking: false,
            starttls: false,
            dirty: false,
        }
    }

    /// Reads the greeting and introduces itself as `helo` (EHLO, falling back to HELO).
    /// `timeout` bounds every read and write.
    pub async fn connect(stream: S, helo: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let mut c = Self::over(stream, timeout);
        let greeting = c.read_reply().await?;
        if greeting.code != 220 {
            return Err(ConnectError::Refused(greeting));
        }
        c.hello(helo).await?;
        Ok(c)
    }

    /// Continues on `stream` after a TLS handshake that followed [`Client::starttls`]: no
    /// greeting comes, and the client says EHLO again (RFC 3207 4.2: what the server offered
    /// before TLS no longer holds).
    pub async fn resume(stream: S, helo: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let mut c = Self::over(stream, timeout);
        c.hello(helo).await?;
        Ok(c)
    }

    async fn hello(&mut self, helo: &str) -> Result<(), ConnectError> {
        let mut r = self.command(&format!("EHLO {helo}")).await?;
        if r.is_positive() {
            let offers = |ext: &str| {
                r.message.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case(ext))
                })
            };
            self.pipelining = offers("PIPELINING");
            self.chunking = offers("CHUNKING");
            self.starttls = offers("STARTTLS");
        } else {
            r = self.command(&format!("HELO {helo}")).await?;
            if !r.is_positive() {
                return Err(ConnectError::Refused(r));
            }
        }
        Ok(())
    }

    /// Whether the server offered STARTTLS (RFC 3207).
    pub fn starttls_offered(&self) -> bool {
        self.starttls
    }

    /// Says STARTTLS; on the server's 220, hands back the stream for the TLS handshake
    /// (continue with [`Client::resume`] over the TLS stream).
    pub async fn starttls(mut self) -> Result<S, ConnectError> {
        let r = self.command("STARTTLS").await?;
        if r.code != 220 {
            return Err(ConnectError::Refused(r));
        }
        if !self.rbuf.is_empty() {
            // Bytes sent before the handshake must not be read as if they came over TLS.
            return Err(ConnectError::Client(ClientError::Protocol(
                "the server sent more after its STARTTLS reply".into(),
            )));
        }
        Ok(self.stream)
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

    /// Whether the server offered CHUNKING.
    pub fn chunking(&self) -> bool {
        self.chunking
    }

    /// Several transactions. With PIPELINING and CHUNKING they go out together (up to
    /// [`PIPELINE_BYTES`] per write) and cost one round trip; otherwise one after the other.
    /// Returns one outcome list per transaction, and the error that broke the connection, if
    /// one did: the transactions it left unanswered are then `Unreachable` (a retry is safe:
    /// receivers deduplicate by Message-ID and content).
    pub async fn send_many(
        &mut self,
        txs: &[Transaction<'_>],
    ) -> (Vec<Vec<RcptOutcome>>, Option<ClientError>) {
        let mut out: Vec<Vec<RcptOutcome>> = Vec::with_capacity(txs.len());
        let fill = |out: &mut Vec<Vec<RcptOutcome>>, e: &ClientError| {
            for t in &txs[out.len()..] {
                out.push(vec![e.outcome(); t.recipients.len()]);
            }
        };
        if !(self.pipelining && self.chunking) {
            for t in txs {
                match self.send(t.from, t.recipients, t.data).await {
                    Ok(o) => out.push(o),
                    Err(e) => {
                        fill(&mut out, &e);
                        return (out, Some(e));
                    }
                }
            }
            return (out, None);
        }
        if self.dirty {
            match self.command("RSET").await {
                Ok(r) if r.is_positive() => self.dirty = false,
                Ok(r) => {
                    let e = ClientError::Protocol(format!("RSET refused: {}", r.one_line()));
                    fill(&mut out, &e);
                    return (out, Some(e));
                }
                Err(e) => {
                    fill(&mut out, &e);
                    return (out, Some(e));
                }
            }
        }
        let mut start = 0;
        while start < txs.len() {
            let mut batch = Vec::new();
            let mut end = start;
            while end < txs.len() && (end == start || batch.len() < PIPELINE_BYTES) {
                let t = &txs[end];
                let data = crlf(t.data);
                batch.extend_from_slice(format!("MAIL FROM:<{}>\r\n", t.from).as_bytes());
                for r in t.recipients {
                    batch.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
                }
                batch.extend_from_slice(format!("BDAT {} LAST\r\n", data.len()).as_bytes());
                batch.extend_from_slice(&data);
                end += 1;
            }
            if let Err(e) = self.write(&batch).await {
                fill(&mut out, &e);
                return (out, Some(e));
            }
            for t in &txs[start..end] {
                match self.read_transaction(t.recipients.len()).await {
                    Ok(o) => out.push(o),
                    Err(e) => {
                        fill(&mut out, &e);
                        return (out, Some(e));
                    }
                }
            }
            start = end;
        }
        (out, None)
    }

    /// Reads the replies of one pipelined MAIL, `n` RCPTs and `BDAT LAST`.
    async fn read_transaction(&mut self, n: usize) -> Result<Vec<RcptOutcome>, ClientError> {
        let mail = self.read_reply().await?;
        let mut rcpts = Vec::with_capacity(n);
        for _ in 0..n {
            rcpts.push(self.read_reply().await?);
        }
        let bdat = self.read_reply().await?;
        if !mail.is_positive() {
            return Ok(vec![RcptOutcome::Refused(mail); n]);
        }
        Ok(rcpts
            .into_iter()
            .map(|r| {
                if !r.is_positive() {
                    RcptOutcome::Refused(r)
                } else if bdat.is_positive() {
                    RcptOutcome::Delivered
                } else {
                    RcptOutcome::Refused(bdat.clone())
                }
            })
            .collect())
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

    /// The pipelined, chunked path against our own server session (over an in-memory pipe):
    /// every transaction's outcome comes back in order, with the one refusal in its place.
    #[tokio::test]
    async fn send_many_pipelines_whole_transactions_with_bdat() {
        use crate::smtp::server::{Service, Timing, handle};
        use crate::smtp::session::{Envelope, Mode, Policy, SessionConfig};
        use std::sync::{Arc, Mutex};
        struct Bob;
        impl Policy for Bob {
            fn accepts(&self, a: &str) -> bool {
                a == "bob@b.onion"
            }
            fn authenticate(&self, _: &str, _: &str) -> Option<String> {
                None
            }
        }
        #[derive(Default)]
        struct Got(Mutex<Vec<Vec<u8>>>);
        impl Service for Arc<Got> {
            type Policy = Bob;
            fn policy(&self) -> Bob {
                Bob
            }
            async fn accept(&self, env: Envelope) -> Result<(), Reply> {
                self.0.lock().unwrap().push(env.data);
                Ok(())
            }
        }
        let (client, server) = tokio::io::duplex(1 << 16);
        let got = Arc::new(Got::default());
        let g2 = got.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(async move {
            let cfg = SessionConfig {
                mode: Mode::Inbound,
                hostname: "b.onion".into(),
                max_message_size: 1 << 20,
                max_recipients: 10,
                max_line_length: 1000,
            };
            let timing = Timing {
                idle: Duration::from_secs(10),
                deadline: Duration::from_secs(60),
            };
            let _ = handle(server, &g2, cfg, timing, &stop).await;
        });
        let mut c = Client::connect(client, "localhost", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(c.pipelining() && c.chunking());
        let bob = vec!["bob@b.onion".to_string()];
        let nobody = vec!["nobody@b.onion".to_string()];
        let bodies: Vec<Vec<u8>> = (0..30)
            .map(|i| format!("Subject: {i}\n\n{}\n", "y".repeat(i * 100)).into_bytes())
            .collect();
        let txs: Vec<Transaction> = bodies
            .iter()
            .enumerate()
            .map(|(i, d)| Transaction {
                from: "a@a.onion",
                recipients: if i == 7 { &nobody } else { &bob },
                data: d,
            })
            .collect();
        let (out, err) = c.send_many(&txs).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out.len(), 30);
        for (i, o) in out.iter().enumerate() {
            if i == 7 {
                assert!(
                    matches!(&o[0], RcptOutcome::Refused(r) if r.code == 550),
                    "{o:?}"
                );
            } else {
                assert_eq!(o, &[RcptOutcome::Delivered], "{i}");
            }
        }
        let stored = got.0.lock().unwrap().clone();
        assert_eq!(stored.len(), 29);
        assert_eq!(stored[0], crlf(&bodies[0]));
        c.quit().await;
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
