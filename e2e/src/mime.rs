//! The few MIME operations PGP/MIME needs on exact bytes.
//!
//! A signature covers the bytes of a MIME entity exactly as they travel (RFC 3156 §5), so
//! splitting a message into header fields and body, and a multipart body into its parts, is
//! done here on raw bytes, keeping every octet, instead of through a parser that decodes and
//! re-encodes. Structured header values (addresses, Content-Type parameters) are read with
//! `mail-parser`.

use std::borrow::Cow;

use mail_parser::{HeaderValue, MessageParser};
use rand::Rng;

use crate::error::Error;

/// Converts bare LF and bare CR line ends to CRLF (the canonical form that is signed).
/// Borrows the input when it is canonical already (what the node's queue and SMTP give).
pub(crate) fn to_crlf(input: &[u8]) -> Cow<'_, [u8]> {
    // The first line end that is not CRLF, if any.
    let mut bad = None;
    for i in memchr::memchr2_iter(b'\r', b'\n', input) {
        let canonical = match input[i] {
            b'\r' => input.get(i + 1) == Some(&b'\n'),
            _ => i > 0 && input[i - 1] == b'\r',
        };
        if !canonical {
            bad = Some(i);
            break;
        }
    }
    let Some(first) = bad else {
        return Cow::Borrowed(input);
    };
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    while i < input.len() {
        // Copies up to the next CR or LF in one piece, then writes that line end as CRLF.
        let Some(at) = memchr::memchr2(b'\r', b'\n', &input[i..]) else {
            out.extend_from_slice(&input[i..]);
            break;
        };
        out.extend_from_slice(&input[i..i + at]);
        i += at;
        out.extend_from_slice(b"\r\n");
        i += if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
    }
    Cow::Owned(out)
}

/// One header field with its raw bytes (folded lines and the final CRLF included).
#[derive(Debug, Clone)]
pub(crate) struct Field<'a> {
    /// The field name as written.
    pub(crate) name: &'a str,
    /// The whole field: `Name: value\r\n` with any continuation lines.
    pub(crate) raw: &'a [u8],
}

impl Field<'_> {
    /// Whether the name is `name`, ignoring case.
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// A `Content-*` field: it describes the body, and moves with it into a signed or
    /// encrypted part.
    pub(crate) fn is_content(&self) -> bool {
        self.name.len() > 8 && self.name[..8].eq_ignore_ascii_case("content-")
    }

    /// The unfolded value, trimmed.
    pub(crate) fn value(&self) -> String {
        let raw = String::from_utf8_lossy(self.raw);
        let value = raw.split_once(':').map(|(_, v)| v).unwrap_or("");
        value.replace("\r\n", "").trim().to_string()
    }
}

/// A CRLF message split into header fields and body (the bytes after the empty line).
#[derive(Debug)]
pub(crate) struct Entity<'a> {
    pub(crate) fields: Vec<Field<'a>>,
    pub(crate) body: &'a [u8],
    /// The whole header block (every field, without the empty line).
    pub(crate) header: &'a [u8],
}

/// Splits a CRLF entity into its header fields and body. A message with no empty line is all
/// header and has an empty body. A header line that is neither a field nor a continuation is
/// an error.
pub(crate) fn split_entity(msg: &[u8]) -> Result<Entity<'_>, Error> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    let mut start_of_field: Option<(usize, &str)> = None;
    let body_start;
    loop {
        let line_end = find_crlf(&msg[pos..]).map(|i| pos + i + 2);
        let line_end = line_end.unwrap_or(msg.len());
        let line = &msg[pos..line_end];
        let is_end = line == b"\r\n" || line.is_empty();
        let continues = matches!(line.first(), Some(b' ' | b'\t'));
        if !continues && let Some((start, name)) = start_of_field.take() {
            fields.push(Field {
                name,
                raw: &msg[start..pos],
            });
        }
        if is_end {
            body_start = line_end;
            break;
        }
        if continues {
            if start_of_field.is_none() {
                return Err(Error::Malformed(
                    "a header continuation line without a field",
                ));
            }
        } else {
            let colon = memchr::memchr(b':', line)
                .ok_or(Error::Malformed("a header line without a colon"))?;
            let name = std::str::from_utf8(&line[..colon])
                .map_err(|_| Error::Malformed("a header field name that is not ASCII"))?;
            if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(Error::Malformed(
                    "a header field name with spaces or controls",
                ));
            }
            start_of_field = Some((pos, name));
        }
        pos = line_end;
        if pos >= msg.len() {
            if let Some((start, name)) = start_of_field.take() {
                fields.push(Field {
                    name,
                    raw: &msg[start..pos],
                });
            }
            body_start = msg.len();
            break;
        }
    }
    let header_end = fields
        .last()
        .map(|f| f.raw.as_ptr() as usize - msg.as_ptr() as usize + f.raw.len())
        .unwrap_or(0);
    Ok(Entity {
        fields,
        body: &msg[body_start.min(msg.len())..],
        header: &msg[..header_end],
    })
}

