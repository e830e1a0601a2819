//! Rendering FETCH data: ENVELOPE, BODYSTRUCTURE, body sections and IMAP strings.

use std::fmt::Write as _;

use chrono::{TimeZone, Utc};
use imap_codec::imap_types::fetch::{Part, Section};
use mail_parser::{Address, Message, MessagePart, MimeHeaders, PartType};

use crate::message::split_header;

/// Appends an IMAP `nstring`: NIL, a quoted string, or a literal for anything not plain ASCII.
pub fn nstring(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(b"NIL"),
        Some(s) => string(out, s.as_bytes()),
    }
}

/// Appends an IMAP `string` (quoted when possible, else a literal).
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1000 && s.iter().all(|&b| (0x20..0x7f).contains(&b));
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends a literal `{n}\r\n<bytes>`.
pub fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(Writer(out), "{{{}}}\r\n", bytes.len());
    out.extend_from_slice(bytes);
}

struct Writer<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// INTERNALDATE text, e.g. `24-Nov-2026 15:19:49 +0000`.
pub fn internal_date(unix: i64) -> String {
    Utc.timestamp_opt(unix, 0)
        .single()
        .unwrap_or_default()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

fn addresses(out: &mut Vec<u8>, addr: Option<&Address<'_>>) {
    let list: Vec<_> = addr.map(|a| a.iter().collect()).unwrap_or_default();
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.extend_from_slice(b" NIL ");
        let full = a.address.as_deref().unwrap_or("");
        let (mailbox, host) = full.rsplit_once('@').unwrap_or((full, ""));
        nstring(out, Some(mailbox));
        out.push(b' ');
        nstring(out, (!host.is_empty()).then_some(host));
        out.push(b')');
    }
    out.push(b')');
}

