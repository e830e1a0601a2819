//! The SMTP server session as a sans-I/O state machine (RFC 5321, with ESMTP SIZE, PIPELINING,
//! 8BITMIME, ENHANCEDSTATUSCODES and, for submission, AUTH PLAIN).
//!
//! Bytes go in through [`Session::receive`]; replies and effects come out as [`Output`]s. When
//! a message is complete the session emits [`Output::Deliver`] and waits: the edge stores the
//! message durably and reports back with [`Session::delivered`], and only then does the client
//! get its `250`. Commands are parsed with `smtp-proto`.

use std::borrow::Cow;

use base64::Engine;
use smtp_proto::{Error as ParseError, Request};

/// Which server this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inbound MX: mail for identities hosted here, from anybody, no AUTH.
    Inbound,
    /// Submission for local clients: AUTH PLAIN required, mail for anybody on an onion.
    Submission,
}

/// Limits and names for a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Inbound or submission.
    pub mode: Mode,
    /// Name in the greeting and EHLO reply (an onion name, never the host's).
    pub hostname: String,
    /// Largest message in bytes.
    pub max_message_size: usize,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
}

/// What the session needs to know about the node, answered from memory.
pub trait Policy {
    /// Inbound: whether `address` is an identity this node hosts.
    fn is_local(&self, address: &str) -> bool;
    /// Submission: checks credentials, returning the identity's e-mail address.
    fn authenticate(&self, user: &str, password: &str) -> Option<String>;
}

/// A complete message ready to be stored or queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path (empty for bounces).
    pub from: String,
    /// Accepted forward paths.
    pub recipients: Vec<String>,
    /// Message bytes, dot-unstuffed, CRLF line ends as received.
    pub data: Vec<u8>,
    /// The authenticated identity's address (submission only).
    pub authenticated: Option<String>,
}

/// Something the edge must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes to the client.
    Reply(String),
    /// Store or queue this message durably, then call [`Session::delivered`].
    Deliver(Envelope),
    /// Close the connection (after sending earlier replies).
    Close,
}

/// Why the edge could not take a message, reported to [`Session::delivered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// Local trouble (disk): 451, the client retries.
    Temporary(String),
    /// Refused for good: 554 / 550 with this text.
    Permanent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before EHLO/HELO.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// After MAIL FROM.
    Mail,
    /// Reading message data.
    Data,
    /// Waiting for the edge to store the message.
    Storing,
    /// Waiting for the AUTH PLAIN response line.
    AuthWait,
    /// Closed: ignore everything.
    Closed,
}

/// After this many failed commands the session ends (stops confused or hostile clients).
const MAX_ERRORS: u32 = 20;

/// One SMTP server conversation.
pub struct Session<P> {
    cfg: SessionConfig,
    policy: P,
    state: State,
    buf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    from: String,
    recipients: Vec<String>,
    data: Vec<u8>,
    data_too_big: bool,
    authenticated: Option<String>,
    errors: u32,
}

