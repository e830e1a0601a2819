//! The FETCH command: which messages, what each needs from the store, and one response per
//! message written straight into the session's output (spilled to the socket as it grows,
//! see [`Session::spill_if_full`]).
//!
//! What a message costs depends on the items: metadata items (FLAGS, UID, INTERNALDATE,
//! RFC822.SIZE, MODSEQ) touch no file; ENVELOPE comes from the store, which renders it once
//! per message and keeps it ([`MailStore::envelope`]); header items read only the header; the
//! rest read the whole message, and MIME-parse it only for items that need the structure.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Arc;

use imap_codec::imap_types::fetch::{MessageDataItemName, Section};
use imap_codec::imap_types::sequence::SequenceSet;
use mail_parser::MessageParser;

use super::fetch;
use super::session::{Accounts, Session};
use crate::store::{Flags, MailStore, MessageMeta};

/// What the items of one FETCH need, worked out once for all its messages.
struct Plan {
    /// Read the whole message.
    body: bool,
    /// Read the header (when not the whole message).
    header: bool,
    /// MIME-parse what was read.
    mime: bool,
    /// Write a UID item the client did not ask for (UID FETCH).
    add_uid: bool,
    /// Write MODSEQ.
    modseq: bool,
}

fn metadata_only(i: &MessageDataItemName<'_>) -> bool {
    matches!(
        i,
        MessageDataItemName::Flags
            | MessageDataItemName::Uid
            | MessageDataItemName::InternalDate
            | MessageDataItemName::Rfc822Size
            | MessageDataItemName::ModSeq
    )
}

/// Items answered from the header alone (or from the store's envelope, or metadata).
fn header_only(i: &MessageDataItemName<'_>) -> bool {
    match i {
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => true,
        MessageDataItemName::BodyExt { section, .. } => matches!(
            section,
            Some(
                Section::Header(None)
                    | Section::HeaderFields(None, _)
                    | Section::HeaderFieldsNot(None, _)
            )
        ),
        other => metadata_only(other),
    }
}

fn needs_mime(i: &MessageDataItemName<'_>) -> bool {
    match i {
        MessageDataItemName::BodyStructure | MessageDataItemName::Body => true,
        MessageDataItemName::BodyExt { section, .. } => matches!(
            section,
            Some(
                Section::Part(_)
                    | Section::Mime(_)
                    | Section::Header(Some(_))
                    | Section::Text(Some(_))
                    | Section::HeaderFields(Some(_), _)
                    | Section::HeaderFieldsNot(Some(_), _)
            )
        ),
        _ => false,
    }
}

impl Plan {
    fn new(items: &[MessageDataItemName<'_>], uid: bool, modseq: bool) -> Plan {
        let body = !items.iter().all(header_only);
        Plan {
            body,
            header: !body
                && items
                    .iter()
                    .any(|i| !metadata_only(i) && !matches!(i, MessageDataItemName::Envelope)),
            mime: items.iter().any(needs_mime),
            add_uid: uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)),
            modseq,
        }
    }
}

/// ENVELOPE from a header, for [`MailStore::envelope`].
fn render_envelope(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match MessageParser::default().parse_headers(header) {
        Some(p) => fetch::envelope(&mut out, &p, header),
        None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
    }
    out
}

/// A body section's bytes, cut to `partial`, as `BODY[name]<origin> literal`.
fn write_section(
    out: &mut Vec<u8>,
    raw: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    section: Option<&Section<'_>>,
    partial: Option<(u32, std::num::NonZeroU32)>,
) {
    let bytes = fetch::section_bytes(raw, parsed, section);
    let name = fetch::section_name(section);
    let (bytes, origin) = match partial {
        Some((start, len)) => {
            let s = (start as usize).min(bytes.len());
            let e = s.saturating_add(len.get() as usize).min(bytes.len());
            (&bytes[s..e], format!("<{start}>"))
        }
        None => (&bytes[..], String::new()),
    };
    let _ = write!(out, "BODY[{name}]{origin} ");
    fetch::literal(out, bytes);
}