/// Splits a multipart body into its parts' exact bytes (RFC 2046 §5.1.1: the CRLF before a
/// delimiter belongs to the delimiter). A body without its close delimiter is refused: it
/// was truncated.
pub(crate) fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, Error> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut pos = 0;
    while pos <= body.len() {
        let line_end = find_crlf(&body[pos..]).map(|i| pos + i);
        let (line, next) = match line_end {
            Some(e) => (&body[pos..e], e + 2),
            None => (&body[pos..], body.len() + 1),
        };
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes()) {
            let (closing, padding) = match rest.strip_prefix(b"--") {
                Some(p) => (true, p),
                None => (false, rest),
            };
            if padding.iter().all(|b| matches!(b, b' ' | b'\t')) {
                if let Some(start) = current.take() {
                    // The part ends before the CRLF that precedes this delimiter line.
                    let end = pos.saturating_sub(2).max(start);
                    parts.push(&body[start..end]);
                }
                if closing {
                    return Ok(parts);
                }
                current = Some(next.min(body.len()));
            }
        }
        pos = next;
    }
    Err(Error::Malformed(
        "multipart body without its close delimiter (truncated?)",
    ))
}

/// A fresh boundary that occurs nowhere in `content`.
pub(crate) fn boundary<R: Rng>(rng: &mut R, content: &[u8]) -> String {
    loop {
        let bytes: [u8; 12] = rng.r#gen();
        let b = format!("op={}", data_encoding::HEXLOWER.encode(&bytes));
        if find(content, b.as_bytes()).is_none() {
            return b;
        }
    }
}

/// The Content-Type of an entity's header block: (type/subtype lower-cased, parameters with
/// lower-cased names).
pub(crate) fn content_type(header: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let mut block = header.to_vec();
    block.extend_from_slice(b"\r\n");
    let parsed = MessageParser::default().parse_headers(&block[..])?;
    let ct = parsed.headers().iter().find_map(|h| match &h.value {
        HeaderValue::ContentType(ct) if h.name.as_str().eq_ignore_ascii_case("content-type") => {
            Some(ct.clone())
        }
        _ => None,
    })?;
    let full = match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub),
        None => ct.ctype().to_string(),
    }
    .to_ascii_lowercase();
    let params = ct
        .attributes()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
        .collect();
    Some((full, params))
}

