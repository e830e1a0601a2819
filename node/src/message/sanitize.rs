//! The allow-list that every submitted message passes before it leaves the node.
//!
//! A mail client's headers say a lot about the machine it runs on: its software and version
//! (User-Agent, X-Mailer, X-Mozilla-*), the host and network (Received, X-Originating-IP, a
//! Message-ID in the host's domain), the time zone (Date), and, by their order, case and
//! folding, which client wrote them. Two identities of one person sending through the same
//! client would be linked by any of these. So the node does not filter known leaks; it keeps
//! only the fields on [`ALLOWED`], writes them in that order with canonical names, re-folds
//! their values the same way for everyone, sets Date to the submission time in UTC, and gives
//! the message a Message-ID in the identity's own onion domain unless the client already did.
//! Bcc is dropped (its recipients are in the envelope). The body is not touched.

use chrono::{DateTime, Utc};
use onionpost_proto::onion::OnionAddress;

use super::header::{rfc5322_date, split_header};
use super::new_message_id;

/// Header fields a submitted message may carry, in the order they are written out.
/// `Date` and `Message-ID` are set by the node (a client's Message-ID is kept only when it is
/// in the identity's own onion domain).
pub const ALLOWED: &[&str] = &[
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Keywords",
    "Comments",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-ID",
    "Content-Description",
    "Content-Language",
];

/// Longest header line the node writes when it re-folds a value (RFC 5322 2.1.1 "should").
const FOLD_AT: usize = 78;

/// Why a submitted message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The From header names someone other than the authenticated identity.
    #[error("From: must be the authenticated identity {0} and nobody else")]
    WrongFrom(String),
    /// More than one From field.
    #[error("a message has one From: field, this one has {0}")]
    SeveralFrom(usize),
}

