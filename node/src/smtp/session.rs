//! The SMTP server session as a sans-I/O state machine (RFC 5321, with ESMTP SIZE, PIPELINING,
//! CHUNKING, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8 and, for submission, AUTH PLAIN).
//!
//! Bytes go in through [`Session::receive`]; typed replies and effects come out as
//! [`Output`]s. When a message is complete the session emits [`Output::Deliver`] and waits:
//! the edge stores the message durably and reports back with [`Session::delivered`], and only
//! then does the client get its `250`. Commands are parsed with `smtp-proto`; the message
//! itself is read by the [`DataReader`](super::data::DataReader).

use std::borrow::Cow;

use base64::Engine;
use smtp_proto::{Error as ParseError, Request};

use super::data::{DataError, DataReader, Progress, normalize_chunked};
use super::reply::{Reply, reply};

/// Which server this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inbound MX: mail for the identities the [`Policy`] accepts, from anybody, no AUTH.
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
    /// Inbound: whether mail for `address` is accepted on this connection. Every refused
    /// address gets the same reply, whether it exists elsewhere on the node or not.
    fn accepts(&self, address: &str) -> bool;
    /// Submission: checks credentials, returning the identity's e-mail address.
    fn authenticate(&self, user: &str, password: &str) -> Option<String>;
    /// Inbound: whether `XHELD` (the mailbox hosts' collection protocol, `hosting`) may
    /// take the connection over. Default: no.
    fn collection(&self) -> bool {
        false
    }
    /// Submission: whether ordinary addresses (outside `.onion`) are accepted as recipients
    /// (the node has a gateway configured). Default: no.
    fn external(&self) -> bool {
        false
    }
    /// Inbound: the reply to a recipient that [`Policy::accepts`] refused. Default: the one
    /// `550 5.1.1` every unknown address gets.
    fn refusal(&self, _address: &str) -> Option<Reply> {
        None
    }
    /// Told the client's EHLO or HELO name (a gateway checks SPF against it). Default:
    /// nothing.
    fn greeted(&self, _helo: &str) {}
    /// Inbound: whether STARTTLS is offered (RFC 3207); the edge's
    /// [`Service::handover`](super::server::Service::handover) then does the handshake.
    /// Default: no (onion services and loopback need no TLS).
    fn starttls(&self) -> bool {
        false
    }
}

/// A complete message ready to be stored or queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path (empty for bounces).
    pub from: String,
    /// Accepted forward paths.
    pub recipients: Vec<String>,
    /// Message bytes, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
    /// The authenticated identity's address (submission only).
    pub authenticated: Option<String>,
}

/// Something the edge must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this reply to the client.
    Reply(Reply),
    /// Store or queue this message durably, then call [`Session::delivered`].
    Deliver(Envelope),
    /// Close the connection (after sending earlier replies).
    Close,
    /// Hand the connection (after sending earlier replies) to another protocol: the
    /// collection protocol of mailbox hosts after `XHELD`, with the bytes the client sent
    /// after it; or TLS after `STARTTLS`, with none (whatever the client pipelined after
    /// STARTTLS is dropped, RFC 3207 section 6). The session is over.
    Handover(Vec<u8>),
}

#[derive(Debug)]
enum State {
    /// Before EHLO/HELO.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// After MAIL FROM.
    Mail,
    /// Reading message data.
    Data(DataReader),
    /// Reading the `remaining` bytes of a BDAT chunk. With a `refusal`, the bytes are read
    /// and dropped (they must never be taken for commands) and the refusal is the reply.
    Chunk {
        remaining: usize,
        last: bool,
        refusal: Option<Reply>,
    },
    /// Waiting for the edge to store the message.
    Storing,
    /// Waiting for the AUTH PLAIN response line.
    AuthWait,
    /// Closed: ignore everything.
    Closed,
}

/// The verb that hands an inbound connection to the mailbox hosts' collection protocol
/// (`hosting::protocol`), when the [`Policy`] allows it.
pub const COLLECT_VERB: &str = "XHELD";
/// The text of the `220` that answers [`COLLECT_VERB`]: the protocol spoken from then on.
pub const COLLECT_SWITCH: &str = "HELD/1";

