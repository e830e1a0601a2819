//! The mailbox-level commands of a logged-in session: SELECT, EXAMINE, CREATE, DELETE, RENAME,
//! SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS and APPEND. Names travel in modified UTF-7
//! ([`super::utf7`]); the store sees UTF-8.

use std::sync::Arc;

use imap_codec::imap_types::command::{CommandBody, SelectParameter};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use super::session::{ALL_FLAGS, Accounts, SHOWN_FLAGS, Selected, Session, to_flags};
use super::utf7;
use crate::message::message_id;
use crate::store::{
    DELIMITER, DedupeKey, DeliverOptions, Delivered, Flags, FolderError, MailStore, Mailboxes,
    SpecialUse, StoreError,
};

/// A mailbox argument as a UTF-8 name.
pub(super) fn mailbox_name(m: &Mailbox<'_>) -> Result<String, utf7::Utf7Error> {
    match m {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(o) => utf7::decode(o.as_ref()),
    }
}

/// A name as an IMAP quoted string, in modified UTF-7.
pub(super) fn quoted(name: &str) -> String {
    let wire = utf7::encode(name);
    let mut s = String::with_capacity(wire.len() + 2);
    s.push('"');
    for c in wire.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// IMAP LIST pattern match on wire names: `*` matches anything, `%` anything but the
/// hierarchy delimiter.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != DELIMITER as u8)
            .any(|i| glob(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// Whether the wire pattern matches the UTF-8 name (INBOX in any case).
fn matches(pattern: &[u8], name: &str) -> bool {
    let wire = utf7::encode(name);
    if glob(pattern, wire.as_bytes()) {
        return true;
    }
    // "inbox", "Inbox/%": the first level INBOX is case-insensitive.
    if let Some(rest) = name.strip_prefix("INBOX")
        && pattern.len() >= 5
        && pattern[..5].eq_ignore_ascii_case(b"INBOX")
    {
        let mut p = b"INBOX".to_vec();
        p.extend_from_slice(&pattern[5..]);
        return glob(&p, format!("INBOX{}", utf7::encode(rest)).as_bytes());
    }
    false
}

fn pattern_bytes(reference: &Mailbox<'_>, pattern: &ListMailbox<'_>) -> Vec<u8> {
    let mut p = match reference {
        Mailbox::Inbox => b"INBOX".to_vec(),
        Mailbox::Other(o) => o.as_ref().to_vec(),
    };
    p.extend_from_slice(match pattern {
        ListMailbox::Token(t) => t.as_ref(),
        ListMailbox::String(s) => s.as_ref(),
    });
    p
}

fn folder_error(e: &FolderError) -> String {
    let code = match e {
        FolderError::Exists(_) => "ALREADYEXISTS",
        FolderError::NotFound(_) => "NONEXISTENT",
        FolderError::InvalidName { .. } | FolderError::Inbox(_) | FolderError::HasChildren(_) => {
            "CANNOT"
        }
        FolderError::TooMany(_) => "LIMIT",
        FolderError::Store(StoreError::OverQuota { .. }) => "OVERQUOTA",
        FolderError::Store(_) | FolderError::Io(_) => "SERVERBUG",
    };
    format!("[{code}] {e}")
}

impl<A: Accounts> Session<A> {
    /// A command of the authenticated state; anything else goes on to the selected state.
    pub(super) fn mailbox_command(
        &mut self,
        tag: &str,
        mbs: &Arc<dyn Mailboxes>,
        body: CommandBody<'_>,
    ) {
        match body {
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                self.condstore |= parameters.contains(&SelectParameter::CondStore);
                self.select(tag, mbs, &mailbox, false)
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                self.condstore |= parameters.contains(&SelectParameter::CondStore);
                self.select(tag, mbs, &mailbox, true)
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(tag, mbs, &pattern_bytes(&reference, &mailbox_wildcard)),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.lsub(tag, mbs, &pattern_bytes(&reference, &mailbox_wildcard)),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(tag, mbs, &mailbox, &item_names),
            CommandBody::Create { mailbox } => {
                self.named(tag, &mailbox, "CREATE", |n| mbs.create(n))
            }
            CommandBody::Delete { mailbox } => {
                let gone = mailbox_name(&mailbox).ok().and_then(|n| mbs.open(&n));
                self.named(tag, &mailbox, "DELETE", |n| mbs.delete(n));
                if let (Some(gone), Some(sel)) = (gone, self.selected.as_ref())
                    && Arc::ptr_eq(&gone, &sel.store)
                {
                    self.selected = None;
                }
            }
            CommandBody::Rename { from, to } => {
                let to = match mailbox_name(&to) {
                    Ok(n) => n,
                    Err(e) => return self.bad(tag, &e.to_string()),
                };
                self.named(tag, &from, "RENAME", |n| mbs.rename(n, &to))
            }
            CommandBody::Subscribe { mailbox } => {
                self.named(tag, &mailbox, "SUBSCRIBE", |n| mbs.set_subscribed(n, true))
            }
            CommandBody::Unsubscribe { mailbox } => self.named(tag, &mailbox, "UNSUBSCRIBE", |n| {
                mbs.set_subscribed(n, false)
            }),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let data = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data(),
                    LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(tag, mbs, &mailbox, &flags, date, data)
            }
            body => self.selected_or_bad(tag, body),
        }
    }

    /// Runs a store operation on a named mailbox and answers it.
    fn named(
        &mut self,
        tag: &str,
        mailbox: &Mailbox<'_>,
        what: &str,
        f: impl FnOnce(&str) -> Result<(), FolderError>,
    ) {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, &e.to_string()),
        };
        match f(&name) {
            Ok(()) => self.ok(tag, &format!("{what} completed")),
            Err(e) => self.no(tag, &folder_error(&e)),
        }
    }

    /// The mailbox a command names, or a NO with `code` on the way out.
    pub(super) fn target(
        &mut self,
        tag: &str,
        mbs: &Arc<dyn Mailboxes>,
        mailbox: &Mailbox<'_>,
        code: &str,
    ) -> Option<Arc<dyn MailStore>> {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => {
                self.bad(tag, &e.to_string());
                return None;
            }
        };
        let found = mbs.open(&name);
        if found.is_none() {
            self.no(tag, &format!("[{code}] No mailbox named {}", quoted(&name)));
        }
        found
    }

    fn select(
        &mut self,
        tag: &str,
        mbs: &Arc<dyn Mailboxes>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
    ) {
        self.selected = None;
        let Some(store) = self.target(tag, mbs, mailbox, "NONEXISTENT") else {
            return;
        };
        // Subscribed before the snapshot, so no change after it goes unnoticed.
        let changes = store.subscribe();
        let snap = store.snapshot();
        self.line(&format!("* FLAGS ({SHOWN_FLAGS})"));
        if read_only {
            self.line("* OK [PERMANENTFLAGS ()] Read-only mailbox");
        } else {
            self.line(&format!(
                "* OK [PERMANENTFLAGS ({ALL_FLAGS})] Flags permitted"
            ));
        }
        self.line(&format!("* {} EXISTS", snap.messages.len()));
        self.line("* 0 RECENT");
        if let Some(i) = snap
            .messages
            .iter()
            .position(|m| !m.flags.contains(Flags::SEEN))
        {
            self.line(&format!("* OK [UNSEEN {}] First unseen", i + 1));
        }
        self.line(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid",
            snap.uidvalidity
        ));
        self.line(&format!(
            "* OK [UIDNEXT {}] Predicted next UID",
            snap.uidnext
        ));
        self.line(&format!(
            "* OK [HIGHESTMODSEQ {}] Highest",
            snap.highest_modseq
        ));
        self.selected = Some(Selected {
            read_only,
            store,
            messages: snap.messages,
            changes,
            unreported: false,
        });
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let cmd = if read_only { "EXAMINE" } else { "SELECT" };
        self.ok(tag, &format!("[{mode}] {cmd} completed"))
    }

    fn list(&mut self, tag: &str, mbs: &Arc<dyn Mailboxes>, pattern: &[u8]) {
        if pattern.is_empty() {
            // The hierarchy delimiter and root (RFC 3501 §6.3.8).
            self.line(&format!("* LIST (\\Noselect) \"{DELIMITER}\" \"\""));
            return self.ok(tag, "LIST completed");
        }
        let all = mbs.list();
        for f in &all {
            if !matches(pattern, &f.name) {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", f.name);
            let children = all.iter().any(|o| o.name.starts_with(&prefix));
            let mut attrs = vec![if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            }];
            if let Some(su) = f.special_use {
                attrs.push(su.attribute());
            }
            self.line(&format!(
                "* LIST ({}) \"{DELIMITER}\" {}",
                attrs.join(" "),
                quoted(&f.name)
            ));
        }
        self.ok(tag, "LIST completed")
    }

    fn lsub(&mut self, tag: &str, mbs: &Arc<dyn Mailboxes>, pattern: &[u8]) {
        let subs = mbs.subscriptions();
        let exists: Vec<String> = mbs.list().into_iter().map(|f| f.name).collect();
        let mut shown: Vec<String> = Vec::new();
        for name in &subs {
            if matches(pattern, name) {
                let attrs = if exists.contains(name) {
                    ""
                } else {
                    "\\Noselect"
                };
                self.line(&format!(
                    "* LSUB ({attrs}) \"{DELIMITER}\" {}",
                    quoted(name)
                ));
                continue;
            }
            // "foo/bar" subscribed but not "foo": "%" must still show "foo", \Noselect.
            let levels: Vec<&str> = name.split(DELIMITER).collect();
            for n in 1..levels.len() {
                let parent = levels[..n].join(&DELIMITER.to_string());
                if matches(pattern, &parent) && !subs.contains(&parent) && !shown.contains(&parent)
                {
                    self.line(&format!(
                        "* LSUB (\\Noselect) \"{DELIMITER}\" {}",
                        quoted(&parent)
                    ));
                    shown.push(parent);
                }
            }
        }
        self.ok(tag, "LSUB completed")
    }

    fn status(
        &mut self,
        tag: &str,
        mbs: &Arc<dyn Mailboxes>,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) {
        let Some(store) = self.target(tag, mbs, mailbox, "NONEXISTENT") else {
            return;
        };
        let name = mailbox_name(mailbox).unwrap_or_default();
        let snap = store.snapshot();
        let items: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                StatusDataItemName::Messages => Some(format!("MESSAGES {}", snap.messages.len())),
                StatusDataItemName::Recent => Some("RECENT 0".into()),
                StatusDataItemName::UidNext => Some(format!("UIDNEXT {}", snap.uidnext)),
                StatusDataItemName::UidValidity => {
                    Some(format!("UIDVALIDITY {}", snap.uidvalidity))
                }
                StatusDataItemName::HighestModSeq => {
                    Some(format!("HIGHESTMODSEQ {}", snap.highest_modseq))
                }
                StatusDataItemName::Unseen => Some(format!(
                    "UNSEEN {}",
                    snap.messages
                        .iter()
                        .filter(|m| !m.flags.contains(Flags::SEEN))
                        .count()
                )),
                _ => None,
            })
            .collect();
        self.line(&format!("* STATUS {} ({})", quoted(&name), items.join(" ")));
        self.ok(tag, "STATUS completed")
    }

    fn append(
        &mut self,
        tag: &str,
        mbs: &Arc<dyn Mailboxes>,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<i64>,
        data: &[u8],
    ) {
        let Some(store) = self.target(tag, mbs, mailbox, "TRYCREATE") else {
            return;
        };
        // The node filed a copy of what its user submitted in Sent; the client's own copy
        // of the same message is not stored a second time.
        if let Some(sent) = mbs.special(SpecialUse::Sent)
            && Arc::ptr_eq(&sent, &store)
            && let Some(id) = message_id(data)
            && let Some(uid) = store.uid_of(DedupeKey::sent_copy(&id))
        {
            let v = store.snapshot().uidvalidity;
            return self.ok(
                tag,
                &format!("[APPENDUID {v} {uid}] APPEND completed (filed at submission)"),
            );
        }
        let opts = DeliverOptions {
            flags: to_flags(flags),
            internal_date: date,
            ..Default::default()
        };
        match store.deliver(data, opts) {
            Ok(Delivered::Stored(uid)) => {
                if self.selected.is_some() {
                    self.sync(false);
                }
                let v = store.snapshot().uidvalidity;
                self.ok(tag, &format!("[APPENDUID {v} {uid}] APPEND completed"))
            }
            Ok(Delivered::Duplicate) => self.no(tag, "[SERVERBUG] Not stored"),
            Err(e @ StoreError::OverQuota { .. }) => self.no(tag, &format!("[OVERQUOTA] {e}")),
            Err(e) => self.no(tag, &format!("[SERVERBUG] Cannot store: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        assert!(matches(b"*", "Work/Projects"));
        assert!(matches(b"%", "Work"));
        assert!(!matches(b"%", "Work/Projects"));
        assert!(matches(b"Work/%", "Work/Projects"));
        assert!(!matches(b"Work/%", "Work/Projects/2026"));
        assert!(matches(b"inbox", "INBOX"));
        assert!(matches(b"Inbox/*", "INBOX/x"));
        assert!(matches(b"Entw&APw-rfe", "Entwürfe"));
        assert!(matches(b"Entw*", "Entwürfe"));
        assert!(!matches(b"Sent", "Sent/Old"));
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