/// Rewrites a message submitted by `address` (whose onion is `onion`) at time `now`; see the
/// module documentation. Adds a From field if the client wrote none.
pub fn sanitize_submission(
    msg: &[u8],
    address: &str,
    onion: &OnionAddress,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, SubmitError> {
    let (fields, body) = split_header(msg);
    let host = onion.hostname();
    let froms = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("from"))
        .count();
    if froms > 1 {
        return Err(SubmitError::SeveralFrom(froms));
    }
    // (canonical index, value) of every kept field, in submission order.
    let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut have_from = false;
    let mut have_mid = false;
    for f in &fields {
        let Some(idx) = ALLOWED.iter().position(|a| a.eq_ignore_ascii_case(f.name)) else {
            continue;
        };
        let value = unfold(f.raw);
        match ALLOWED[idx] {
            "Date" => continue,
            "Message-ID" => {
                let v = String::from_utf8_lossy(&value);
                let own = v
                    .trim_end_matches('>')
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&host));
                if !own || have_mid {
                    continue;
                }
                have_mid = true;
            }
            "From" => {
                if !from_is_only(&value, address) {
                    return Err(SubmitError::WrongFrom(address.to_string()));
                }
                have_from = true;
            }
            _ => {}
        }
        kept.push((idx, value));
    }
    let position = |name: &str| ALLOWED.iter().position(|a| *a == name).expect("listed");
    if !have_from {
        kept.push((position("From"), format!("<{address}>").into_bytes()));
    }
    kept.push((position("Date"), rfc5322_date(now).into_bytes()));
    if !have_mid {
        kept.push((position("Message-ID"), new_message_id(onion).into_bytes()));
    }
    // Stable: fields of one name keep their relative order.
    kept.sort_by_key(|(idx, _)| *idx);
    let mut out = Vec::with_capacity(msg.len() + 128);
    for (idx, value) in &kept {
        fold(ALLOWED[*idx], value, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

/// Whether a From value names exactly one mailbox, `address` (case-insensitive).
pub fn from_is_only(value: &[u8], address: &str) -> bool {
    let mut raw = b"From: ".to_vec();
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&raw[..]);
    let Some(from) = parsed.as_ref().and_then(|m| m.from()) else {
        return false;
    };
    let mut n = 0;
    for a in from.iter() {
        n += 1;
        if !a
            .address()
            .is_some_and(|x| x.trim().eq_ignore_ascii_case(address))
        {
            return false;
        }
    }
    n == 1
}

/// The value of a raw field (after the colon), unfolded (line breaks removed, the white
/// space after them kept) and trimmed.
pub fn unfold(raw: &[u8]) -> Vec<u8> {
    let colon = raw.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    let v: Vec<u8> = raw[colon..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    v.trim_ascii().to_vec()
}

/// Writes `Name: value` CRLF, folding before white space so lines stay within [`FOLD_AT`]
/// where the value allows. Unfolding the result gives back `value` exactly.
pub fn fold(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    let mut col = name.len() + 2;
    let mut rest = value;
    loop {
        if col + rest.len() <= FOLD_AT {
            out.extend_from_slice(rest);
            break;
        }
        let wsp = |(_, b): &(usize, &u8)| **b == b' ' || **b == b'\t';
        let limit = FOLD_AT.saturating_sub(col);
        let cut = rest
            .iter()
            .enumerate()
            .skip(1)
            .filter(wsp)
            .map(|(i, _)| i)
            .take_while(|&i| i <= limit)
            .last()
            .or_else(|| rest.iter().enumerate().skip(1).find(wsp).map(|(i, _)| i));
        match cut {
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[i..];
                col = 0;
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::header::{header_value, message_id};

    fn onion() -> OnionAddress {
        OnionAddress::from_public_key([9; 32])
    }

    fn names(msg: &[u8]) -> Vec<String> {
        split_header(msg)
            .0
            .iter()
            .map(|f| f.name.to_string())
            .collect()
    }

    #[test]
    fn keeps_only_allowed_fields_in_canonical_order_and_utc_now() {
        let addr = format!("alice@{}", onion().hostname());
        let msg = format!(
            "subject: hi\r\nUser-Agent: Mutt/2.2\r\nX-Mailer: x\r\nReceived: from laptop.home\r\n\
             X-Originating-IP: 10.1.2.3\r\nDate: Tue, 24 Nov 2026 17:00:00 +0200\r\n\
             X-Mozilla-Draft-Info: internal/draft; vcard=0\r\nOrganization: ACME\r\n\
             Bcc: secret@{host}\r\nTO: bob@{host}\r\nmessage-id: <123@laptop.home>\r\n\
             From: Alice <{addr}>\r\nMIME-Version: 1.0\r\n\r\nbody\r\n",
            host = onion().hostname()
        );
        let now = DateTime::parse_from_rfc2822("Wed, 25 Nov 2026 08:09:10 +0000")
            .unwrap()
            .with_timezone(&Utc);
        let out = sanitize_submission(msg.as_bytes(), &addr, &onion(), now).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        for bad in [
            "User-Agent",
            "X-Mailer",
            "Received",
            "10.1.2.3",
            "laptop",
            "Mozilla",
            "ACME",
            "secret",
            "+0200",
        ] {
            assert!(!text.contains(bad), "{bad} leaked: {text}");
        }
        assert_eq!(
            names(&out),
            [
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "MIME-Version"
            ]
        );
        assert_eq!(
            header_value(&out, "Date").as_deref(),
            Some("Wed, 25 Nov 2026 08:09:10 +0000"),
            "the submission time, not the client's"
        );
        let mid = message_id(&out).unwrap();
        assert!(mid.ends_with(&format!("@{}>", onion().hostname())), "{mid}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
    }

    #[test]
    fn refuses_other_senders() {
        let addr = format!("alice@{}", onion().hostname());
        let now = Utc::now();
        for from in [
            format!("From: bob@{}\r\n\r\nx", onion().hostname()),
            format!("From: {addr}, bob@{}\r\n\r\nx", onion().hostname()),
            "From: undisclosed-recipients:;\r\n\r\nx".to_string(),
        ] {
            assert!(
                matches!(
                    sanitize_submission(from.as_bytes(), &addr, &onion(), now),
                    Err(SubmitError::WrongFrom(_))
                ),
                "{from}"
            );
        }
        let two = format!("From: {addr}\r\nFrom: {addr}\r\n\r\nx");
        assert_eq!(
            sanitize_submission(two.as_bytes(), &addr, &onion(), now),
            Err(SubmitError::SeveralFrom(2))
        );
        let upper = format!("From: \"A\" <{}>\r\n\r\nx", addr.to_uppercase());
        assert!(sanitize_submission(upper.as_bytes(), &addr, &onion(), now).is_ok());
        let none = sanitize_submission(b"Subject: s\r\n\r\nx", &addr, &onion(), now).unwrap();
        assert_eq!(
            header_value(&none, "From").as_deref(),
            Some(&*format!("<{addr}>"))
        );
    }

    #[test]
    fn folding_is_canonical_and_lossless() {
        let words: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
        let subject = words.join(" ");
        let a = format!("Subject: {subject}\r\n\r\n");
        let b = format!("SUBJECT:   {}\r\n\r\n", words.join("\r\n "));
        let now = Utc::now();
        let addr = format!("alice@{}", onion().hostname());
        let fa = sanitize_submission(a.as_bytes(), &addr, &onion(), now).unwrap();
        let fb = sanitize_submission(b.as_bytes(), &addr, &onion(), now).unwrap();
        let subj = |m: &[u8]| {
            let (f, _) = split_header(m);
            f.iter()
                .find(|f| f.name == "Subject")
                .map(|f| f.raw.to_vec())
                .unwrap()
        };
        assert_eq!(
            subj(&fa),
            subj(&fb),
            "two clients' foldings come out the same"
        );
        for line in String::from_utf8(subj(&fa)).unwrap().split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line:?}");
        }
        assert_eq!(header_value(&fa, "Subject").unwrap(), subject);
        let parsed = mail_parser::MessageParser::default().parse(&fa).unwrap();
        assert_eq!(parsed.subject(), Some(subject.as_str()));
        // A word longer than a line is left whole.
        let long = format!("Subject: {}\r\n\r\n", "x".repeat(200));
        let fl = sanitize_submission(long.as_bytes(), &addr, &onion(), now).unwrap();
        assert_eq!(header_value(&fl, "Subject").unwrap(), "x".repeat(200));
    }
}