impl<A: Accounts> Session<A> {
    /// FETCH or UID FETCH of `items` for the messages of `set` (changed since
    /// `changed_since`, with CONDSTORE).
    pub(super) fn fetch(
        &mut self,
        mb: &Arc<dyn MailStore>,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        uid: bool,
        changed_since: Option<u64>,
    ) {
        let asked_modseq = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq));
        let plan = Plan::new(items, uid, asked_modseq || changed_since.is_some());
        let mut targets: Vec<(u32, MessageMeta)> = self
            .resolve(set, uid)
            .into_iter()
            .filter(|(_, m)| changed_since.is_none_or(|n| m.modseq > n))
            .collect();
        let newly_seen = self.set_seen(mb, items, &mut targets);
        for (seq, meta) in targets {
            if self.is_closed() {
                return; // the client is gone (a spill failed)
            }
            self.fetch_one(mb, &plan, items, seq, &meta, newly_seen.contains(&meta.uid));
            self.spill_if_full();
        }
    }

    /// Bodies fetched without PEEK set \Seen: for all of them at once, durable (one directory
    /// fsync) before any of it is reported. Updates `targets` and the session's view; returns
    /// the UIDs newly seen (their FLAGS are reported even if not asked for).
    fn set_seen(
        &mut self,
        mb: &Arc<dyn MailStore>,
        items: &[MessageDataItemName<'_>],
        targets: &mut [(u32, MessageMeta)],
    ) -> HashSet<u32> {
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        let sets_seen = !read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let mut newly_seen = HashSet::new();
        if !sets_seen {
            return newly_seen;
        }
        let changes: Vec<(u32, Flags)> = targets
            .iter()
            .filter(|(_, m)| !m.flags.contains(Flags::SEEN))
            .map(|(_, m)| (m.uid, m.flags.with(Flags::SEEN)))
            .collect();
        if changes.is_empty() || mb.set_flags_many(&changes).is_err() {
            return newly_seen;
        }
        let snap = mb.snapshot();
        newly_seen.extend(changes.iter().map(|(u, _)| *u));
        for (seq, meta) in targets.iter_mut() {
            if !newly_seen.contains(&meta.uid) {
                continue;
            }
            if let Ok(j) = snap.messages.binary_search_by_key(&meta.uid, |m| m.uid) {
                *meta = snap.messages[j].clone();
            }
            if let Some(sel) = self.selected.as_mut() {
                sel.messages[*seq as usize - 1] = meta.clone();
            }
        }
        newly_seen
    }

    /// Writes the `* seq FETCH (...)` response of one message; nothing if it was expunged
    /// meanwhile.
    fn fetch_one(
        &mut self,
        mb: &Arc<dyn MailStore>,
        plan: &Plan,
        items: &[MessageDataItemName<'_>],
        seq: u32,
        meta: &MessageMeta,
        newly_seen: bool,
    ) {
        let raw = if plan.body {
            mb.read(meta.uid)
        } else if plan.header {
            mb.read_header(meta.uid)
        } else {
            Ok(Vec::new())
        };
        let Ok(raw) = raw else {
            return; // expunged meanwhile
        };
        let parsed = if plan.mime {
            MessageParser::default().parse(&raw)
        } else {
            None
        };
        // The envelope first: if the message is gone, nothing of it is written.
        let envelope = if items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Envelope))
        {
            match mb.envelope(meta.uid, render_envelope) {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        } else {
            None
        };
        let condstore = self.condstore;
        let out = &mut self.out;
        let _ = write!(out, "* {seq} FETCH (");
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b' ');
            }
        };
        if plan.add_uid {
            sep(out);
            let _ = write!(out, "UID {}", meta.uid);
        }
        let mut want_flags = newly_seen;
        for item in items {
            match item {
                // Written last (the value may have changed when \Seen was set).
                MessageDataItemName::Flags => want_flags = true,
                MessageDataItemName::ModSeq => {}
                MessageDataItemName::Uid => {
                    sep(out);
                    let _ = write!(out, "UID {}", meta.uid);
                }
                MessageDataItemName::InternalDate => {
                    sep(out);
                    let date = fetch::internal_date(meta.internal_date);
                    let _ = write!(out, "INTERNALDATE \"{date}\"");
                }
                MessageDataItemName::Rfc822Size => {
                    sep(out);
                    let _ = write!(out, "RFC822.SIZE {}", meta.size);
                }
                MessageDataItemName::Envelope => {
                    sep(out);
                    out.extend_from_slice(b"ENVELOPE ");
                    out.extend_from_slice(envelope.as_deref().unwrap_or_default());
                }
                MessageDataItemName::BodyStructure | MessageDataItemName::Body => {
                    sep(out);
                    out.extend_from_slice(if matches!(item, MessageDataItemName::Body) {
                        b"BODY "
                    } else {
                        b"BODYSTRUCTURE "
                    });
                    match &parsed {
                        Some(p) => fetch::body_structure(out, p),
                        None => {
                            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)")
                        }
                    }
                }
                MessageDataItemName::BodyExt {
                    section, partial, ..
                } => {
                    sep(out);
                    write_section(out, &raw, parsed.as_ref(), section.as_ref(), *partial);
                }
                MessageDataItemName::Rfc822 => {
                    sep(out);
                    out.extend_from_slice(b"RFC822 ");
                    fetch::literal(out, &raw);
                }
                MessageDataItemName::Rfc822Header => {
                    sep(out);
                    out.extend_from_slice(b"RFC822.HEADER ");
                    let h = fetch::section_bytes(&raw, None, Some(&Section::Header(None)));
                    fetch::literal(out, &h);
                }
                MessageDataItemName::Rfc822Text => {
                    sep(out);
                    out.extend_from_slice(b"RFC822.TEXT ");
                    let t = fetch::section_bytes(&raw, None, Some(&Section::Text(None)));
                    fetch::literal(out, &t);
                }
                _ => {}
            }
        }
        if want_flags {
            sep(out);
            out.extend_from_slice(b"FLAGS (");
            meta.flags.write_imap(out);
            out.push(b')');
        }
        if plan.modseq || (condstore && want_flags) {
            sep(out);
            let _ = write!(out, "MODSEQ ({})", meta.modseq);
        }
        out.extend_from_slice(b")\r\n");
    }
}
