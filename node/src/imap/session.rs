//! The IMAP4rev1 server session as a sans-I/O state machine.
//!
//! Bytes from the client go into [`Session::receive`]; bytes for the client come out of
//! [`Session::take_output`]. Framing (lines and literals) uses imap-codec's `Fragmentizer`,
//! commands are parsed with imap-codec's `CommandCodec`. While the client is in IDLE, the edge
//! calls [`Session::mailbox_changed`] when the selected mailbox changes. Storage is the
//! identity's [`Mailboxes`] handed out by [`Accounts::login`]; the mailbox-level commands
//! (LIST, CREATE, STATUS, APPEND, ...) are in [`super::mailboxes`], COPY and MOVE in
//! [`super::transfer`].

use std::sync::Arc;

use base64::Engine;
use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::command::{FetchModifier, StoreModifier};
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;

use super::search::{self, Candidate};
use crate::store::{Flags, MailStore, Mailboxes, MessageMeta};

/// Looks up local accounts.
pub trait Accounts {
    /// Checks credentials; returns the account's mailboxes.
    fn login(&self, user: &str, password: &str) -> Option<Arc<dyn Mailboxes>>;
}

impl<T: Accounts + ?Sized> Accounts for Arc<T> {
    fn login(&self, user: &str, password: &str) -> Option<Arc<dyn Mailboxes>> {
        (**self).login(user, password)
    }
}

/// After this many failed logins the session ends (slows password guessing).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// What the server offers before login: only what works in the not-authenticated state.
pub const CAPABILITIES_BEFORE_LOGIN: &str = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN";
/// What the server offers once logged in.
pub const CAPABILITIES: &str = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT \
    UIDPLUS MOVE SPECIAL-USE CHILDREN CONDSTORE";
pub(super) const ALL_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
/// The flags a mailbox shows (FLAGS): the system flags and the node's end-to-end keywords,
/// which clients cannot change (so PERMANENTFLAGS has [`ALL_FLAGS`] only).
pub(super) const SHOWN_FLAGS: &str =
    "\\Answered \\Flagged \\Deleted \\Seen \\Draft $Verified $Unverified $Encrypted $KeyChanged";
/// After this many BAD/NO answers in a row the session ends.
const MAX_ERRORS: u32 = 50;

/// Output past this size is handed to the [`Spill`] (if any) while a command is still being
/// answered, so a large answer (FETCH of a whole mailbox, a pipelined burst of commands) goes
/// out as it is made rather than in one buffer at the end.
pub const SPILL_BYTES: usize = 128 * 1024;

/// Takes output for the client while the session is still working (see
/// [`Session::set_spill`]); returns false if the client is gone, which closes the session.
pub type Spill = Box<dyn FnMut(Vec<u8>) -> bool + Send>;

pub(super) struct Selected {
    pub(super) read_only: bool,
    /// The mailbox.
    pub(super) store: Arc<dyn MailStore>,
    /// Message sequence number - 1 -> metadata, as this client knows it.
    pub(super) messages: Vec<MessageMeta>,
    /// Flags a change of the mailbox since the last [`Session::sync`] that reported all.
    pub(super) changes: tokio::sync::watch::Receiver<u64>,
    /// A sync that could not report expunges (during FETCH, STORE, SEARCH) left some for
    /// the next one.
    pub(super) unreported: bool,
}

/// One IMAP conversation.
pub struct Session<A> {
    accounts: A,
    frag: Fragmentizer,
    pub(super) out: Vec<u8>,
    spill: Option<Spill>,
    pub(super) mailboxes: Option<Arc<dyn Mailboxes>>,
    pub(super) selected: Option<Selected>,
    /// Tag of an AUTHENTICATE waiting for its response line.
    auth_tag: Option<String>,
    /// Tag of the running IDLE.
    idle_tag: Option<String>,
    /// CONDSTORE is on (ENABLE, or a command that uses it, RFC 7162 §3.1): flag updates
    /// carry MODSEQ.
    pub(super) condstore: bool,
    max_literal: u32,
    errors: u32,
    auth_failures: u32,
    closed: bool,
}

impl<A: Accounts> Session<A> {
    /// A new session; the greeting is already in the output.
    pub fn new(accounts: A, max_literal: u32) -> Self {
        let mut s = Self {
            accounts,
            frag: Fragmentizer::new(max_literal.saturating_add(64 * 1024)),
            out: Vec::new(),
            spill: None,
            mailboxes: None,
            selected: None,
            auth_tag: None,
            idle_tag: None,
            condstore: false,
            max_literal,
            errors: 0,
            auth_failures: 0,
            closed: false,
        };
        s.line(&format!(
            "* OK [CAPABILITY {CAPABILITIES_BEFORE_LOGIN}] onionpost IMAP ready"
        ));
        s
    }

    /// Bytes to send to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Where output goes once it passes [`SPILL_BYTES`] during a call; `None` (the default):
    /// it all waits for [`Session::take_output`].
    pub fn set_spill(&mut self, spill: Option<Spill>) {
        self.spill = spill;
    }