impl<P: Policy> Session<P> {
    /// A new session; send [`Session::greeting`] first.
    pub fn new(cfg: SessionConfig, policy: P) -> Self {
        Self {
            cfg,
            policy,
            state: State::Fresh,
            buf: Vec::new(),
            discarding: false,
            from: String::new(),
            recipients: Vec::new(),
            data: Vec::new(),
            data_too_big: false,
            authenticated: None,
            errors: 0,
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Output {
        Output::Reply(format!("220 {} ESMTP ready\r\n", self.cfg.hostname))
    }

    /// The 421 reply for an idle client; the session is closed afterwards.
    pub fn timeout(&mut self) -> Vec<Output> {
        self.state = State::Closed;
        vec![
            Output::Reply(format!(
                "421 4.4.2 {} Error: timeout exceeded\r\n",
                self.cfg.hostname
            )),
            Output::Close,
        ]
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The identity this session authenticated as (submission).
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// Feeds bytes from the client; returns what to do.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.buf.extend_from_slice(bytes);
        self.process()
    }

    /// Reports the outcome of an [`Output::Deliver`]; continues with pipelined input.
    pub fn delivered(&mut self, result: Result<(), DeliveryFailure>) -> Vec<Output> {
        if self.state != State::Storing {
            return Vec::new();
        }
        self.state = State::Ready;
        let reply = match result {
            Ok(()) => "250 2.0.0 Ok: queued\r\n".to_string(),
            Err(DeliveryFailure::Temporary(why)) => {
                format!("451 4.3.0 Error: {why}; try again later\r\n")
            }
            Err(DeliveryFailure::Permanent(why)) => format!("554 5.7.1 Error: {why}\r\n"),
        };
        let mut out = vec![Output::Reply(reply)];
        out.extend(self.process());
        out
    }

    fn process(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            if matches!(self.state, State::Storing | State::Closed) {
                return out;
            }
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                let limit = if self.state == State::Data {
                    // Text lines: RFC 5321 says 1000; be lenient, the size limit still holds.
                    self.cfg.max_message_size.max(1000) + 2
                } else {
                    self.cfg.max_line_length
                };
                if self.buf.len() > limit {
                    if self.state == State::Data {
                        self.data_too_big = true;
                    } else if !self.discarding {
                        self.discarding = true;
                        out.push(self.error("500 5.5.2 Error: line too long\r\n"));
                    }
                    self.buf.clear();
                }
                return out;
            };
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if self.discarding {
                self.discarding = false;
                continue;
            }
            match self.state {
                State::Data => {
                    if let Some(o) = self.data_line(&line) {
                        out.push(o);
                    }
                }
                State::AuthWait => out.extend(self.auth_response(&line)),
                _ => {
                    if line.len() > self.cfg.max_line_length {
                        out.push(self.error("500 5.5.2 Error: line too long\r\n"));
                    } else {
                        out.extend(self.command(&line));
                    }
                }
            }
            if self.errors >= MAX_ERRORS && self.state != State::Closed {
                self.state = State::Closed;
                out.push(Output::Reply(
                    "421 4.7.0 Too many errors, closing\r\n".into(),
                ));
                out.push(Output::Close);
            }
        }
    }

    fn error(&mut self, text: &str) -> Output {
        self.errors += 1;
        Output::Reply(text.to_string())
    }

    fn reset_transaction(&mut self) {
        self.from.clear();
        self.recipients.clear();
        self.data.clear();
        self.data_too_big = false;
    }