/// After this many failed commands the session ends (stops confused or hostile clients).
pub const MAX_ERRORS: u32 = 20;
/// After this many failed authentications the session ends (slows password guessing).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// One SMTP server conversation.
pub struct Session<P> {
    cfg: SessionConfig,
    policy: P,
    state: State,
    buf: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    discarding: bool,
    from: String,
    recipients: Vec<String>,
    /// The message so far of a BDAT transaction (`Some` once its first chunk came).
    chunked: Option<Vec<u8>>,
    /// The BDAT message outgrew the size limit (its bytes are dropped from then on).
    chunk_too_big: bool,
    /// EHLO or HELO was seen.
    greeted: bool,
    authenticated: Option<String>,
    errors: u32,
    auth_failures: u32,
}

fn out(r: Reply) -> Vec<Output> {
    vec![Output::Reply(r)]
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
            chunked: None,
            chunk_too_big: false,
            greeted: false,
            authenticated: None,
            errors: 0,
            auth_failures: 0,
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Output {
        Output::Reply(reply(
            220,
            [0, 0, 0],
            format!("{} ESMTP ready", self.cfg.hostname),
        ))
    }

    /// The client was silent too long: 421 and close.
    pub fn timeout(&mut self) -> Vec<Output> {
        self.close_with(reply(
            421,
            [4, 4, 2],
            format!("{} Error: timeout exceeded", self.cfg.hostname),
        ))
    }

    /// The session took longer than its whole-session deadline: 421 and close.
    pub fn deadline(&mut self) -> Vec<Output> {
        self.close_with(reply(
            421,
            [4, 4, 2],
            format!("{} Error: session too long, closing", self.cfg.hostname),
        ))
    }

    /// The server is shutting down: 421 and close (the client retries elsewhere or later).
    pub fn shutdown(&mut self) -> Vec<Output> {
        self.close_with(reply(
            421,
            [4, 3, 2],
            format!(
                "{} Service shutting down, try again later",
                self.cfg.hostname
            ),
        ))
    }

    fn close_with(&mut self, r: Reply) -> Vec<Output> {
        self.state = State::Closed;
        vec![Output::Reply(r), Output::Close]
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether a message is being stored (the edge must not interrupt the session now).
    pub fn is_storing(&self) -> bool {
        matches!(self.state, State::Storing)
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

    /// Reports the outcome of an [`Output::Deliver`]: `Ok` for stored or queued durably, or
    /// the refusal to send; continues with pipelined input.
    pub fn delivered(&mut self, result: Result<(), Reply>) -> Vec<Output> {
        if !self.is_storing() {
            return Vec::new();
        }
        self.state = State::Ready;
        let r = result.map_or_else(|r| r, |()| reply(250, [2, 0, 0], "Ok: queued"));
        let mut o = out(r);
        o.extend(self.process());
        o
    }

    fn process(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Storing | State::Closed => return out,
                State::Data(reader) => {
                    if self.buf.is_empty() {
                        return out;
                    }
                    let input = std::mem::take(&mut self.buf);
                    match reader.feed(&input) {
                        Progress::More => return out,
                        Progress::Done(result, rest) => {
                            // Pipelined commands after the message stay in the buffer.
                            self.buf = rest;
                            let o = self.end_of_data(result);
                            out.push(o);
                            continue;
                        }
                    }
                }
                State::Chunk { remaining, .. } => {
                    let take = (*remaining).min(self.buf.len());
                    *remaining -= take;
                    let done = *remaining == 0;
                    let bytes: Vec<u8> = self.buf.drain(..take).collect();
                    self.chunk_bytes(&bytes);
                    if !done {
                        return out;
                    }
                    let o = self.chunk_done();
                    out.push(o);
                    continue;
                }
                _ => {}
            }
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.cfg.max_line_length {
                    if !self.discarding {
                        self.discarding = true;
                        out.push(self.error(reply(500, [5, 5, 2], "Error: line too long")));
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
            if matches!(self.state, State::AuthWait) {
                out.extend(self.auth_response(&line));
            } else if line.len() > self.cfg.max_line_length {
                out.push(self.error(reply(500, [5, 5, 2], "Error: line too long")));
            } else {
                out.extend(self.command(&line));
            }
            if self.is_closed() {
                return out;
            }
            if self.errors >= MAX_ERRORS {
                out.extend(self.close_with(reply(421, [4, 7, 0], "Too many errors, closing")));
                return out;
            }
        }
    }

    fn error(&mut self, r: Reply) -> Output {
        self.errors += 1;
        Output::Reply(r)
    }

    fn reset_transaction(&mut self) {
        self.from.clear();
        self.recipients.clear();
        self.chunked = None;
        self.chunk_too_big = false;
    }

    fn bdat(&mut self, size: usize, last: bool) -> Vec<Output> {
        let refusal = match self.state {
            State::Fresh => Some(reply(503, [5, 5, 1], "Error: send HELO/EHLO first")),
            State::Mail if !self.recipients.is_empty() => None,
            State::Mail => Some(reply(554, [5, 5, 1], "Error: no valid recipients")),
            _ => Some(reply(503, [5, 5, 1], "Error: need MAIL and RCPT commands")),
        };
        if refusal.is_none() {
            let so_far = self.chunked.get_or_insert_with(Vec::new).len();
            if so_far.saturating_add(size) > self.cfg.max_message_size {
                self.chunk_too_big = true;
                self.chunked = Some(Vec::new());
            }
        }
        self.state = State::Chunk {
            remaining: size,
            last,
            refusal,
        };
        // The chunk's bytes follow at once, possibly already in the buffer.
        Vec::new()
    }

    fn chunk_bytes(&mut self, bytes: &[u8]) {
        let State::Chunk { refusal: None, .. } = self.state else {
            return;
        };
        if self.chunk_too_big {
            return;
        }
        if let Some(data) = &mut self.chunked {
            data.extend_from_slice(bytes);
        }
    }

    fn chunk_done(&mut self) -> Output {
        let State::Chunk { last, refusal, .. } = std::mem::replace(&mut self.state, State::Ready)
        else {
            unreachable!("called at the end of a chunk");
        };
        if let Some(r) = refusal {
            self.reset_transaction();
            if !self.greeted {
                self.state = State::Fresh;
            }
            return self.error(r);
        }
        if !last {
            self.state = State::Mail;
            let n = self.chunked.as_ref().map_or(0, Vec::len);
            return Output::Reply(reply(250, [2, 0, 0], format!("{n} octets received")));
        }
        let data = self.chunked.take().unwrap_or_default();
        if self.chunk_too_big {
            self.reset_transaction();
            return Output::Reply(reply(552, [5, 3, 4], "Error: message too big for system"));
        }
        self.end_of_data(normalize_chunked(&data))
    }

    fn end_of_data(&mut self, result: Result<Vec<u8>, DataError>) -> Output {
        match result {
            Ok(data) => {
                self.state = State::Storing;
                let env = Envelope {
                    from: std::mem::take(&mut self.from),
                    recipients: std::mem::take(&mut self.recipients),
                    data,
                    authenticated: self.authenticated.clone(),
                };
                Output::Deliver(env)
            }
            Err(e) => {
                self.reset_transaction();
                self.state = State::Ready;
                Output::Reply(match e {
                    DataError::TooBig => reply(552, [5, 3, 4], "Error: message too big for system"),
                    DataError::BareCr => reply(
                        554,
                        [5, 6, 0],
                        "Error: bare CR in message; lines must end with CRLF (RFC 5321 2.3.8)",
                    ),
                })
            }
        }
    }

    fn auth_response(&mut self, line: &[u8]) -> Vec<Output> {
        self.state = State::Ready;
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text == "*" {
            return vec![self.error(reply(501, [5, 7, 0], "Authentication cancelled"))];
        }
        self.check_plain(text)
    }

    fn check_plain(&mut self, b64: &str) -> Vec<Output> {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return vec![self.error(reply(
                501,
                [5, 5, 2],
                "Error: invalid base64 in AUTH response",
            ))];
        };
        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            return vec![self.error(reply(
                501,
                [5, 5, 2],
                "Error: AUTH PLAIN wants authzid NUL user NUL password",
            ))];
        }
        let user = String::from_utf8_lossy(parts[1]);
        let pass = String::from_utf8_lossy(parts[2]);
        match self.policy.authenticate(&user, &pass) {
            Some(addr) => {
                self.authenticated = Some(addr);
                out(reply(235, [2, 7, 0], "Authentication successful"))
            }
            None => {
                self.auth_failures += 1;
                let failed = self.error(reply(535, [5, 7, 8], "Error: authentication failed"));
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    let mut o = vec![failed];
                    o.extend(self.close_with(reply(
                        421,
                        [4, 7, 0],
                        "Too many failed authentications, closing",
                    )));
                    return o;
                }
                vec![failed]
            }
        }
    }

    fn ehlo(&mut self) -> Vec<Output> {
        self.reset_transaction();
        self.greeted = true;
        self.state = State::Ready;
        let mut lines = vec![
            self.cfg.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.cfg.mode == Mode::Submission {
            lines.push("AUTH PLAIN".into());
        }
        if self.cfg.mode == Mode::Inbound && self.policy.starttls() {
            lines.push("STARTTLS".into());
        }
        lines.push("SMTPUTF8".into());
        out(reply(250, [0, 0, 0], lines.join("\n")))
    }

    /// `XHELD` in the inbound mode of a node that allows it, between transactions: the
    /// connection goes to the collection protocol.
    fn handover(&mut self, line: &[u8]) -> Option<Vec<Output>> {
        let verb = std::str::from_utf8(line).ok()?.trim_end();
        if !verb.eq_ignore_ascii_case(COLLECT_VERB) {
            return None;
        }
        if self.cfg.mode != Mode::Inbound || !self.policy.collection() {
            return Some(vec![self.error(reply(
                502,
                [5, 5, 1],
                "Error: command not implemented",
            ))]);
        }
        if !matches!(self.state, State::Ready) {
            return Some(vec![self.error(reply(
                503,
                [5, 5, 1],
                "Error: send EHLO first, and XHELD outside a transaction",
            ))]);
        }
        self.state = State::Closed;
        let rest = std::mem::take(&mut self.buf);
        Some(vec![
            Output::Reply(reply(220, [2, 0, 0], COLLECT_SWITCH)),
            Output::Handover(rest),
        ])
    }

    fn command(&mut self, line: &[u8]) -> Vec<Output> {
        if let Some(o) = self.handover(line) {
            return o;
        }
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                let r = match e {
                    ParseError::UnknownCommand => {
                        reply(500, [5, 5, 2], "Error: command not recognized")
                    }
                    ParseError::InvalidSenderAddress => {
                        reply(501, [5, 1, 7], "Error: bad sender address syntax")
                    }
                    ParseError::InvalidRecipientAddress => {
                        reply(501, [5, 1, 3], "Error: bad recipient address syntax")
                    }
                    ParseError::SyntaxError { syntax } => {
                        reply(501, [5, 5, 4], format!("Syntax: {syntax}"))
                    }
                    ParseError::UnsupportedParameter { param } => {
                        reply(555, [5, 5, 4], format!("Unsupported parameter {param}"))
                    }
                    other => reply(501, [5, 5, 4], format!("Syntax error: {other}")),
                };
                return vec![self.error(r)];
            }
        };
        match req {
            Request::Ehlo { host } => {
                self.policy.greeted(&host);
                self.ehlo()
            }
            Request::Helo { host } => {
                self.policy.greeted(&host);
                self.reset_transaction();
                self.greeted = true;
                self.state = State::Ready;
                out(reply(250, [0, 0, 0], self.cfg.hostname.clone()))
            }
            Request::Lhlo { .. } => vec![self.error(reply(500, [5, 5, 1], "Error: not LMTP"))],
            Request::Mail { from } => self.mail(from.address, from.size),
            Request::Rcpt { to } => self.rcpt(to.address),
            Request::Data => self.data(),
            Request::Rset => {
                self.reset_transaction();
                if matches!(self.state, State::Mail) {
                    self.state = State::Ready;
                }
                out(reply(250, [2, 0, 0], "Ok"))
            }
            Request::Noop { .. } => out(reply(250, [2, 0, 0], "Ok")),
            Request::Quit => self.close_with(reply(221, [2, 0, 0], "Bye")),
            Request::Vrfy { .. } => out(reply(
                252,
                [2, 0, 0],
                "Cannot VRFY user, but will accept message",
            )),
            Request::Expn { .. } => {
                vec![self.error(reply(502, [5, 5, 1], "Error: EXPN not supported"))]
            }
            Request::Help { .. } => out(reply(214, [2, 0, 0], "See RFC 5321")),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Request::StartTls if self.cfg.mode == Mode::Inbound && self.policy.starttls() => {
                if !matches!(self.state, State::Ready) {
                    return vec![self.error(reply(
                        503,
                        [5, 5, 1],
                        "Error: send EHLO first, and STARTTLS outside a transaction",
                    ))];
                }
                self.state = State::Closed;
                self.buf.clear();
                vec![
                    Output::Reply(reply(220, [2, 0, 0], "Ready to start TLS")),
                    Output::Handover(Vec::new()),
                ]
            }
            Request::StartTls => vec![self.error(reply(
                502,
                [5, 5, 1],
                "Error: STARTTLS not offered (loopback and onion services)",
            ))],
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                vec![self.error(reply(502, [5, 5, 1], "Error: command not implemented"))]
            }
        }
    }

    fn data(&mut self) -> Vec<Output> {
        if self.chunked.is_some() {
            self.reset_transaction();
            self.state = State::Ready;
            return vec![self.error(reply(503, [5, 5, 1], "Error: DATA after BDAT"))];
        }
        match self.state {
            State::Mail if !self.recipients.is_empty() => {
                self.state = State::Data(DataReader::new(self.cfg.max_message_size));
                out(reply(354, [0, 0, 0], "End data with <CR><LF>.<CR><LF>"))
            }
            State::Mail => vec![self.error(reply(554, [5, 5, 1], "Error: no valid recipients"))],
            _ => vec![self.error(reply(503, [5, 5, 1], "Error: need RCPT command"))],
        }
    }

    fn mail(&mut self, address: Cow<'_, str>, size: usize) -> Vec<Output> {
        match self.state {
            State::Fresh => {
                return vec![self.error(reply(503, [5, 5, 1], "Error: send HELO/EHLO first"))];
            }
            State::Mail => {
                return vec![self.error(reply(503, [5, 5, 1], "Error: nested MAIL command"))];
            }
            _ => {}
        }
        if self.cfg.mode == Mode::Submission {
            let Some(auth) = &self.authenticated else {
                return vec![self.error(reply(530, [5, 7, 0], "Error: authentication required"))];
            };
            if !address.eq_ignore_ascii_case(auth) {
                let r = reply(553, [5, 7, 1], format!("Error: sender must be {auth}"));
                return vec![self.error(r)];
            }
        }
        if size > self.cfg.max_message_size {
            return vec![self.error(reply(
                552,
                [5, 3, 4],
                "Error: message size exceeds fixed limit",
            ))];
        }
        self.reset_transaction();
        self.from = address.into_owned();
        self.state = State::Mail;
        out(reply(250, [2, 1, 0], "Ok"))
    }

    fn rcpt(&mut self, address: Cow<'_, str>) -> Vec<Output> {
        if !matches!(self.state, State::Mail) {
            return vec![self.error(reply(503, [5, 5, 1], "Error: need MAIL command"))];
        }
        if self.chunked.is_some() {
            return vec![self.error(reply(503, [5, 5, 1], "Error: RCPT after BDAT"))];
        }
        if self.recipients.len() >= self.cfg.max_recipients {
            return out(reply(452, [4, 5, 3], "Error: too many recipients"));
        }
        let ok = match self.cfg.mode {
            Mode::Inbound => self.policy.accepts(&address),
            Mode::Submission => {
                crate::lists::address::list_of(&address).is_some()
                    || address.rsplit_once('@').is_some_and(|(l, d)| {
                        !l.is_empty() && d.parse::<onionpost_proto::onion::OnionAddress>().is_ok()
                    })
                    || (self.policy.external() && crate::delivery::route::is_external(&address))
            }
        };
        if !ok {
            let r = match self.cfg.mode {
                Mode::Inbound => self.policy.refusal(&address).unwrap_or_else(|| {
                    reply(
                        550,
                        [5, 1, 1],
                        "Error: recipient address rejected: no such mailbox here (no relaying)",
                    )
                }),
                Mode::Submission if self.policy.external() => reply(
                    550,
                    [5, 1, 2],
                    "Error: recipient must be name@<v3 onion address>, <list>@list.invalid or an ordinary address name@domain",
                ),
                Mode::Submission => reply(
                    550,
                    [5, 1, 2],
                    "Error: recipient must be name@<v3 onion address> or <list>@list.invalid \
                     (ordinary addresses need a [gateway] in the node's configuration)",
                ),
            };
            return vec![self.error(r)];
        }
        self.recipients.push(address.into_owned());
        out(reply(250, [2, 1, 5], "Ok"))
    }

    fn auth(&mut self, mechanism: u64, initial: Cow<'_, str>) -> Vec<Output> {
        let refuse = |s: &mut Self, code, esc, text: &str| vec![s.error(reply(code, esc, text))];
        if self.cfg.mode != Mode::Submission {
            return refuse(self, 502, [5, 5, 1], "Error: AUTH not offered here");
        }
        match self.state {
            State::Fresh => return refuse(self, 503, [5, 5, 1], "Error: send EHLO first"),
            State::Mail => {
                return refuse(
                    self,
                    503,
                    [5, 5, 1],
                    "Error: AUTH not allowed during a transaction",
                );
            }
            _ => {}
        }
        if self.authenticated.is_some() {
            return refuse(self, 503, [5, 5, 1], "Error: already authenticated");
        }
        if mechanism != smtp_proto::AUTH_PLAIN {
            return refuse(self, 504, [5, 5, 4], "Error: only AUTH PLAIN is supported");
        }
        if initial.is_empty() {
            self.state = State::AuthWait;
            return out(reply(334, [0, 0, 0], ""));
        }
        if initial == "=" {
            return self.check_plain("");
        }
        self.check_plain(&initial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestPolicy;
    impl Policy for TestPolicy {
        fn accepts(&self, a: &str) -> bool {
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

    /// Feeds input and returns the reply codes (and markers for Deliver and Close).
    fn codes<P: Policy>(s: &mut Session<P>, input: &str) -> Vec<String> {
        s.receive(input.as_bytes())
            .into_iter()
            .map(|o| match o {
                Output::Reply(r) => r.code.to_string(),
                Output::Deliver(_) => "DELIVER".into(),
                Output::Close => "CLOSE".into(),
                Output::Handover(_) => "HANDOVER".into(),
            })
            .collect()
    }

    #[test]
    fn inbound_happy_path_waits_for_durable_store() {
        let mut s = session(Mode::Inbound);
        let out = s.receive(
            b"EHLO a.onion\r\nMAIL FROM:<a@a.onion>\r\nRCPT TO:<bob@here.onion>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\n",
        );
        let env = out
            .iter()
            .find_map(|o| match o {
                Output::Deliver(e) => Some(e.clone()),
                _ => None,
            })
            .expect("deliver");
        assert_eq!(env.data, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(env.recipients, ["bob@here.onion"]);
        // No 250 for the message and no NOOP answer until the store is done.
        assert!(matches!(out.last(), Some(Output::Deliver(_))));
        assert!(s.is_storing());
        let after = s.delivered(Ok(()));
        assert_eq!(
            after,
            [
                Output::Reply(reply(250, [2, 0, 0], "Ok: queued")),
                Output::Reply(reply(250, [2, 0, 0], "Ok")),
            ]
        );
        // A refusal from the store is passed on as it is.
        assert_eq!(
            codes(
                &mut s,
                "MAIL FROM:<a@a.onion>\r\nRCPT TO:<bob@here.onion>\r\nDATA\r\nx\r\n.\r\n"
            ),
            ["250", "250", "354", "DELIVER"]
        );
        let full = reply(452, [4, 2, 2], "Mailbox full");
        assert_eq!(s.delivered(Err(full.clone())), [Output::Reply(full)]);
    }

    struct Hosting;
    impl Policy for Hosting {
        fn accepts(&self, _: &str) -> bool {
            true
        }
        fn authenticate(&self, _: &str, _: &str) -> Option<String> {
            None
        }
        fn collection(&self) -> bool {
            true
        }
    }

    #[test]
    fn xheld_hands_the_connection_over_only_where_allowed_and_between_transactions() {
        // A node that holds nobody's mail does not know the verb.
        let mut s = session(Mode::Inbound);
        assert_eq!(codes(&mut s, "EHLO x\r\nXHELD\r\n"), ["250", "502"]);
        let cfg = SessionConfig {
            mode: Mode::Inbound,
            hostname: "me.onion".into(),
            max_message_size: 100,
            max_recipients: 2,
            max_line_length: 128,
        };
        let mut s = Session::new(cfg.clone(), Hosting);
        assert_eq!(
            s.receive(b"XHELD\r\n"),
            [Output::Reply(reply(
                503,
                [5, 5, 1],
                "Error: send EHLO first, and XHELD outside a transaction"
            ))]
        );
        let out = s.receive(b"EHLO x\r\nXHELD\r\nAUTH a b c\r\n");
        assert_eq!(
            out[1..],
            [
                Output::Reply(reply(220, [2, 0, 0], COLLECT_SWITCH)),
                Output::Handover(b"AUTH a b c\r\n".to_vec()),
            ]
        );
        assert!(s.is_closed());
        let mut sub = Session::new(
            SessionConfig {
                mode: Mode::Submission,
                ..cfg
            },
            Hosting,
        );
        assert_eq!(codes(&mut sub, "EHLO x\r\nXHELD\r\n"), ["250", "502"]);
    }

    #[test]
    fn ehlo_capabilities_are_the_same_for_every_inbound_identity() {
        let ehlo = |host: &str| {
            let mut s = Session::new(
                SessionConfig {
                    mode: Mode::Inbound,
                    hostname: host.into(),
                    max_message_size: 100,
                    max_recipients: 2,
                    max_line_length: 128,
                },
                TestPolicy,
            );
            match &s.receive(b"EHLO x\r\n")[0] {
                Output::Reply(r) => r.message.replacen(host, "HOST", 1),
                o => panic!("{o:?}"),
            }
        };
        assert_eq!(ehlo("a.onion"), ehlo("bbbb.onion"));
        assert!(ehlo("a.onion").contains("PIPELINING"));
        assert!(!ehlo("a.onion").contains("AUTH"));
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
    fn bdat_chunks_pipelined_transactions_and_refusals_stay_in_sync() {
        let mut s = session(Mode::Inbound);
        // Two transactions in one write: chunked, then one chunk with LAST.
        let input = "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\n\
                     BDAT 5\r\nab\ncdBDAT 3 LAST\r\nef\n\
                     MAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\nBDAT 4 LAST\r\nxy\r\nNOOP\r\n";
        let out = s.receive(input.as_bytes());
        let mut codes: Vec<String> = Vec::new();
        let mut first = None;
        for o in &out {
            match o {
                Output::Reply(r) => codes.push(r.code.to_string()),
                Output::Deliver(e) => first = Some(e.data.clone()),
                Output::Close | Output::Handover(_) => {}
            }
        }
        assert_eq!(codes, ["250", "250", "250", "250"]);
        assert_eq!(first.unwrap(), b"ab\r\ncdef\r\n", "bare LF normalised");
        let after = s.delivered(Ok(()));
        let (mut codes, mut second) = (Vec::new(), None);
        for o in &after {
            match o {
                Output::Reply(r) => codes.push(r.code.to_string()),
                Output::Deliver(e) => second = Some(e.data.clone()),
                Output::Close | Output::Handover(_) => {}
            }
        }
        assert_eq!(codes, ["250", "250", "250"]);
        assert_eq!(second.unwrap(), b"xy\r\n");
        assert_eq!(
            s.delivered(Ok(())),
            [
                Output::Reply(reply(250, [2, 0, 0], "Ok: queued")),
                Output::Reply(reply(250, [2, 0, 0], "Ok")),
            ]
        );
        // A BDAT outside a transaction is refused, and its bytes are never read as commands.
        assert_eq!(
            codes_of(&mut s, "BDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n"),
            ["503", "250"]
        );
        // Too big: refused after the chunk, in sync.
        let big = format!(
            "MAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\nBDAT 200 LAST\r\n{}NOOP\r\n",
            "z".repeat(200)
        );
        assert_eq!(codes_of(&mut s, &big), ["250", "250", "552", "250"]);
        // DATA after BDAT in one transaction is an error; bare CR in BDAT is refused.
        assert_eq!(
            codes_of(
                &mut s,
                "MAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\nBDAT 1\r\nxDATA\r\n"
            ),
            ["250", "250", "250", "503"]
        );
        assert_eq!(
            codes_of(
                &mut s,
                "MAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\nBDAT 3 LAST\r\na\rb"
            ),
            ["250", "250", "554"]
        );
    }

    fn codes_of(s: &mut Session<TestPolicy>, input: &str) -> Vec<String> {
        codes(s, input)
    }

    #[test]
    fn bare_cr_message_is_refused_and_session_continues() {
        let mut s = session(Mode::Inbound);
        assert_eq!(
            codes(
                &mut s,
                "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@here.onion>\r\nDATA\r\na\rb\r\n.\r\nNOOP\r\n"
            ),
            ["250", "250", "250", "354", "554", "250"]
        );
    }

    /// A submission policy with a gateway configured, that remembers the HELO name.
    #[derive(Default)]
    struct WithGateway(std::cell::RefCell<String>);
    impl Policy for WithGateway {
        fn accepts(&self, _: &str) -> bool {
            false
        }
        fn authenticate(&self, u: &str, p: &str) -> Option<String> {
            (u == "alice" && p == "pw").then(|| "alice@x.onion".to_string())
        }
        fn external(&self) -> bool {
            true
        }
        fn greeted(&self, helo: &str) {
            *self.0.borrow_mut() = helo.to_string();
        }
    }

    #[test]
    fn ordinary_recipients_only_with_a_gateway_and_the_helo_name_is_told() {
        let auth = "AUTH PLAIN AGFsaWNlAHB3\r\nMAIL FROM:<alice@x.onion>\r\n";
        let mut plain = session(Mode::Submission);
        codes(&mut plain, "EHLO c\r\n");
        codes(&mut plain, auth);
        let out = plain.receive(b"RCPT TO:<bob@example.com>\r\n");
        assert!(
            matches!(&out[..], [Output::Reply(r)] if r.code == 550 && r.message.contains("[gateway]")),
            "{out:?}"
        );
        let mut gw = Session::new(
            SessionConfig {
                mode: Mode::Submission,
                hostname: "me.onion".into(),
                max_message_size: 100,
                max_recipients: 5,
                max_line_length: 128,
            },
            WithGateway::default(),
        );
        codes(&mut gw, "EHLO client.example\r\n");
        assert_eq!(*gw.policy.0.borrow(), "client.example");
        codes(&mut gw, auth);
        assert_eq!(codes(&mut gw, "RCPT TO:<bob@example.com>\r\n"), ["250"]);
        for bad in ["x@bad.onion", "x@localhost", "x@list.invalid.example.onion"] {
            assert_eq!(
                codes(&mut gw, &format!("RCPT TO:<{bad}>\r\n")),
                ["550"],
                "{bad}"
            );
        }
    }

    struct Tls;
    impl Policy for Tls {
        fn accepts(&self, _: &str) -> bool {
            true
        }
        fn authenticate(&self, _: &str, _: &str) -> Option<String> {
            None
        }
        fn starttls(&self) -> bool {
            true
        }
    }

    #[test]
    fn starttls_when_offered_hands_over_and_drops_what_was_pipelined() {
        let cfg = SessionConfig {
            mode: Mode::Inbound,
            hostname: "mx.gw.test".into(),
            max_message_size: 100,
            max_recipients: 2,
            max_line_length: 128,
        };
        let mut s = Session::new(cfg.clone(), Tls);
        let ehlo = s.receive(b"EHLO c\r\n");
        assert!(matches!(&ehlo[..], [Output::Reply(r)] if r.message.contains("STARTTLS")));
        assert_eq!(
            codes(&mut s, "MAIL FROM:<a@b.c>\r\nSTARTTLS\r\n"),
            ["250", "503"],
            "not inside a transaction"
        );
        codes(&mut s, "RSET\r\n");
        let out = s.receive(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n");
        assert_eq!(
            out,
            [
                Output::Reply(reply(220, [2, 0, 0], "Ready to start TLS")),
                Output::Handover(Vec::new()),
            ]
        );
        assert!(s.is_closed());
        // Not offered: as before.
        let mut plain = session(Mode::Inbound);
        let ehlo = plain.receive(b"EHLO c\r\n");
        assert!(matches!(&ehlo[..], [Output::Reply(r)] if !r.message.contains("STARTTLS")));
        assert_eq!(codes(&mut plain, "STARTTLS\r\n"), ["502"]);
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
        let r = s.delivered(Err(reply(451, [4, 3, 0], "disk full")));
        assert!(matches!(&r[0], Output::Reply(t) if t.code == 451 && t.esc == [4, 3, 0]));
    }

    #[test]
    fn three_failed_logins_close_the_session() {
        let mut s = session(Mode::Submission);
        assert_eq!(codes(&mut s, "EHLO c\r\n"), ["250"]);
        assert_eq!(codes(&mut s, "AUTH PLAIN AGFsaWNlAGJhZA==\r\n"), ["535"]);
        assert_eq!(codes(&mut s, "AUTH PLAIN AGFsaWNlAGJhZA==\r\n"), ["535"]);
        assert_eq!(
            codes(
                &mut s,
                "AUTH PLAIN AGFsaWNlAGJhZA==\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"
            ),
            ["535", "421", "CLOSE"]
        );
        assert!(s.is_closed());
        assert!(s.authenticated().is_none());
    }

    #[test]
    fn timeout_deadline_shutdown_and_error_flood_close() {
        let mut s = session(Mode::Inbound);
        let o = s.timeout();
        assert!(matches!(&o[0], Output::Reply(t) if t.code == 421 && t.esc == [4, 4, 2]));
        assert!(s.is_closed());
        let mut s = session(Mode::Inbound);
        assert!(matches!(&s.deadline()[0], Output::Reply(t) if t.code == 421));
        let mut s = session(Mode::Inbound);
        assert!(matches!(&s.shutdown()[0], Output::Reply(t) if t.esc == [4, 3, 2]));
        let mut s = session(Mode::Inbound);
        let flood = "X\r\n".repeat(30);
        let c = codes(&mut s, &flood);
        assert_eq!(c.len(), 22);
        assert_eq!(&c[20..], ["421", "CLOSE"]);
        assert!(s.receive(b"NOOP\r\n").is_empty());
    }
}