/// Appends the ENVELOPE structure of a parsed message whose raw bytes are `raw`.
pub fn envelope(out: &mut Vec<u8>, msg: &Message<'_>, raw: &[u8]) {
    let (fields, _) = split_header(raw);
    let raw_header = |name: &str| {
        fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value())
    };
    out.push(b'(');
    nstring(out, raw_header("Date").as_deref());
    out.push(b' ');
    nstring(out, raw_header("Subject").as_deref());
    out.push(b' ');
    addresses(out, msg.from());
    out.push(b' ');
    addresses(out, msg.sender().or(msg.from()));
    out.push(b' ');
    addresses(out, msg.reply_to().or(msg.from()));
    out.push(b' ');
    addresses(out, msg.to());
    out.push(b' ');
    addresses(out, msg.cc());
    out.push(b' ');
    addresses(out, msg.bcc());
    out.push(b' ');
    nstring(out, raw_header("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_header("Message-ID").as_deref());
    out.push(b')');
}

/// Appends the BODYSTRUCTURE of a parsed message.
pub fn body_structure(out: &mut Vec<u8>, msg: &Message<'_>) {
    part_structure(out, msg, 0, 0);
}

fn part_structure(out: &mut Vec<u8>, msg: &Message<'_>, id: u32, depth: usize) {
    let Some(part) = msg.parts.get(id as usize) else {
        out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        return;
    };
    let raw = msg.raw_message();
    let ct = part.content_type();
    let ctype = ct
        .map(|c| c.c_type.to_ascii_uppercase())
        .unwrap_or_else(|| "TEXT".into());
    let subtype = ct
        .and_then(|c| c.c_subtype.as_ref().map(|s| s.to_ascii_uppercase()))
        .unwrap_or_else(|| {
            if ctype == "TEXT" {
                "PLAIN".into()
            } else {
                "OCTET-STREAM".into()
            }
        });
    match &part.body {
        PartType::Multipart(children) if depth < 20 => {
            out.push(b'(');
            for c in children {
                part_structure(out, msg, *c, depth + 1);
            }
            out.push(b' ');
            string(out, subtype.as_bytes());
            out.push(b')');
        }
        body => {
            out.push(b'(');
            string(out, ctype.as_bytes());
            out.push(b' ');
            string(out, subtype.as_bytes());
            out.push(b' ');
            params(out, part, &ctype);
            out.push(b' ');
            nstring(out, part.content_id());
            out.push(b' ');
            nstring(out, part.content_description());
            out.push(b' ');
            let enc = part
                .content_transfer_encoding()
                .unwrap_or("7bit")
                .to_ascii_uppercase();
            string(out, enc.as_bytes());
            let start = (part.offset_body as usize).min(raw.len());
            let end = (part.offset_end as usize).clamp(start, raw.len());
            let body_raw = &raw[start..end];
            let _ = write!(Writer(out), " {}", body_raw.len());
            let lines = body_raw.iter().filter(|&&b| b == b'\n').count();
            if let PartType::Message(nested) = body
                && depth < 20
            {
                out.push(b' ');
                envelope(out, nested, nested.raw_message());
                out.push(b' ');
                part_structure(out, nested, 0, depth + 1);
                let _ = write!(Writer(out), " {lines}");
            } else if ctype == "TEXT" {
                let _ = write!(Writer(out), " {lines}");
            }
            out.push(b')');
        }
    }
}

fn params(out: &mut Vec<u8>, part: &MessagePart<'_>, ctype: &str) {
    let attrs: Vec<(String, String)> = part
        .content_type()
        .and_then(|c| c.attributes.as_ref())
        .map(|a| {
            a.iter()
                .map(|a| (a.name.to_ascii_uppercase(), a.value.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let attrs = if attrs.is_empty() && ctype == "TEXT" {
        vec![("CHARSET".to_string(), "US-ASCII".to_string())]
    } else {
        attrs
    };
    if attrs.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.push(b')');
}

/// The text of a section specification as it appears in the response, e.g. `HEADER.FIELDS (TO)`.
pub fn section_name(section: Option<&Section<'_>>) -> String {
    let part = |p: &Part| {
        p.0.as_ref()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(".")
    };
    let fields = |f: &[imap_codec::imap_types::core::AString<'_>]| {
        f.iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let prefixed = |p: &Option<Part>, s: &str| match p {
        Some(p) => format!("{}.{s}", part(p)),
        None => s.to_string(),
    };
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => prefixed(p, "HEADER"),
        Some(Section::Text(p)) => prefixed(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
        Some(Section::HeaderFields(p, f)) => {
            format!("{} ({})", prefixed(p, "HEADER.FIELDS"), fields(f.as_ref()))
        }
        Some(Section::HeaderFieldsNot(p, f)) => {
            format!(
                "{} ({})",
                prefixed(p, "HEADER.FIELDS.NOT"),
                fields(f.as_ref())
            )
        }
    }
}

/// Header block (with the blank line) and body of raw message bytes.
fn header_and_text(raw: &[u8]) -> (&[u8], &[u8]) {
    let (_, body) = split_header(raw);
    let hlen = raw.len() - body.len();
    (&raw[..hlen], body)
}

fn filter_fields(raw: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in split_header(raw).0 {
        let listed = names.iter().any(|n| n.eq_ignore_ascii_case(f.name));
        if listed == keep {
            out.extend_from_slice(f.raw);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Finds the MIME part at a part path; returns the message it belongs to and its index.
fn find_part<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<(&'m Message<'x>, u32)> {
    let mut cur_msg = msg;
    let mut cur = 0u32;
    for (i, &n) in path.iter().enumerate() {
        let part = cur_msg.parts.get(cur as usize)?;
        match &part.body {
            PartType::Multipart(ch) => cur = *ch.get((n as usize).checked_sub(1)?)?,
            PartType::Message(nested) if i > 0 || cur != 0 => {
                cur_msg = nested;
                match &nested.parts.first()?.body {
                    PartType::Multipart(ch) => cur = *ch.get((n as usize).checked_sub(1)?)?,
                    _ if n == 1 => cur = 0,
                    _ => return None,
                }
            }
            _ if n == 1 && cur == 0 && i == 0 => {}
            _ => return None,
        }
    }
    Some((cur_msg, cur))
}

/// Extracts a body section from raw message bytes (`BODY[...]`). Unknown parts are empty.
pub fn section_bytes(
    raw: &[u8],
    parsed: Option<&Message<'_>>,
    section: Option<&Section<'_>>,
) -> Vec<u8> {
    let names = |f: &[imap_codec::imap_types::core::AString<'_>]| -> Vec<String> {
        f.iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .collect()
    };
    // The raw bytes of the message that `p` (if any) designates as a message/rfc822 part.
    let nested_raw = |p: &Option<Part>| -> Option<Vec<u8>> {
        match p {
            None => Some(raw.to_vec()),
            Some(p) => {
                let (m, id) = find_part(
                    parsed?,
                    p.0.as_ref()
                        .iter()
                        .map(|n| n.get())
                        .collect::<Vec<_>>()
                        .as_slice(),
                )?;
                match &m.parts.get(id as usize)?.body {
                    PartType::Message(nested) => Some(nested.raw_message().to_vec()),
                    _ => None,
                }
            }
        }
    };
    match section {
        None => raw.to_vec(),
        Some(Section::Header(p)) => nested_raw(p)
            .map(|r| header_and_text(&r).0.to_vec())
            .unwrap_or_default(),
        Some(Section::Text(p)) => nested_raw(p)
            .map(|r| header_and_text(&r).1.to_vec())
            .unwrap_or_default(),
        Some(Section::HeaderFields(p, f)) => nested_raw(p)
            .map(|r| filter_fields(&r, &names(f.as_ref()), true))
            .unwrap_or_default(),
        Some(Section::HeaderFieldsNot(p, f)) => nested_raw(p)
            .map(|r| filter_fields(&r, &names(f.as_ref()), false))
            .unwrap_or_default(),
        Some(Section::Part(p)) | Some(Section::Mime(p)) => {
            let path: Vec<u32> = p.0.as_ref().iter().map(|n| n.get()).collect();
            let Some((m, id)) = parsed.and_then(|m| find_part(m, &path)) else {
                return Vec::new();
            };
            let Some(part) = m.parts.get(id as usize) else {
                return Vec::new();
            };
            let r = m.raw_message();
            let clamp = |a: u32, b: u32| {
                let a = (a as usize).min(r.len());
                r[a..(b as usize).clamp(a, r.len())].to_vec()
            };
            if matches!(section, Some(Section::Mime(_))) {
                clamp(part.offset_header, part.offset_body)
            } else if id == 0 && path.len() == 1 && !part.is_multipart() {
                header_and_text(r).1.to_vec()
            } else {
                clamp(part.offset_body, part.offset_end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    const MULTI: &[u8] = b"From: Ann <ann@a.onion>\r\nTo: bob@b.onion\r\nSubject: hi\r\n\
Message-ID: <1@a.onion>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n\
--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\n\
Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--XX--\r\n";

    #[test]
    fn envelope_and_structure() {
        let msg = MessageParser::default().parse(MULTI).unwrap();
        let mut out = Vec::new();
        envelope(&mut out, &msg, MULTI);
        let env = String::from_utf8(out).unwrap();
        assert_eq!(
            env,
            "(NIL \"hi\" ((\"Ann\" NIL \"ann\" \"a.onion\")) ((\"Ann\" NIL \"ann\" \"a.onion\")) \
             ((\"Ann\" NIL \"ann\" \"a.onion\")) ((NIL NIL \"bob\" \"b.onion\")) NIL NIL NIL \"<1@a.onion>\")"
        );
        let mut out = Vec::new();
        body_structure(&mut out, &msg);
        let bs = String::from_utf8(out).unwrap();
        assert!(
            bs.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0)"),
            "{bs}"
        );
        assert!(bs.ends_with("\"BASE64\" 4) \"MIXED\")"), "{bs}");
        let part1 = section_bytes(
            MULTI,
            Some(&msg),
            Some(&Section::Part(Part(
                vec![std::num::NonZeroU32::new(1).unwrap()]
                    .try_into()
                    .unwrap(),
            ))),
        );
        assert_eq!(part1, b"hello");
        let head = section_bytes(MULTI, Some(&msg), Some(&Section::Header(None)));
        assert!(head.ends_with(b"boundary=\"XX\"\r\n\r\n"));
    }

    #[test]
    fn strings_quote_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"a\"b");
        nstring(&mut out, None);
        string(&mut out, "é".as_bytes());
        assert_eq!(out, "\"a\\\"b\"NIL{2}\r\né".as_bytes());
    }
}