    fn data_line(&mut self, line: &[u8]) -> Option<Output> {
        if line == b".\r\n" || line == b".\n" {
            let too_big = self.data_too_big;
            if too_big {
                self.reset_transaction();
                self.state = State::Ready;
                return Some(Output::Reply(
                    "552 5.3.4 Error: message too big for system\r\n".into(),
                ));
            }
            self.state = State::Storing;
            let env = Envelope {
                from: std::mem::take(&mut self.from),
                recipients: std::mem::take(&mut self.recipients),
                data: std::mem::take(&mut self.data),
                authenticated: self.authenticated.clone(),
            };
            self.reset_transaction();
            return Some(Output::Deliver(env));
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if self.data.len() + line.len() > self.cfg.max_message_size {
            self.data_too_big = true;
            self.data.clear();
        }
        if !self.data_too_big {
            self.data.extend_from_slice(line);
        }
        None
    }

    fn auth_response(&mut self, line: &[u8]) -> Vec<Output> {
        self.state = State::Ready;
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text == "*" {
            return vec![self.error("501 5.7.0 Authentication cancelled\r\n")];
        }
        vec![self.check_plain(text)]
    }

    fn check_plain(&mut self, b64: &str) -> Output {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return self.error("501 5.5.2 Error: invalid base64 in AUTH response\r\n");
        };
        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            return self.error("501 5.5.2 Error: AUTH PLAIN wants authzid\\0user\\0password\r\n");
        }
        let user = String::from_utf8_lossy(parts[1]);
        let pass = String::from_utf8_lossy(parts[2]);
        match self.policy.authenticate(&user, &pass) {
            Some(addr) => {
                self.authenticated = Some(addr);
                Output::Reply("235 2.7.0 Authentication successful\r\n".into())
            }
            None => self.error("535 5.7.8 Error: authentication failed\r\n"),
        }
    }

    fn command(&mut self, line: &[u8]) -> Vec<Output> {
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(ParseError::UnknownCommand) => {
                return vec![self.error("500 5.5.2 Error: command not recognized\r\n")];
            }
            Err(ParseError::InvalidSenderAddress) => {
                return vec![self.error("501 5.1.7 Error: bad sender address syntax\r\n")];
            }
            Err(ParseError::InvalidRecipientAddress) => {
                return vec![self.error("501 5.1.3 Error: bad recipient address syntax\r\n")];
            }
            Err(ParseError::SyntaxError { syntax }) => {
                return vec![self.error(&format!("501 5.5.4 Syntax: {syntax}\r\n"))];
            }
            Err(ParseError::UnsupportedParameter { param }) => {
                return vec![self.error(&format!("555 5.5.4 Unsupported parameter {param}\r\n"))];
            }
            Err(e) => {
                return vec![self.error(&format!("501 5.5.4 Syntax error: {e:?}\r\n"))];
            }
        };
        let reply = |s: &str| vec![Output::Reply(s.to_string())];
        match req {
            Request::Ehlo { .. } => {
                self.reset_transaction();
                self.state = State::Ready;
                let mut r = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n",
                    self.cfg.hostname, self.cfg.max_message_size
                );
                if self.cfg.mode == Mode::Submission {
                    r += "250-AUTH PLAIN\r\n";
                }
                r += "250 SMTPUTF8\r\n";
                vec![Output::Reply(r)]
            }
            Request::Helo { .. } => {
                self.reset_transaction();
                self.state = State::Ready;
                reply(&format!("250 {}\r\n", self.cfg.hostname))
            }
            Request::Lhlo { .. } => vec![self.error("500 5.5.1 Error: this is not LMTP\r\n")],
            Request::Mail { from } => self.mail(from.address, from.size),
            Request::Rcpt { to } => self.rcpt(to.address),
            Request::Data => match self.state {
                State::Mail if !self.recipients.is_empty() => {
                    self.state = State::Data;
                    reply("354 End data with <CR><LF>.<CR><LF>\r\n")
                }
                State::Mail => vec![self.error("554 5.5.1 Error: no valid recipients\r\n")],
                _ => vec![self.error("503 5.5.1 Error: need RCPT command\r\n")],
            },
            Request::Rset => {
                self.reset_transaction();
                if self.state == State::Mail {
                    self.state = State::Ready;
                }
                reply("250 2.0.0 Ok\r\n")
            }
            Request::Noop { .. } => reply("250 2.0.0 Ok\r\n"),
            Request::Quit => {
                self.state = State::Closed;
                vec![Output::Reply("221 2.0.0 Bye\r\n".into()), Output::Close]
            }
            Request::Vrfy { .. } => {
                reply("252 2.0.0 Cannot VRFY user, but will accept message\r\n")
            }
            Request::Expn { .. } => vec![self.error("502 5.5.1 Error: EXPN not supported\r\n")],
            Request::Help { .. } => reply("214 2.0.0 See RFC 5321\r\n"),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Request::StartTls => {
                vec![self.error("502 5.5.1 Error: STARTTLS not offered (loopback/onion)\r\n")]
            }
            Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                vec![self.error("502 5.5.1 Error: command not implemented\r\n")]
            }
        }
    }

    fn mail(&mut self, address: Cow<'_, str>, size: usize) -> Vec<Output> {
        match self.state {
            State::Fresh => return vec![self.error("503 5.5.1 Error: send HELO/EHLO first\r\n")],
            State::Mail => return vec![self.error("503 5.5.1 Error: nested MAIL command\r\n")],
            _ => {}
        }
        if self.cfg.mode == Mode::Submission {
            let Some(auth) = &self.authenticated else {
                return vec![self.error("530 5.7.0 Error: authentication required\r\n")];
            };
            if !address.eq_ignore_ascii_case(auth) {
                let msg = format!("553 5.7.1 Error: sender must be {auth}\r\n");
                return vec![self.error(&msg)];
            }
        }
        if size > self.cfg.max_message_size {
            return vec![self.error("552 5.3.4 Error: message size exceeds fixed limit\r\n")];
        }
        self.reset_transaction();
        self.from = address.into_owned();
        self.state = State::Mail;
        vec![Output::Reply("250 2.1.0 Ok\r\n".into())]
    }

    fn rcpt(&mut self, address: Cow<'_, str>) -> Vec<Output> {
        if self.state != State::Mail {
            return vec![self.error("503 5.5.1 Error: need MAIL command\r\n")];
        }
        if self.recipients.len() >= self.cfg.max_recipients {
            return vec![Output::Reply(
                "452 4.5.3 Error: too many recipients\r\n".into(),
            )];
        }
        let ok = match self.cfg.mode {
            Mode::Inbound => self.policy.is_local(&address),
            Mode::Submission => address.rsplit_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.parse::<onionpost_proto::onion::OnionAddress>().is_ok()
            }),
        };
        if !ok {
            let text = match self.cfg.mode {
                Mode::Inbound => "550 5.1.1 Error: recipient not hosted here (no relaying)\r\n",
                Mode::Submission => {
                    "550 5.1.2 Error: recipient must be name@<v3 onion address>\r\n"
                }
            };
            return vec![self.error(text)];
        }
        self.recipients.push(address.into_owned());
        vec![Output::Reply("250 2.1.5 Ok\r\n".into())]
    }

    fn auth(&mut self, mechanism: u64, initial: Cow<'_, str>) -> Vec<Output> {
        if self.cfg.mode != Mode::Submission {
            return vec![self.error("502 5.5.1 Error: AUTH not offered here\r\n")];
        }
        if self.state == State::Fresh {
            return vec![self.error("503 5.5.1 Error: send EHLO first\r\n")];
        }
        if self.authenticated.is_some() {
            return vec![self.error("503 5.5.1 Error: already authenticated\r\n")];
        }
        if self.state == State::Mail {
            return vec![self.error("503 5.5.1 Error: AUTH not allowed during a transaction\r\n")];
        }
        if mechanism != smtp_proto::AUTH_PLAIN {
            return vec![self.error("504 5.5.4 Error: only AUTH PLAIN is supported\r\n")];
        }
        if initial.is_empty() {
            self.state = State::AuthWait;
            return vec![Output::Reply("334 \r\n".into())];
        }
        if initial == "=" {
            return vec![self.check_plain("")];
        }
        vec![self.check_plain(&initial)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestPolicy;
    impl Policy for TestPolicy {
        fn is_local(&self, a: &str) -> bool {
            a == "bob@here.onion"
        }
        fn authenticate(&self, u: &str, p: &str) -> Option<String> {
            (u == "alice" && p == "pw").then(|| "alice@x.onion".to_string())
        }
    }

    fn session(mode: Mode) -> Session<TestPolicy> {
        Session::new(
            SessionConfig {
                mode,
                hostname: "me.onion".into(),
                max_message_size: 100,
                max_recipients: 2,
                max_line_length: 128,
            },
            TestPolicy,
        )
    }

    /// Feeds lines and returns the reply codes (and a marker for Deliver).
    fn codes(s: &mut Session<TestPolicy>, input: &str) -> Vec<String> {
        s.receive(input.as_bytes())
            .into_iter()
            .map(|o| match o {
                Output::Reply(r) => r.lines().last().unwrap()[..3].to_string(),
                Output::Deliver(_) => "DELIVER".into(),
                Output::Close => "CLOSE".into(),
            })
            .collect()
    }

    #[test]
    fn inbound_happy_path_waits_for_durable_store() {
        let mut s = session(Mode::Inbound);
        let out = s.receive(
            b"EHLO a.onion\r\nMAIL FROM:<a@a.onion>\r\nRCPT TO:<bob@here.onion>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\n",
        );
        let deliver = out.iter().find_map(|o| match o {
            Output::Deliver(e) => Some(e.clone()),
            _ => None,
        });
        let env = deliver.expect("deliver");
        assert_eq!(env.data, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(env.recipients, ["bob@here.onion"]);
        // No 250 for the message and no NOOP answer until the store is done.
        assert!(matches!(out.last(), Some(Output::Deliver(_))));
        let after = s.delivered(Ok(()));
        assert_eq!(
            after,
            [
                Output::Reply("250 2.0.0 Ok: queued\r\n".into()),
                Output::Reply("250 2.0.0 Ok\r\n".into())
            ]
        );
    }

    #[test]
    fn never_relays_and_enforces_limits() {
        let mut s = session(Mode::Inbound);
        assert_eq!(codes(&mut s, "MAIL FROM:<a@b>\r\n"), ["503"]);
        assert_eq!(codes(&mut s, "HELO x\r\nMAIL FROM:<>\r\n"), ["250", "250"]);
        assert_eq!(codes(&mut s, "RCPT TO:<evil@gmail.com>\r\n"), ["550"]);
        assert_eq!(codes(&mut s, "DATA\r\n"), ["554"]);
        assert_eq!(
            codes(
                &mut s,
                "RCPT TO:<bob@here.onion>\r\nRCPT TO:<bob@here.onion>\r\nRCPT TO:<bob@here.onion>\r\n"
            ),
            ["250", "250", "452"]
        );
        let long = format!("NOOP {}\r\n", "x".repeat(200));
        assert_eq!(codes(&mut s, &long), ["500"]);
        assert_eq!(codes(&mut s, "DATA\r\n"), ["354"]);
        let big = format!("{}\r\n.\r\n", "y".repeat(200));
        assert_eq!(codes(&mut s, &big), ["552"]);
        assert_eq!(codes(&mut s, "MAIL FROM:<a@b> SIZE=1000\r\n"), ["552"]);
        assert_eq!(codes(&mut s, "BOGUS\r\n"), ["500"]);
        assert_eq!(codes(&mut s, "AUTH PLAIN AGFsaWNlAHB3\r\n"), ["502"]);
        assert_eq!(codes(&mut s, "QUIT\r\n"), ["221", "CLOSE"]);
        assert!(s.is_closed());
    }

    #[test]
    fn submission_requires_auth_plain() {
        let mut s = session(Mode::Submission);
        assert_eq!(
            codes(&mut s, "EHLO c\r\nMAIL FROM:<alice@x.onion>\r\n"),
            ["250", "530"]
        );
        // "\0alice\0bad"
        assert_eq!(codes(&mut s, "AUTH PLAIN AGFsaWNlAGJhZA==\r\n"), ["535"]);
        assert_eq!(codes(&mut s, "AUTH LOGIN\r\n"), ["504"]);
        assert_eq!(codes(&mut s, "AUTH PLAIN\r\n"), ["334"]);
        assert_eq!(codes(&mut s, "not base64!\r\n"), ["501"]);
        assert_eq!(
            codes(&mut s, "AUTH PLAIN\r\nAGFsaWNlAHB3\r\n"),
            ["334", "235"]
        );
        assert_eq!(s.authenticated(), Some("alice@x.onion"));
        assert_eq!(codes(&mut s, "MAIL FROM:<mallory@x.onion>\r\n"), ["553"]);
        assert_eq!(codes(&mut s, "MAIL FROM:<alice@x.onion>\r\n"), ["250"]);
        assert_eq!(codes(&mut s, "RCPT TO:<bob@example.com>\r\n"), ["550"]);
        let onion = onionpost_proto::onion::OnionAddress::from_public_key([1; 32]).hostname();
        assert_eq!(
            codes(&mut s, &format!("RCPT TO:<bob@{onion}>\r\n")),
            ["250"]
        );
        assert_eq!(codes(&mut s, "DATA\r\nhi\r\n.\r\n"), ["354", "DELIVER"]);
        let r = s.delivered(Err(DeliveryFailure::Temporary("disk full".into())));
        assert!(matches!(&r[0], Output::Reply(t) if t.starts_with("451 4.3.0")));
    }

    #[test]
    fn timeout_and_error_flood_close() {
        let mut s = session(Mode::Inbound);
        let out = s.timeout();
        assert!(matches!(&out[0], Output::Reply(t) if t.starts_with("421 4.4.2")));
        let mut s = session(Mode::Inbound);
        let flood = "X\r\n".repeat(30);
        let c = codes(&mut s, &flood);
        assert_eq!(c.len(), 22);
        assert_eq!(&c[20..], ["421", "CLOSE"]);
        assert!(s.receive(b"NOOP\r\n").is_empty());
    }
}