    /// Hands the output to the spill if it has grown past [`SPILL_BYTES`].
    pub(super) fn spill_if_full(&mut self) {
        if self.out.len() < SPILL_BYTES {
            return;
        }
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        // The next chunk gets room for a whole spill: no reallocations while it fills.
        let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(SPILL_BYTES * 5 / 4));
        if !spill(chunk) {
            self.closed = true;
        }
    }

    /// Whether the connection should be closed (after sending the output).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the client is in IDLE (the edge should then watch the mailbox).
    pub fn is_idling(&self) -> bool {
        self.idle_tag.is_some()
    }

    /// The selected mailbox, if any (the edge watches it while the client idles).
    pub fn selected_store(&self) -> Option<&Arc<dyn MailStore>> {
        self.selected.as_ref().map(|s| &s.store)
    }

    /// The idle timeout fired: say BYE and close.
    pub fn timeout(&mut self) {
        self.line("* BYE Autologout; idle for too long");
        self.closed = true;
    }

    /// The server is shutting down: say BYE and close.
    pub fn shutdown(&mut self) {
        self.line("* BYE [UNAVAILABLE] Server shutting down, try again later");
        self.closed = true;
    }

    /// The mailbox changed while idling: report new, removed and re-flagged messages.
    pub fn mailbox_changed(&mut self) {
        if self.idle_tag.is_some() {
            self.sync(true);
        }
    }

    pub(super) fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(super) fn ok(&mut self, tag: &str, text: &str) {
        self.errors = 0;
        self.line(&format!("{tag} OK {text}"));
    }

    pub(super) fn no(&mut self, tag: &str, text: &str) {
        self.errors += 1;
        self.line(&format!("{tag} NO {text}"));
    }

    pub(super) fn bad(&mut self, tag: &str, text: &str) {
        self.errors += 1;
        self.line(&format!("{tag} BAD {text}"));
    }

    /// Feeds bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.frag.enqueue_bytes(bytes);
        while let Some(info) = self.frag.progress() {
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = info
            {
                if length > self.max_literal {
                    let tag = self.frag.decode_tag().map(|t| t.inner().to_string());
                    if mode == LiteralMode::Sync {
                        self.frag.skip_message();
                    } else {
                        self.frag.poison_message();
                    }
                    self.no(tag.as_deref().unwrap_or("*"), "[TOOBIG] Literal too large");
                    continue;
                } else if mode == LiteralMode::Sync {
                    self.line("+ Ready for literal data");
                }
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            let msg = self.frag.message_bytes().to_vec();
            let poisoned =
                self.frag.is_message_poisoned() || self.frag.is_max_message_size_exceeded();
            let tag = self.frag.decode_tag().map(|t| t.inner().to_string());
            if poisoned {
                if self.idle_tag.is_none() && self.auth_tag.is_none() {
                    self.bad(tag.as_deref().unwrap_or("*"), "Command too long");
                }
            } else {
                self.message(&msg, tag);
            }
            self.spill_if_full();
            if self.errors >= MAX_ERRORS {
                self.line("* BYE Too many errors");
                self.closed = true;
            }
            if self.closed {
                return;
            }
        }
    }

    fn message(&mut self, msg: &[u8], tag: Option<String>) {
        if let Some(tag) = self.idle_tag.take() {
            if msg.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                self.ok(&tag, "IDLE terminated");
            } else {
                self.bad(&tag, "Expected DONE");
            }
            return;
        }
        if let Some(tag) = self.auth_tag.take() {
            let line = String::from_utf8_lossy(msg);
            let line = line.trim();
            if line == "*" {
                self.bad(&tag, "AUTHENTICATE cancelled");
            } else {
                match base64::engine::general_purpose::STANDARD.decode(line) {
                    Ok(raw) => self.auth_plain(&tag, &raw),
                    Err(_) => self.bad(&tag, "Invalid base64"),
                }
            }
            return;
        }
        match CommandCodec::default().decode(msg) {
            Ok((b"", cmd)) => self.command(cmd),
            _ => {
                let tag = tag.unwrap_or_else(|| "*".into());
                self.bad(&tag, "Syntax error or unknown command");
            }
        }
    }

    fn auth_plain(&mut self, tag: &str, raw: &[u8]) {
        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            return self.bad(
                tag,
                "AUTHENTICATE PLAIN wants authzid NUL user NUL password",
            );
        }
        let user = String::from_utf8_lossy(parts[1]).into_owned();
        let pass = String::from_utf8_lossy(parts[2]).into_owned();
        self.login(tag, &user, &pass);
    }

    fn login(&mut self, tag: &str, user: &str, pass: &str) {
        match self.accounts.login(user, pass) {
            Some(mb) => {
                self.mailboxes = Some(mb);
                self.ok(tag, &format!("[CAPABILITY {CAPABILITIES}] Logged in"));
            }
            None => {
                self.auth_failures += 1;
                self.no(tag, "[AUTHENTICATIONFAILED] Invalid credentials");
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.line("* BYE Too many failed logins");
                    self.closed = true;
                }
            }
        }
    }

    fn command(&mut self, cmd: Command<'_>) {
        let tag = cmd.tag.inner().to_string();
        let tag = tag.as_str();
        // Any-state commands.
        match &cmd.body {
            CommandBody::Capability => {
                let caps = if self.mailboxes.is_some() {
                    CAPABILITIES
                } else {
                    CAPABILITIES_BEFORE_LOGIN
                };
                self.line(&format!("* CAPABILITY {caps}"));
                return self.ok(tag, "CAPABILITY completed");
            }
            CommandBody::Id { .. } => {
                // Nothing about the software or host: the answer is the same for everyone.
                self.line("* ID NIL");
                return self.ok(tag, "ID completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                if self.selected.is_some() {
                    self.sync(true);
                }
                return self.ok(tag, "NOOP completed");
            }
            CommandBody::Logout => {
                self.line("* BYE Logging out");
                self.ok(tag, "LOGOUT completed");
                self.closed = true;
                return;
            }
            _ => {}
        }
        if self.mailboxes.is_none() {
            return match cmd.body {
                CommandBody::Login { username, password } => {
                    let u = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let p = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    self.login(tag, &u, &p)
                }
                CommandBody::Authenticate {
                    mechanism,
                    initial_response,
                } => {
                    if mechanism != AuthMechanism::Plain {
                        return self.no(tag, "Only AUTHENTICATE PLAIN is supported");
                    }
                    match initial_response {
                        Some(r) => self.auth_plain(tag, r.declassify()),
                        None => {
                            self.auth_tag = Some(tag.to_string());
                            self.line("+ ");
                        }
                    }
                }
                _ => self.bad(tag, "Log in first (LOGIN or AUTHENTICATE PLAIN)"),
            };
        }
        let mbs = self.mailboxes.clone().expect("authenticated");
        match cmd.body {
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                self.bad(tag, "Already authenticated")
            }
            CommandBody::Enable { capabilities } => {
                let condstore = capabilities
                    .as_ref()
                    .iter()
                    .any(|c| matches!(c, CapabilityEnable::CondStore));
                if condstore {
                    self.condstore = true;
                    self.line("* ENABLED CONDSTORE");
                } else {
                    self.line("* ENABLED");
                }
                self.ok(tag, "ENABLE completed")
            }
            CommandBody::Namespace => {
                self.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.ok(tag, "NAMESPACE completed")
            }
            CommandBody::Idle => {
                self.idle_tag = Some(tag.to_string());
                self.line("+ idling");
                if self.selected.is_some() {
                    self.sync(true);
                }
            }
            body => self.mailbox_command(tag, &mbs, body),
        }
    }

    /// Commands of the selected state; `body` was not a mailbox-level command.
    pub(super) fn selected_or_bad(&mut self, tag: &str, body: CommandBody<'_>) {
        let Some(sel) = self.selected.as_ref() else {
            return self.bad(tag, "No mailbox selected (SELECT first) or unknown command");
        };
        let mb = sel.store.clone();
        self.selected_command(tag, &mb, body)
    }

    fn selected_command(&mut self, tag: &str, mb: &Arc<dyn MailStore>, body: CommandBody<'_>) {
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        match body {
            CommandBody::Close => {
                if !read_only {
                    let deleted = self.deleted_uids();
                    if let Err(e) = mb.expunge(&deleted) {
                        return self.no(tag, &format!("[SERVERBUG] {e}"));
                    }
                }
                self.selected = None;
                self.ok(tag, "CLOSE completed")
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.ok(tag, "UNSELECT completed")
            }
            CommandBody::Expunge => {
                if read_only {
                    return self.no(tag, "[READ-ONLY] Mailbox is read-only");
                }
                let deleted = self.deleted_uids();
                match mb.expunge(&deleted) {
                    Ok(_) => {
                        self.sync(true);
                        self.ok(tag, "EXPUNGE completed")
                    }
                    Err(e) => self.no(tag, &format!("[SERVERBUG] {e}")),
                }
            }
            CommandBody::ExpungeUid { sequence_set } => {
                if read_only {
                    return self.no(tag, "[READ-ONLY] Mailbox is read-only");
                }
                let max_uid = self.max_uid();
                let uids: Vec<u32> = self
                    .selected_messages()
                    .iter()
                    .filter(|m| {
                        m.flags.contains(Flags::DELETED)
                            && search::set_contains(&sequence_set, m.uid, max_uid)
                    })
                    .map(|m| m.uid)
                    .collect();
                match mb.expunge(&uids) {
                    Ok(_) => {
                        self.sync(true);
                        self.ok(tag, "UID EXPUNGE completed")
                    }
                    Err(e) => self.no(tag, &format!("[SERVERBUG] {e}")),
                }
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(cs) = charset {
                    let cs = cs.as_ref().to_ascii_uppercase();
                    if cs != "UTF-8" && cs != "US-ASCII" {
                        return self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                    }
                }
                let by_modseq = criteria
                    .as_ref()
                    .iter()
                    .any(|k| matches!(k, SearchKey::ModSequence { .. }));
                if by_modseq {
                    self.condstore = true;
                }
                let key = SearchKey::And(criteria);
                let hits = self.search(mb, &key, uid);
                let list: Vec<String> = hits.iter().map(|(n, _)| n.to_string()).collect();
                // RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest mod-sequence
                // of the messages found.
                let highest = match hits.iter().map(|(_, m)| *m).max() {
                    Some(m) if by_modseq => format!(" (MODSEQ {m})"),
                    _ => String::new(),
                };
                self.line(&format!(
                    "* SEARCH{}{}{highest}",
                    if list.is_empty() { "" } else { " " },
                    list.join(" ")
                ));
                self.ok(tag, "SEARCH completed")
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                let changed_since = modifiers.iter().find_map(|m| match m {
                    FetchModifier::ChangedSince(n) => Some(n.get()),
                    FetchModifier::Vanished => None,
                });
                let items = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => m
                        .expand()
                        .into_iter()
                        .map(|i| i.into_static_owned())
                        .collect(),
                    MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
                };
                if changed_since.is_some()
                    || items
                        .iter()
                        .any(|i| matches!(i, MessageDataItemName::ModSeq))
                {
                    self.condstore = true;
                }
                self.fetch(mb, &sequence_set, &items, uid, changed_since);
                if uid {
                    self.sync(false);
                }
                self.ok(tag, "FETCH completed")
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                if read_only {
                    return self.no(tag, "[READ-ONLY] Mailbox is read-only");
                }
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(n)| *n)
                    .next();
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                let change = to_flags(&flags);
                let mut modified = Vec::new();
                let mut changes = Vec::new();
                let mut touched = Vec::new();
                for (seq, meta) in self.resolve(&sequence_set, uid) {
                    if unchanged_since.is_some_and(|n| meta.modseq > n) {
                        modified.push(if uid { meta.uid } else { seq });
                        continue;
                    }
                    // The node's keywords stay whatever the client asks.
                    let new = match kind {
                        StoreType::Replace => change.with(meta.flags.only(Flags::KEYWORDS)),
                        StoreType::Add => meta.flags.with(change),
                        StoreType::Remove => meta.flags.without(change),
                    };
                    changes.push((meta.uid, new));
                    touched.push((seq, meta.uid));
                }
                if let Err(e) = mb.set_flags_many(&changes) {
                    self.sync(false);
                    return self.no(tag, &format!("[SERVERBUG] {e}"));
                }
                let snap = mb.snapshot();
                for (seq, u) in touched {
                    let Ok(j) = snap.messages.binary_search_by_key(&u, |m| m.uid) else {
                        continue;
                    };
                    let now = snap.messages[j].clone();
                    if let Some(sel) = self.selected.as_mut() {
                        sel.messages[seq as usize - 1] = now.clone();
                    }
                    if response == StoreResponse::Answer {
                        let uid_part = if uid {
                            format!("UID {} ", now.uid)
                        } else {
                            String::new()
                        };
                        let modseq = self.modseq_part(&now);
                        self.line(&format!(
                            "* {seq} FETCH ({uid_part}FLAGS ({}){modseq})",
                            now.flags.to_imap()
                        ));
                    }
                }
                if modified.is_empty() {
                    self.ok(tag, "STORE completed")
                } else {
                    let set = super::transfer::uid_set(&modified);
                    self.ok(
                        tag,
                        &format!("[MODIFIED {set}] Conditional STORE failed for some"),
                    )
                }
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.transfer(tag, &sequence_set, &mailbox, uid, false),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.transfer(tag, &sequence_set, &mailbox, uid, true),
            _ => self.bad(tag, "Command not supported"),
        }
    }

    /// ` MODSEQ (n)` when CONDSTORE is on, else nothing.
    fn modseq_part(&self, m: &MessageMeta) -> String {
        if self.condstore {
            format!(" MODSEQ ({})", m.modseq)
        } else {
            String::new()
        }
    }

    fn selected_messages(&self) -> &[MessageMeta] {
        self.selected
            .as_ref()
            .map(|s| s.messages.as_slice())
            .unwrap_or(&[])
    }

    fn max_uid(&self) -> u32 {
        self.selected_messages().last().map(|m| m.uid).unwrap_or(0)
    }

    fn deleted_uids(&self) -> Vec<u32> {
        self.selected_messages()
            .iter()
            .filter(|m| m.flags.contains(Flags::DELETED))
            .map(|m| m.uid)
            .collect()
    }

    /// Messages addressed by a sequence set: (sequence number, metadata).
    pub(super) fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, MessageMeta)> {
        let msgs = self.selected_messages();
        search::set_indices(set, msgs, uid)
            .into_iter()
            .map(|i| (i as u32 + 1, msgs[i].clone()))
            .collect()
    }

    /// Brings this client's view up to date: EXPUNGE (if allowed), EXISTS, flag changes.
    pub(super) fn sync(&mut self, allow_expunge: bool) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        // Nothing changed since everything was reported: no snapshot (a copy of the metadata
        // of every message) is needed. A client sending one command per message of a large
        // mailbox, as mbsync does, would otherwise pay for the whole mailbox each time.
        if !sel.unreported && !sel.changes.has_changed().unwrap_or(true) {
            return;
        }
        // Before the snapshot: a change after this point flags the receiver again.
        sel.changes.mark_unchanged();
        let snap = sel.store.snapshot();
        let mut lines = Vec::new();
        if allow_expunge {
            let mut i = sel.messages.len();
            while i > 0 {
                i -= 1;
                let uid = sel.messages[i].uid;
                if snap.messages.binary_search_by_key(&uid, |m| m.uid).is_err() {
                    sel.messages.remove(i);
                    lines.push(format!("* {} EXPUNGE", i + 1));
                }
            }
        }
        let mut missing = false;
        for (i, m) in sel.messages.iter_mut().enumerate() {
            let found = snap.messages.binary_search_by_key(&m.uid, |x| x.uid);
            missing |= found.is_err();
            if let Ok(j) = found
                && (snap.messages[j].flags != m.flags
                    || (self.condstore && snap.messages[j].modseq != m.modseq))
            {
                m.flags = snap.messages[j].flags;
                m.modseq = snap.messages[j].modseq;
                let modseq = if self.condstore {
                    format!(" MODSEQ ({})", m.modseq)
                } else {
                    String::new()
                };
                lines.push(format!(
                    "* {} FETCH (FLAGS ({}){modseq})",
                    i + 1,
                    m.flags.to_imap()
                ));
            }
        }
        sel.unreported = missing;
        let max = sel.messages.last().map(|m| m.uid).unwrap_or(0);
        let before = sel.messages.len();
        sel.messages
            .extend(snap.messages.iter().filter(|m| m.uid > max).cloned());
        if sel.messages.len() != before {
            lines.push(format!("* {} EXISTS", sel.messages.len()));
        }
        for l in lines {
            self.line(&l);
        }
    }

    /// Matching messages: (sequence number or UID, mod-sequence).
    fn search(
        &mut self,
        mb: &Arc<dyn MailStore>,
        key: &SearchKey<'_>,
        uid: bool,
    ) -> Vec<(u32, u64)> {
        let msgs = self.selected_messages().to_vec();
        let max_seq = msgs.len() as u32;
        let max_uid = self.max_uid();
        let mut hits = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let load = || mb.read(m.uid).unwrap_or_default();
            let load_header = || mb.read_header(m.uid).unwrap_or_default();
            let c = Candidate {
                seq: i as u32 + 1,
                meta: m,
                max_seq,
                max_uid,
                load: &load,
                load_header: &load_header,
                raw: Default::default(),
                header: Default::default(),
            };
            if search::matches(key, &c) {
                hits.push((if uid { m.uid } else { i as u32 + 1 }, m.modseq));
            }
        }
        hits
    }
}

