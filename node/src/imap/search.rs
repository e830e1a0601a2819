//! Evaluating SEARCH keys against one message, and sequence-set membership.

use std::cell::OnceCell;

use chrono::{NaiveDate, TimeZone, Utc};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::MessageParser;

use crate::message::{HeaderField, split_header};
use crate::store::{Flags, MessageMeta, header_len};

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

/// The indices, ascending and each once, of the messages of `msgs` (in UID order, message
/// sequence number = index + 1) that `set` addresses, by UID or by sequence number; `*`
/// is the largest. Each range costs a binary search, not a pass over the mailbox, so a
/// client fetching a large mailbox one message per command (as mbsync does) stays linear.
pub fn set_indices(set: &SequenceSet, msgs: &[MessageMeta], uid: bool) -> Vec<usize> {
    let largest = if uid {
        msgs.last().map(|m| m.uid).unwrap_or(0)
    } else {
        msgs.len() as u32
    };
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    let mut ranges: Vec<(usize, usize)> = set
        .0
        .as_ref()
        .iter()
        .map(|seq| {
            let (a, b) = match seq {
                Sequence::Single(s) => (v(s), v(s)),
                Sequence::Range(a, b) => (v(a), v(b)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if uid {
                (
                    msgs.partition_point(|m| m.uid < lo),
                    msgs.partition_point(|m| m.uid <= hi),
                )
            } else {
                let len = msgs.len();
                (
                    (lo as usize).saturating_sub(1).min(len),
                    (hi as usize).min(len),
                )
            }
        })
        .filter(|(start, end)| start < end)
        .collect();
    ranges.sort_unstable();
    let mut out = Vec::new();
    let mut next = 0;
    for (start, end) in ranges {
        let start = start.max(next);
        if start < end {
            out.extend(start..end);
            next = end;
        }
    }
    out
}

/// Whether the value of the raw header field `raw` (`Name: value`, maybe folded) contains
/// `needle_lower` (already lowercased), ignoring case. A field on one line is searched in
/// place, and an ASCII needle without allocating: a header SEARCH over a large mailbox does
/// this once a message.
fn field_contains(raw: &[u8], needle_lower: &str) -> bool {
    let value = raw
        .iter()
        .position(|&b| b == b':')
        .map_or(&raw[raw.len()..], |c| &raw[c + 1..])
        .trim_ascii();
    if value.contains(&b'\n') {
        let unfolded = HeaderField { name: "", raw }.value();
        return contains_ignoring_case(unfolded.as_bytes(), needle_lower);
    }
    contains_ignoring_case(value, needle_lower)
}

/// Whether `hay` contains `needle_lower`, ignoring case (ASCII byte-wise; otherwise through
/// Unicode lowercasing).
fn contains_ignoring_case(hay: &[u8], needle_lower: &str) -> bool {
    let n = needle_lower.as_bytes();
    if needle_lower.is_ascii() {
        // Bytes of multi-byte UTF-8 sequences are >= 0x80 and never equal an ASCII byte.
        return n.is_empty() || hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    }
    String::from_utf8_lossy(hay)
        .to_lowercase()
        .contains(needle_lower)
}

/// One message as SEARCH sees it; the header or the whole text is loaded only if a key
/// needs it.
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
    /// Loads a prefix of the message holding its whole header
    /// ([`MailStore::read_header`](crate::store::MailStore::read_header)).
    pub load_header: &'a dyn Fn() -> Vec<u8>,
    /// Cached bytes.
    pub raw: OnceCell<Vec<u8>>,
    /// Cached header.
    pub header: OnceCell<Vec<u8>>,
}

impl Candidate<'_> {
    fn raw(&self) -> &[u8] {
        self.raw.get_or_init(|| (self.load)())
    }

    fn header(&self) -> &[u8] {
        match self.raw.get() {
            Some(raw) => &raw[..header_len(raw)],
            None => self.header.get_or_init(|| (self.load_header)()),
        }
    }

    fn header_contains(&self, name: &str, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        let head = self.header();
        let mut encoded = false;
        for f in split_header(head).0 {
            if !f.name.eq_ignore_ascii_case(name) {
                continue;
            }
            if needle.is_empty() || field_contains(f.raw, &needle) {
                return true;
            }
            encoded |= f.raw.windows(2).any(|w| w == b"=?");
        }
        let lname = name.to_ascii_lowercase();
        let address = matches!(lname.as_str(), "from" | "to" | "cc" | "bcc");
        // The raw text did not match: the decoded text may (RFC 2047 encoded words, and the
        // display form of addresses). Parsing only then keeps a search of plain headers cheap.
        if !encoded && !address {
            return false;
        }
        let parsed = MessageParser::default().parse_headers(head);
        let decoded = parsed.as_ref().and_then(|m| match lname.as_str() {
            "subject" => m.subject().map(str::to_string),
            "from" | "to" | "cc" | "bcc" => {
                let a = match lname.as_str() {
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
        decoded.is_some_and(|d| d.to_lowercase().contains(&needle))
    }

    fn body_contains(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        let raw = self.raw();
        let (_, body) = split_header(raw);
        if needle.is_ascii() {
            let lower = raw.to_ascii_lowercase();
            if String::from_utf8_lossy(&lower[raw.len() - body.len()..]).contains(&needle) {
                return true;
            }
            // ASCII text reads the same in every charset mail uses; only a transfer
            // encoding hides it from the raw search, so only then decode.
            let all = String::from_utf8_lossy(&lower);
            if !all.contains("base64") && !all.contains("quoted-printable") {
                return false;
            }
        } else if String::from_utf8_lossy(body)
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
        let m = MessageParser::default().parse_headers(self.header())?;
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
            let (fields, _) = split_header(c.header());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A header field's value matches ignoring case, across a fold, with non-ASCII text,
    /// and never by the field's name or beyond its value.
    #[test]
    fn header_fields_match_ignoring_case_and_folding() {
        let one = b"Subject: Quarterly Report\r\n";
        assert!(field_contains(one, "quarterly"));
        assert!(field_contains(one, "y r"));
        assert!(!field_contains(one, "subject"));
        assert!(!field_contains(one, "report\r"));
        let folded = b"Subject: the quarterly\r\n report is late\r\n";
        assert!(field_contains(folded, "quarterly report"));
        assert!(field_contains(folded, "late"));
        let utf8 = "Subject: Grüße aus Zürich\r\n".as_bytes();
        assert!(field_contains(utf8, "zürich"));
        assert!(field_contains(utf8, "aus z"));
        assert!(!field_contains(utf8, "zurich"));
        assert!(contains_ignoring_case(b"anything", ""));
    }

    /// `set_indices` finds exactly what `set_contains` accepts, for UIDs with gaps and for
    /// sequence numbers, with overlapping, reversed and `*` ranges.
    #[test]
    fn set_indices_agrees_with_set_contains() {
        let msgs: Vec<MessageMeta> = [1u32, 2, 5, 6, 7, 10, 40]
            .iter()
            .enumerate()
            .map(|(i, &uid)| MessageMeta {
                uid,
                flags: Flags::default(),
                size: 1,
                internal_date: 0,
                modseq: i as u64 + 1,
            })
            .collect();
        for text in [
            "1",
            "3",
            "5:7",
            "7:5",
            "2:*",
            "*",
            "*:6",
            "1:3,2:6",
            "6,1,6",
            "8:9",
            "41:*",
            "1:*",
            "4,3:5,10:40",
        ] {
            let set = SequenceSet::try_from(text).unwrap();
            for uid in [true, false] {
                let largest = if uid { 40 } else { msgs.len() as u32 };
                let want: Vec<usize> = (0..msgs.len())
                    .filter(|&i| {
                        let value = if uid { msgs[i].uid } else { i as u32 + 1 };
                        set_contains(&set, value, largest)
                    })
                    .collect();
                assert_eq!(set_indices(&set, &msgs, uid), want, "{text} uid={uid}");
            }
        }
        let set = SequenceSet::try_from("1:*").unwrap();
        assert!(set_indices(&set, &[], true).is_empty());
        assert!(set_indices(&set, &[], false).is_empty());
    }
}
