//! Evaluating SEARCH keys against one message, and sequence-set membership.

use std::cell::OnceCell;

use chrono::{NaiveDate, TimeZone, Utc};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::MessageParser;

use crate::message::split_header;
use crate::store::{Flags, MessageMeta};

/// Whether `value` is in `set`, where `*` means `largest`. Never expands ranges.
pub fn set_contains(set: &SequenceSet, value: u32, largest: u32) -> bool {
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => v(s) == value,
        Sequence::Range(a, b) => {
            let (lo, hi) = (v(a).min(v(b)), v(a).max(v(b)));
            (lo..=hi).contains(&value)
        }
    })
}

/// One message as SEARCH sees it; the text is loaded only if a key needs it.
pub struct Candidate<'a> {
    /// Message sequence number.
    pub seq: u32,
    /// Store metadata.
    pub meta: &'a MessageMeta,
    /// Highest sequence number in the mailbox.
    pub max_seq: u32,
    /// Highest UID in the mailbox.
    pub max_uid: u32,
    /// Loads the message bytes.
    pub load: &'a dyn Fn() -> Vec<u8>,
    /// Cached bytes.
    pub raw: OnceCell<Vec<u8>>,
}

impl Candidate<'_> {
    fn raw(&self) -> &[u8] {
        self.raw.get_or_init(|| (self.load)())
    }

    fn header_contains(&self, name: &str, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        let raw = self.raw();
        let parsed = MessageParser::default().parse_headers(raw);
        let decoded = parsed
            .as_ref()
            .and_then(|m| match name.to_ascii_lowercase().as_str() {
                "subject" => m.subject().map(str::to_string),
                "from" | "to" | "cc" | "bcc" => {
                    let a = match name.to_ascii_lowercase().as_str() {
                        "from" => m.from(),
                        "to" => m.to(),
                        "cc" => m.cc(),
                        _ => m.bcc(),
                    };
                    a.map(|a| {
                        a.iter()
                            .map(|x| {
                                format!(
                                    "{} <{}>",
                                    x.name.as_deref().unwrap_or(""),
                                    x.address.as_deref().unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                }
                _ => None,
            });
        split_header(raw)
            .0
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .any(|f| needle.is_empty() || f.value().to_lowercase().contains(&needle))
            || decoded.is_some_and(|d| d.to_lowercase().contains(&needle))
    }

    fn body_contains(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        let raw = self.raw();
        let (_, body) = split_header(raw);
        if String::from_utf8_lossy(body)
            .to_lowercase()
            .contains(&needle)
        {
            return true;
        }
        MessageParser::default().parse(raw).is_some_and(|m| {
            (0..m.text_body_count())
                .filter_map(|i| m.body_text(i))
                .any(|t| t.to_lowercase().contains(&needle))
        })
    }

    fn sent_date(&self) -> Option<NaiveDate> {
        let m = MessageParser::default().parse_headers(self.raw())?;
        let d = m.date()?;
        NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
    }

    fn internal_date(&self) -> NaiveDate {
        Utc.timestamp_opt(self.meta.internal_date, 0)
            .single()
            .unwrap_or_default()
            .date_naive()
    }
}

fn astr(a: &impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

/// Whether a message matches a search key.
pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>) -> bool {
    let f = c.meta.flags;
    let d = |n: &imap_codec::imap_types::datetime::NaiveDate| *n.as_ref();
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(k, c)),
        SearchKey::Or(a, b) => matches(a, c) || matches(b, c),
        SearchKey::Not(k) => !matches(k, c),
        SearchKey::All => true,
        SearchKey::SequenceSet(s) => set_contains(s, c.seq, c.max_seq),
        SearchKey::Uid(s) => set_contains(s, c.meta.uid, c.max_uid),
        SearchKey::Answered => f.contains(Flags::ANSWERED),
        SearchKey::Unanswered => !f.contains(Flags::ANSWERED),
        SearchKey::Deleted => f.contains(Flags::DELETED),
        SearchKey::Undeleted => !f.contains(Flags::DELETED),
        SearchKey::Draft => f.contains(Flags::DRAFT),
        SearchKey::Undraft => !f.contains(Flags::DRAFT),
        SearchKey::Flagged => f.contains(Flags::FLAGGED),
        SearchKey::Unflagged => !f.contains(Flags::FLAGGED),
        SearchKey::Seen => f.contains(Flags::SEEN),
        SearchKey::Unseen | SearchKey::New => !f.contains(Flags::SEEN),
        SearchKey::Old => true,
        SearchKey::Recent => false,
        SearchKey::Keyword(k) => Flags::keyword(k.as_ref()).is_some_and(|k| f.contains(k)),
        SearchKey::Unkeyword(k) => !Flags::keyword(k.as_ref()).is_some_and(|k| f.contains(k)),
        SearchKey::Larger(n) => c.meta.size > u64::from(*n),
        SearchKey::Smaller(n) => c.meta.size < u64::from(*n),
        SearchKey::Since(n) => c.internal_date() >= d(n),
        SearchKey::Before(n) => c.internal_date() < d(n),
        SearchKey::On(n) => c.internal_date() == d(n),
        SearchKey::SentSince(n) => c.sent_date().is_some_and(|s| s >= d(n)),
        SearchKey::SentBefore(n) => c.sent_date().is_some_and(|s| s < d(n)),
        SearchKey::SentOn(n) => c.sent_date().is_some_and(|s| s == d(n)),
        SearchKey::From(s) => c.header_contains("From", &astr(s)),
        SearchKey::To(s) => c.header_contains("To", &astr(s)),
        SearchKey::Cc(s) => c.header_contains("Cc", &astr(s)),
        SearchKey::Bcc(s) => c.header_contains("Bcc", &astr(s)),
        SearchKey::Subject(s) => c.header_contains("Subject", &astr(s)),
        SearchKey::Header(name, s) => c.header_contains(&astr(name), &astr(s)),
        SearchKey::Body(s) => c.body_contains(&astr(s)),
        SearchKey::Text(s) => {
            let needle = astr(s).to_lowercase();
            let (fields, _) = split_header(c.raw());
            fields.iter().any(|h| {
                String::from_utf8_lossy(h.raw)
                    .to_lowercase()
                    .contains(&needle)
            }) || c.body_contains(&astr(s))
        }
        SearchKey::ModSequence { modseq, .. } => c.meta.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}