pub(super) fn to_flags(flags: &[Flag<'_>]) -> Flags {
    flags.iter().fold(Flags::default(), |acc, f| {
        acc.with(match f {
            Flag::Seen => Flags::SEEN,
            Flag::Answered => Flags::ANSWERED,
            Flag::Flagged => Flags::FLAGGED,
            Flag::Deleted => Flags::DELETED,
            Flag::Draft => Flags::DRAFT,
            _ => Flags::default(),
        })
    })
}

trait IntoStaticOwned {
    fn into_static_owned(self) -> MessageDataItemName<'static>;
}

impl IntoStaticOwned for MessageDataItemName<'_> {
    fn into_static_owned(self) -> MessageDataItemName<'static> {
        use imap_codec::imap_types::IntoStatic;
        self.into_static()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{DeliverOptions, MaildirFolders};

    struct One(Arc<dyn Mailboxes>);
    impl Accounts for One {
        fn login(&self, user: &str, password: &str) -> Option<Arc<dyn Mailboxes>> {
            (user == "bob" && password == "pw").then(|| self.0.clone())
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<dyn MailStore>, Session<One>) {
        let dir = tempfile::tempdir().unwrap();
        let mbs: Arc<dyn Mailboxes> = Arc::new(
            MaildirFolders::open(&dir.path().join("Maildir"), &dir.path().join("f"), None).unwrap(),
        );
        let s = Session::new(One(mbs.clone()), 1000);
        (dir, mbs.inbox(), s)
    }

    fn talk(s: &mut Session<One>, input: &str) -> String {
        s.receive(input.as_bytes());
        String::from_utf8(s.take_output()).unwrap()
    }

    const MSG: &str = "From: Ann <ann@a.onion>\r\nTo: bob@b.onion\r\nSubject: Lunch\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n\r\nSee you at noon.\r\n";

    #[test]
    fn unauthenticated_and_malformed_commands_get_clear_errors() {
        let (_d, _md, mut s) = setup();
        assert!(talk(&mut s, "").starts_with("* OK [CAPABILITY IMAP4rev1"));
        assert_eq!(
            talk(&mut s, "a1 SELECT INBOX\r\n"),
            "a1 BAD Log in first (LOGIN or AUTHENTICATE PLAIN)\r\n"
        );
        assert!(talk(&mut s, "a2 FROB\r\n").starts_with("a2 BAD"));
        assert!(talk(&mut s, "garbage\r\n").starts_with("* BAD") || !s.is_closed());
        assert!(talk(&mut s, "a3 LOGIN bob nope\r\n").starts_with("a3 NO [AUTHENTICATIONFAILED]"));
        assert!(talk(&mut s, "a4 AUTHENTICATE CRAM-MD5\r\n").starts_with("a4 NO"));
        assert_eq!(talk(&mut s, "a5 AUTHENTICATE PLAIN\r\n"), "+ \r\n");
        // "\0bob\0pw"
        assert!(talk(&mut s, "AGJvYgBwdw==\r\n").starts_with("a5 OK"));
        assert!(talk(&mut s, "a6 LOGIN bob pw\r\n").starts_with("a6 BAD Already"));
        assert!(talk(&mut s, "a7 FETCH 1 FLAGS\r\n").starts_with("a7 BAD No mailbox selected"));
        assert!(talk(&mut s, "a8 SELECT Other\r\n").starts_with("a8 NO [NONEXISTENT]"));
        let out = talk(&mut s, "a9 LOGOUT\r\n");
        assert!(out.starts_with("* BYE") && out.ends_with("a9 OK LOGOUT completed\r\n"));
        assert!(s.is_closed());
    }

    #[test]
    fn e2e_keywords_are_shown_searchable_kept_and_not_settable() {
        let (_d, md, mut s) = setup();
        let opts = |flags| DeliverOptions {
            flags,
            ..Default::default()
        };
        md.deliver(MSG.as_bytes(), opts(Flags::VERIFIED.with(Flags::ENCRYPTED)))
            .unwrap();
        md.deliver(MSG.as_bytes(), opts(Flags::UNVERIFIED)).unwrap();
        talk(&mut s, "");
        assert!(talk(&mut s, "1 LOGIN bob pw\r\n").starts_with("1 OK"));
        let out = talk(&mut s, "2 SELECT INBOX\r\n");
        assert!(out.contains("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Verified $Unverified $Encrypted $KeyChanged)"), "{out}");
        assert!(
            out.contains("[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)]"),
            "{out}"
        );
        assert_eq!(
            talk(&mut s, "3 FETCH 1:2 FLAGS\r\n"),
            "* 1 FETCH (FLAGS ($Verified $Encrypted))\r\n* 2 FETCH (FLAGS ($Unverified))\r\n3 OK FETCH completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "4 SEARCH KEYWORD $Verified\r\n"),
            "* SEARCH 1\r\n4 OK SEARCH completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "5 SEARCH UNKEYWORD $verified\r\n"),
            "* SEARCH 2\r\n5 OK SEARCH completed\r\n"
        );
        // A client can neither set nor clear them.
        talk(&mut s, "6 STORE 2 +FLAGS ($Verified)\r\n");
        talk(&mut s, "7 STORE 1 FLAGS (\\Seen)\r\n");
        let snap = md.snapshot();
        assert_eq!(
            snap.messages[0].flags,
            Flags::SEEN.with(Flags::VERIFIED).with(Flags::ENCRYPTED)
        );
        assert_eq!(snap.messages[1].flags, Flags::UNVERIFIED);
        // And they do not stand in the way of deleting.
        talk(&mut s, "8 STORE 1:* +FLAGS (\\Deleted)\r\n");
        assert!(talk(&mut s, "9 EXPUNGE\r\n").ends_with("9 OK EXPUNGE completed\r\n"));
        assert!(md.snapshot().messages.is_empty());
    }

    #[test]
    fn append_select_fetch_store_search_expunge() {
        let (_d, md, mut s) = setup();
        talk(&mut s, "");
        assert!(talk(&mut s, "1 LOGIN bob pw\r\n").starts_with("1 OK"));
        let out = talk(
            &mut s,
            &format!("2 APPEND INBOX (\\Flagged) {{{}}}\r\n", MSG.len()),
        );
        assert_eq!(out, "+ Ready for literal data\r\n");
        assert!(talk(&mut s, &format!("{MSG}\r\n")).starts_with("2 OK [APPENDUID"));
        // Non-synchronizing literal (LITERAL+): no continuation.
        let out = talk(
            &mut s,
            &format!("3 APPEND INBOX {{{}+}}\r\n{MSG}\r\n", MSG.len()),
        );
        assert!(out.starts_with("3 OK [APPENDUID"), "{out}");
        // Too big: refused, and the session goes on.
        assert!(talk(&mut s, "4 APPEND INBOX {5000}\r\n").starts_with("4 NO [TOOBIG]"));
        assert!(talk(&mut s, "5 NOOP\r\n").starts_with("5 OK"));

        let out = talk(&mut s, "6 SELECT INBOX\r\n");
        assert!(
            out.contains("* 2 EXISTS\r\n") && out.contains("[UNSEEN 1]"),
            "{out}"
        );
        assert!(out.ends_with("6 OK [READ-WRITE] SELECT completed\r\n"));
        let out = talk(
            &mut s,
            "7 FETCH 1 (FLAGS ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        );
        assert!(
            out.contains("ENVELOPE (\"Tue, 24 Nov 2026 12:00:00 +0000\" \"Lunch\""),
            "{out}"
        );
        assert!(
            out.contains("BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: Lunch\r\n\r\n"),
            "{out}"
        );
        assert!(out.contains("FLAGS (\\Flagged)"), "{out}");
        let out = talk(&mut s, "8 UID FETCH 2 (BODY[TEXT])\r\n");
        assert!(
            out.contains(
                "* 2 FETCH (UID 2 BODY[TEXT] {18}\r\nSee you at noon.\r\n FLAGS (\\Seen))"
            ),
            "{out}"
        );
        assert_eq!(
            talk(&mut s, "9 SEARCH UNSEEN\r\n"),
            "* SEARCH 1\r\n9 OK SEARCH completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "10 UID SEARCH FROM ann SUBJECT lunch BODY noon\r\n"),
            "* SEARCH 1 2\r\n10 OK SEARCH completed\r\n"
        );
        assert_eq!(
            talk(
                &mut s,
                "11 SEARCH SINCE 1-Jan-2020 NOT SUBJECT dinner 2:*\r\n"
            ),
            "* SEARCH 2\r\n11 OK SEARCH completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "12 SEARCH BEFORE 1-Jan-2000\r\n"),
            "* SEARCH\r\n12 OK SEARCH completed\r\n"
        );
        let out = talk(&mut s, "13 STORE 1 +FLAGS (\\Deleted)\r\n");
        assert_eq!(
            out,
            "* 1 FETCH (FLAGS (\\Flagged \\Deleted))\r\n13 OK STORE completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "14 EXPUNGE\r\n"),
            "* 1 EXPUNGE\r\n14 OK EXPUNGE completed\r\n"
        );
        assert_eq!(md.snapshot().messages.len(), 1);
        let out = talk(&mut s, "15 FETCH 1:* (UID RFC822.SIZE)\r\n");
        assert_eq!(
            out,
            format!(
                "* 1 FETCH (UID 2 RFC822.SIZE {})\r\n15 OK FETCH completed\r\n",
                MSG.len()
            )
        );
        assert!(talk(&mut s, "16 FETCH 1 (BODYSTRUCTURE)\r\n").contains(
            "BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 18 1)"
        ));
        assert!(
            talk(&mut s, "17 LIST \"\" *\r\n")
                .starts_with("* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n")
        );
        assert!(talk(&mut s, "18 CLOSE\r\n").starts_with("18 OK"));
    }

    /// A large answer handed out in pieces while it is made is byte for byte what the
    /// session would have sent at the end; a client gone mid-answer ends the session.
    #[test]
    fn spilled_output_is_the_same_bytes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mbs: Arc<dyn Mailboxes> = Arc::new(
            MaildirFolders::open(&dir.path().join("Maildir"), &dir.path().join("f"), None).unwrap(),
        );
        for i in 0..300 {
            let msg = format!(
                "Subject: m{i}\r\nMessage-ID: <{i}@x>\r\n\r\n{}\r\n",
                "b".repeat(900)
            );
            mbs.inbox()
                .deliver(msg.as_bytes(), DeliverOptions::default())
                .unwrap();
        }
        let script = "1 LOGIN bob pw\r\n2 SELECT INBOX\r\n\
                      3 UID FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[])\r\n4 NOOP\r\n";
        let mut plain = Session::new(One(mbs.clone()), 1000);
        plain.receive(script.as_bytes());
        let whole = plain.take_output();
        assert!(whole.len() > 2 * SPILL_BYTES, "{}", whole.len());

        let chunks = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let mut spilled = Session::new(One(mbs.clone()), 1000);
        let sink = chunks.clone();
        spilled.set_spill(Some(Box::new(move |c| {
            sink.lock().unwrap().push(c);
            true
        })));
        spilled.receive(script.as_bytes());
        let mut got: Vec<u8> = chunks.lock().unwrap().concat();
        assert!(chunks.lock().unwrap().len() >= 2);
        got.extend(spilled.take_output());
        assert!(got == whole, "spilled output differs");

        let mut gone = Session::new(One(mbs), 1000);
        gone.set_spill(Some(Box::new(|_| false)));
        gone.receive(script.as_bytes());
        assert!(gone.is_closed());
        assert!(!String::from_utf8_lossy(&gone.take_output()).contains("4 OK"));
    }

    #[test]
    fn three_failed_logins_end_the_connection() {
        let (_d, _md, mut s) = setup();
        s.take_output();
        assert!(talk(&mut s, "1 LOGIN bob x\r\n").starts_with("1 NO"));
        assert!(talk(&mut s, "2 LOGIN bob y\r\n").starts_with("2 NO"));
        let out = talk(&mut s, "3 LOGIN bob z\r\n4 LOGIN bob pw\r\n");
        assert!(out.starts_with("3 NO"), "{out}");
        assert!(out.contains("* BYE"), "{out}");
        assert!(!out.contains("4 OK"), "{out}");
        assert!(s.is_closed());
    }

    #[test]
    fn idle_reports_new_mail() {
        let (_d, md, mut s) = setup();
        talk(&mut s, "1 LOGIN bob pw\r\n2 SELECT INBOX\r\n");
        assert_eq!(talk(&mut s, "3 IDLE\r\n"), "+ idling\r\n");
        assert!(s.is_idling());
        md.deliver(MSG.as_bytes(), DeliverOptions::default())
            .unwrap();
        s.mailbox_changed();
        assert_eq!(
            String::from_utf8(s.take_output()).unwrap(),
            "* 1 EXISTS\r\n"
        );
        assert_eq!(talk(&mut s, "DONE\r\n"), "3 OK IDLE terminated\r\n");
        assert!(!s.is_idling());
        // EXAMINE is read-only: STORE is refused, FETCH BODY[] does not set \Seen.
        assert!(talk(&mut s, "4 EXAMINE INBOX\r\n").contains("[READ-ONLY]"));
        assert!(talk(&mut s, "5 STORE 1 +FLAGS (\\Seen)\r\n").starts_with("5 NO"));
        let out = talk(&mut s, "6 FETCH 1 BODY[]\r\n");
        assert!(!out.contains("\\Seen"), "{out}");
    }

    #[test]
    fn capabilities_before_and_after_login() {
        let (_d, _md, mut s) = setup();
        let hello = talk(&mut s, "");
        assert!(
            hello.contains("AUTH=PLAIN") && !hello.contains("MOVE"),
            "{hello}"
        );
        let out = talk(&mut s, "1 CAPABILITY\r\n");
        assert!(out.starts_with(&format!("* CAPABILITY {CAPABILITIES_BEFORE_LOGIN}\r\n")));
        assert_eq!(
            talk(&mut s, "2 ID (\"name\" \"x\")\r\n"),
            "* ID NIL\r\n2 OK ID completed\r\n"
        );
        assert!(talk(&mut s, "3 NAMESPACE\r\n").starts_with("3 BAD"));
        let out = talk(&mut s, "4 LOGIN bob pw\r\n5 CAPABILITY\r\n");
        assert!(
            out.contains(&format!("4 OK [CAPABILITY {CAPABILITIES}]")),
            "{out}"
        );
        assert!(
            out.contains(&format!("* CAPABILITY {CAPABILITIES}\r\n")),
            "{out}"
        );
        for cap in [
            "UIDPLUS",
            "MOVE",
            "IDLE",
            "NAMESPACE",
            "ENABLE",
            "ID",
            "LITERAL+",
            "SPECIAL-USE",
        ] {
            assert!(CAPABILITIES.split(' ').any(|c| c == cap), "{cap}");
        }
        assert_eq!(
            talk(&mut s, "6 NAMESPACE\r\n"),
            "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n6 OK NAMESPACE completed\r\n"
        );
        assert_eq!(
            talk(&mut s, "7 ENABLE CONDSTORE X-UNKNOWN\r\n"),
            "* ENABLED CONDSTORE\r\n7 OK ENABLE completed\r\n"
        );
    }

    #[test]
    fn folders_special_use_utf7_copy_and_move() {
        let (_d, inbox, mut s) = setup();
        talk(&mut s, "1 LOGIN bob pw\r\n");
        let out = talk(&mut s, "2 LIST \"\" *\r\n");
        for (attr, name) in [
            ("\\Sent", "Sent"),
            ("\\Drafts", "Drafts"),
            ("\\Trash", "Trash"),
            ("\\Junk", "Junk"),
            ("\\Archive", "Archive"),
        ] {
            assert!(
                out.contains(&format!(
                    "* LIST (\\HasNoChildren {attr}) \"/\" \"{name}\"\r\n"
                )),
                "{out}"
            );
        }
        assert!(talk(&mut s, "3 CREATE \"Entw&APw-rfe/Alt\"\r\n").starts_with("3 OK"));
        assert!(talk(&mut s, "4 CREATE Sent\r\n").starts_with("4 NO [ALREADYEXISTS]"));
        assert!(
            talk(&mut s, "5 CREATE \"Entwürfe\"\r\n").starts_with("5 BAD"),
            "raw UTF-8 name"
        );
        let out = talk(&mut s, "6 LIST \"\" %\r\n");
        assert!(
            out.contains("* LIST (\\HasChildren) \"/\" \"Entw&APw-rfe\"\r\n"),
            "{out}"
        );
        assert!(!out.contains("Alt"), "{out}");
        let out = talk(&mut s, "7 LIST \"Entw&APw-rfe/\" %\r\n");
        assert!(
            out.starts_with("* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe/Alt\"\r\n"),
            "{out}"
        );
        // Subscriptions.
        assert!(talk(&mut s, "8 SUBSCRIBE \"Entw&APw-rfe/Alt\"\r\n").starts_with("8 OK"));
        let out = talk(&mut s, "9 LSUB \"\" %\r\n");
        assert!(
            out.contains("* LSUB (\\Noselect) \"/\" \"Entw&APw-rfe\"\r\n"),
            "{out}"
        );
        assert!(out.contains("* LSUB () \"/\" \"Sent\"\r\n"), "{out}");
        assert!(talk(&mut s, "10 UNSUBSCRIBE Sent\r\n").starts_with("10 OK"));
        assert!(!talk(&mut s, "11 LSUB \"\" *\r\n").contains("\"Sent\""));

        // Two messages in INBOX; COPY one to Archive, MOVE both to Trash.
        for i in 0..2 {
            inbox
                .deliver(
                    format!("Subject: m{i}\r\n\r\nhi\r\n").as_bytes(),
                    DeliverOptions::default(),
                )
                .unwrap();
        }
        let out = talk(
            &mut s,
            "12 STATUS Archive (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)\r\n",
        );
        assert!(
            out.contains("* STATUS \"Archive\" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY "),
            "{out}"
        );
        talk(&mut s, "13 SELECT INBOX\r\n");
        assert!(talk(&mut s, "14 STORE 1 +FLAGS (\\Flagged)\r\n").starts_with("* 1 FETCH"));
        let out = talk(&mut s, "15 UID COPY 1 Archive\r\n");
        let archive_v = {
            let out = talk(&mut s, "16 STATUS Archive (UIDVALIDITY MESSAGES)\r\n");
            assert!(out.contains("MESSAGES 1"), "{out}");
            out.split("UIDVALIDITY ")
                .nth(1)
                .unwrap()
                .split([' ', ')'])
                .next()
                .unwrap()
                .to_string()
        };
        assert!(
            out.starts_with(&format!("15 OK [COPYUID {archive_v} 1 1] COPY completed")),
            "{out}"
        );
        assert!(talk(&mut s, "17 COPY 1 Nowhere\r\n").starts_with("17 NO [TRYCREATE]"));
        let out = talk(&mut s, "18 MOVE 1:2 Trash\r\n");
        let trash_v = inbox_validity_of(&mut s, "Trash");
        assert_eq!(
            out,
            format!(
                "* OK [COPYUID {trash_v} 1:2 1:2] Moved\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n18 OK MOVE completed\r\n"
            )
        );
        assert!(inbox.snapshot().messages.is_empty(), "MOVE really moves");
        let out = talk(&mut s, "20 SELECT Trash\r\n");
        assert!(out.contains("* 2 EXISTS"), "{out}");
        let out = talk(
            &mut s,
            "21 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        );
        assert!(
            out.contains("FLAGS (\\Flagged)") && out.contains("Subject: m1"),
            "{out}"
        );
        // UID EXPUNGE removes only the named \Deleted messages.
        talk(&mut s, "22 STORE 1:2 +FLAGS (\\Deleted)\r\n");
        assert_eq!(
            talk(&mut s, "23 UID EXPUNGE 2\r\n"),
            "* 2 EXPUNGE\r\n23 OK UID EXPUNGE completed\r\n"
        );
        // APPENDUID names the target's UIDVALIDITY.
        let out = talk(&mut s, "24 APPEND Drafts (\\Draft) {9+}\r\nSubject: \r\n");
        assert!(out.starts_with("24 OK [APPENDUID "), "{out}");
        assert!(talk(&mut s, "25 APPEND Nowhere {1+}\r\nx\r\n").starts_with("25 NO [TRYCREATE]"));
        // RENAME and DELETE.
        assert!(talk(&mut s, "26 RENAME \"Entw&APw-rfe\" Old\r\n").starts_with("26 OK"));
        let out = talk(&mut s, "27 LIST \"\" Old*\r\n");
        assert!(out.contains("\"Old/Alt\""), "{out}");
        assert!(talk(&mut s, "28 DELETE Old\r\n").starts_with("28 NO [CANNOT]"));
        assert!(talk(&mut s, "29 DELETE Old/Alt\r\n").starts_with("29 OK"));
        assert!(talk(&mut s, "30 DELETE Trash\r\n").starts_with("30 OK"));
        assert!(
            talk(&mut s, "31 FETCH 1 FLAGS\r\n").starts_with("31 BAD"),
            "deleted mailbox is deselected"
        );
        assert!(talk(&mut s, "32 SELECT Trash\r\n").starts_with("32 NO [NONEXISTENT]"));
    }

    #[test]
    fn condstore_modseq_changedsince_unchangedsince() {
        let (_d, inbox, mut s) = setup();
        for i in 0..3 {
            inbox
                .deliver(
                    format!("Subject: c{i}\r\n\r\n").as_bytes(),
                    DeliverOptions::default(),
                )
                .unwrap();
        }
        talk(&mut s, "1 LOGIN bob pw\r\n");
        let out = talk(&mut s, "2 SELECT INBOX (CONDSTORE)\r\n");
        let high: u64 = out
            .split("[HIGHESTMODSEQ ")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(high, inbox.snapshot().highest_modseq);
        let out = talk(&mut s, "3 STORE 2 +FLAGS.SILENT (\\Seen)\r\n");
        assert_eq!(out, "3 OK STORE completed\r\n");
        let m2 = inbox.snapshot().messages[1].modseq;
        assert!(m2 > high, "a flag change raises the mod-sequence");
        // Only what changed since `high`.
        let out = talk(
            &mut s,
            &format!("4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {high})\r\n"),
        );
        assert_eq!(
            out,
            format!("* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ({m2}))\r\n4 OK FETCH completed\r\n")
        );
        // A conditional STORE refuses messages changed since.
        let out = talk(
            &mut s,
            &format!("5 UID STORE 1:2 (UNCHANGEDSINCE {high}) +FLAGS (\\Flagged)\r\n"),
        );
        assert!(
            out.ends_with("5 OK [MODIFIED 2] Conditional STORE failed for some\r\n"),
            "{out}"
        );
        assert!(
            out.contains("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ("),
            "{out}"
        );
        let snap = inbox.snapshot();
        assert!(!snap.messages[1].flags.contains(Flags::FLAGGED));
        let out = talk(&mut s, &format!("6 SEARCH MODSEQ {}\r\n", m2 + 1));
        assert_eq!(
            out,
            format!(
                "* SEARCH 1 (MODSEQ {})\r\n6 OK SEARCH completed\r\n",
                snap.messages[0].modseq
            )
        );
        let out = talk(&mut s, "7 STATUS INBOX (HIGHESTMODSEQ)\r\n");
        assert!(
            out.contains(&format!("HIGHESTMODSEQ {}", snap.highest_modseq)),
            "{out}"
        );
        // Another session's change reaches this one with its MODSEQ.
        inbox.set_flags(3, Flags::ANSWERED).unwrap();
        let out = talk(&mut s, "8 NOOP\r\n");
        let m3 = inbox.snapshot().messages[2].modseq;
        assert!(
            out.starts_with(&format!("* 3 FETCH (FLAGS (\\Answered) MODSEQ ({m3}))\r\n")),
            "{out}"
        );
    }

    fn inbox_validity_of(s: &mut Session<One>, name: &str) -> String {
        let out = talk(s, &format!("v STATUS {name} (UIDVALIDITY)\r\n"));
        out.split("UIDVALIDITY ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    }
}