/// The first address of the header `name` (From, To, ...) in a header block, lower-cased.
pub(crate) fn addresses(header: &[u8], name: &str) -> Vec<String> {
    let mut block = header.to_vec();
    block.extend_from_slice(b"\r\n");
    let Some(parsed) = MessageParser::default().parse_headers(&block[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in parsed.headers() {
        if !h.name.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        if let HeaderValue::Address(addr) = &h.value {
            for a in addr.iter() {
                if let Some(a) = a.address() {
                    out.push(a.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

/// The parameter `name` of a parsed Content-Type.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The first position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
}

/// The first position of CRLF in `haystack` (the line scans' search: a CR search, which
/// skips whole lines at a time).
pub(crate) fn find_crlf(haystack: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\r', haystack).find(|&i| haystack.get(i + 1) == Some(&b'\n'))
}

/// Decodes a part body by its Content-Transfer-Encoding (7bit/8bit/binary as is, base64,
/// quoted-printable).
pub(crate) fn decode_transfer(fields: &[Field<'_>], body: &[u8]) -> Result<Vec<u8>, Error> {
    let cte = fields
        .iter()
        .find(|f| f.is("content-transfer-encoding"))
        .map(|f| f.value().to_ascii_lowercase());
    match cte.as_deref() {
        None | Some("7bit" | "8bit" | "binary") => Ok(body.to_vec()),
        Some("base64") => {
            let compact: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            data_encoding::BASE64
                .decode(&compact)
                .map_err(|_| Error::Malformed("a base64 part that does not decode"))
        }
        Some("quoted-printable") => Ok(
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body).ok_or(
                Error::Malformed("a quoted-printable part that does not decode"),
            )?,
        ),
        Some(_) => Err(Error::Malformed("an unknown Content-Transfer-Encoding")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_normalisation() {
        assert_eq!(&*to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(&*to_crlf(b"a\r\n\r\nb\n"), b"a\r\n\r\nb\r\n");
        assert_eq!(&*to_crlf(b"\n\r\r\n\n\r"), b"\r\n\r\n\r\n\r\n\r\n");
        assert_eq!(&*to_crlf(b""), b"");
        // Canonical input is borrowed, not copied.
        let canonical = b"From: a@b.onion\r\n\r\nbody\r\nend";
        assert!(matches!(to_crlf(canonical), Cow::Borrowed(_)));
        assert!(matches!(to_crlf(b"x\r"), Cow::Owned(_)));
        assert!(matches!(to_crlf(b"\nx"), Cow::Owned(_)));
    }

    /// The conversion as it was written first, byte by byte: the reference.
    fn to_crlf_bytewise(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn crlf_conversion_is_the_bytewise_one(
            input in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b' ']), 0..64)
        ) {
            proptest::prop_assert_eq!(&*to_crlf(&input), &to_crlf_bytewise(&input)[..]);
        }

        #[test]
        fn find_crlf_is_the_first_window(
            hay in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a']), 0..40)
        ) {
            let want = hay.windows(2).position(|w| w == b"\r\n");
            proptest::prop_assert_eq!(find_crlf(&hay), want);
        }

        #[test]
        fn find_is_the_first_window(
            hay in proptest::collection::vec(proptest::sample::select(vec![b'a', b'b']), 0..40),
            needle in proptest::collection::vec(proptest::sample::select(vec![b'a', b'b']), 1..4)
        ) {
            let want = hay.windows(needle.len()).position(|w| w == &needle[..]);
            proptest::prop_assert_eq!(find(&hay, &needle), want);
        }
    }

    #[test]
    fn entity_split_keeps_folded_fields_and_body() {
        let msg = b"From: a@b.onion\r\nSubject: one\r\n two\r\n\r\nbody\r\n";
        let e = split_entity(msg).unwrap();
        assert_eq!(e.fields.len(), 2);
        assert_eq!(e.fields[1].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(e.fields[1].value(), "one two");
        assert_eq!(e.body, b"body\r\n");
        assert_eq!(e.header, b"From: a@b.onion\r\nSubject: one\r\n two\r\n");
    }

    #[test]
    fn entity_without_body() {
        let e = split_entity(b"From: a@b.onion\r\n").unwrap();
        assert_eq!(e.fields.len(), 1);
        assert!(e.body.is_empty());
    }

    #[test]
    fn bad_header_line_is_refused() {
        assert!(matches!(
            split_entity(b"From a@b\r\n\r\nx"),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn multipart_parts_exclude_delimiter_crlf() {
        let body = b"preamble\r\n--b\r\npart one\r\n\r\n--b\r\nContent-Type: x/y\r\n\r\ntwo\r\n--b--\r\nepilogue";
        let parts = split_multipart(body, "b").unwrap();
        assert_eq!(
            parts,
            vec![&b"part one\r\n"[..], &b"Content-Type: x/y\r\n\r\ntwo"[..]]
        );
    }

    #[test]
    fn truncated_multipart_is_refused() {
        assert!(split_multipart(b"--b\r\npart\r\n--b\r\nsecond", "b").is_err());
    }

    #[test]
    fn content_type_parameters() {
        let (ct, params) = content_type(
            b"Content-Type: Multipart/Signed; micalg=pgp-sha256;\r\n boundary=\"x y\"\r\n",
        )
        .unwrap();
        assert_eq!(ct, "multipart/signed");
        assert_eq!(param(&params, "boundary"), Some("x y"));
    }
}
