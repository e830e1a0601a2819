//! Header fields: splitting a message into fields and body, reading values, dates.

use chrono::{DateTime, Utc};

/// One header field: its name and its raw bytes (name, colon, value, folded lines, CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// Field name as written.
    pub name: &'a str,
    /// The complete raw field including the final line break.
    pub raw: &'a [u8],
}

impl HeaderField<'_> {
    /// The unfolded value with surrounding white space removed.
    pub fn value(&self) -> String {
        let raw = String::from_utf8_lossy(self.raw);
        let v = raw.split_once(':').map(|(_, v)| v).unwrap_or("");
        v.replace("\r\n", "").replace('\n', "").trim().to_string()
    }
}

/// Splits a message into its header fields and the body (after the empty line).
pub fn split_header(msg: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut fields = Vec::new();
    let mut pos = 0;
    let mut start: Option<usize> = None;
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(msg.len());
        let line = &msg[pos..end];
        let is_blank = line == b"\r\n" || line == b"\n";
        let is_cont = matches!(line.first(), Some(b' ' | b'\t'));
        if !is_cont && let Some(s) = start.take() {
            push_field(&mut fields, &msg[s..pos]);
        }
        if is_blank {
            return (fields, &msg[end..]);
        }
        if !is_cont {
            if !line.contains(&b':') {
                // Not a header line: the header ends here (no blank line).
                return (fields, &msg[pos..]);
            }
            start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = start {
        push_field(&mut fields, &msg[s..]);
    }
    (fields, &msg[msg.len()..])
}

fn push_field<'a>(fields: &mut Vec<HeaderField<'a>>, raw: &'a [u8]) {
    let colon = raw.iter().position(|&b| b == b':').unwrap_or(0);
    let name = std::str::from_utf8(&raw[..colon]).unwrap_or("").trim();
    fields.push(HeaderField { name, raw });
}

/// The first value of a header, unfolded.
pub fn header_value(msg: &[u8], name: &str) -> Option<String> {
    split_header(msg)
        .0
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(HeaderField::value)
}

/// The Message-ID header value, if any.
pub fn message_id(msg: &[u8]) -> Option<String> {
    header_value(msg, "Message-ID").filter(|v| !v.is_empty())
}

/// An RFC 5322 date in UTC, e.g. `Tue, 24 Nov 2026 15:19:49 +0000`.
pub fn rfc5322_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_folded_headers() {
        let msg = b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n";
        let (f, body) = split_header(msg);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].value(), "a b");
        assert_eq!(body, b"body\r\n");
        assert_eq!(header_value(msg, "from").as_deref(), Some("x"));
        assert_eq!(message_id(b"Message-ID:  \r\n\r\n"), None);
    }
}
