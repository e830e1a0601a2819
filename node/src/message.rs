//! Message text helpers: header parsing and rewriting at submission (privacy), Message-ID
//! extraction, RFC 5322 dates in UTC, and delivery status notifications (RFC 3464).

use chrono::{DateTime, TimeZone, Utc};
use onionpost_proto::onion::OnionAddress;

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

/// Headers a mail client adds that identify the client software, the host or its network.
const CLIENT_HEADERS: [&str; 6] = [
    "user-agent",
    "x-mailer",
    "received",
    "x-originating-ip",
    "x-mimeole",
    "x-newsreader",
];

/// Why a submitted message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The From header names someone other than the authenticated identity.
    #[error("From: must be the authenticated identity {0}")]
    WrongFrom(String),
}

/// Rewrites a message submitted by a local client so that it names only the sending identity:
/// strips client-identifying headers, sets Date in UTC (+0000), and gives it a Message-ID in the
/// identity's own onion domain (a client-made one may carry the host name). Adds a From header
/// if missing; refuses a From of another address.
pub fn sanitize_submission(
    msg: &[u8],
    address: &str,
    onion: &OnionAddress,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, SubmitError> {
    let (fields, body) = split_header(msg);
    let host = onion.hostname();
    let mut out = Vec::with_capacity(msg.len() + 200);
    let mut have_from = false;
    let mut have_mid = false;
    let mut date = now;
    for f in &fields {
        let lname = f.name.to_ascii_lowercase();
        match lname.as_str() {
            n if CLIENT_HEADERS.contains(&n) => {}
            "date" => {
                if let Ok(d) = DateTime::parse_from_rfc2822(&f.value()) {
                    date = d.with_timezone(&Utc);
                }
            }
            "message-id" => {
                let v = f.value();
                let ok = v
                    .trim_end_matches('>')
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&host));
                if ok && !have_mid {
                    have_mid = true;
                    out.extend_from_slice(f.raw);
                }
            }
            "from" => {
                let v = f.value().to_ascii_lowercase();
                let addr = v
                    .rsplit_once('<')
                    .map(|(_, a)| a.trim_end_matches('>').trim().to_string())
                    .unwrap_or(v.trim().to_string());
                if addr != address.to_ascii_lowercase() {
                    return Err(SubmitError::WrongFrom(address.to_string()));
                }
                have_from = true;
                out.extend_from_slice(f.raw);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    let mut head = Vec::new();
    if !have_from {
        head.extend_from_slice(format!("From: <{address}>\r\n").as_bytes());
    }
    head.extend_from_slice(format!("Date: {}\r\n", rfc5322_date(date)).as_bytes());
    if !have_mid {
        head.extend_from_slice(format!("Message-ID: {}\r\n", new_message_id(onion)).as_bytes());
    }
    head.extend_from_slice(&out);
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(body);
    Ok(head)
}

/// A fresh random Message-ID in the identity's own onion domain.
pub fn new_message_id(onion: &OnionAddress) -> String {
    format!(
        "<{}@{}>",
        hex::encode(rand::random::<[u8; 16]>()),
        onion.hostname()
    )
}

/// One recipient that could not be reached, for a DSN.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub address: String,
    /// Enhanced status code, e.g. `5.1.1` or `4.4.7`.
    pub status: String,
    /// The remote reply or local reason.
    pub diagnostic: String,
}

/// Builds a delivery status notification (multipart/report; report-type=delivery-status,
/// RFC 3464) for the sender, with the original message's header attached.
pub fn build_dsn(
    onion: &OnionAddress,
    sender: &str,
    original: &[u8],
    failed: &[FailedRecipient],
    arrival_unix: i64,
    now: DateTime<Utc>,
) -> Vec<u8> {
    let host = onion.hostname();
    let boundary = format!("dsn-{}", hex::encode(rand::random::<[u8; 8]>()));
    let (fields, _) = split_header(original);
    let orig_subject = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("subject"))
        .map(HeaderField::value)
        .unwrap_or_default();
    let arrival = Utc.timestamp_opt(arrival_unix, 0).single().unwrap_or(now);
    let mut m = String::new();
    m += &format!("From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n");
    m += &format!("To: <{sender}>\r\n");
    m += "Subject: Undelivered Mail Returned to Sender\r\n";
    m += &format!("Date: {}\r\n", rfc5322_date(now));
    m += &format!("Message-ID: {}\r\n", new_message_id(onion));
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += &format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    );
    m += "This is a MIME-encapsulated message.\r\n\r\n";
    m += &format!("--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n");
    m += &format!(
        "Your message \"{orig_subject}\" could not be delivered to the following recipients:\r\n\r\n"
    );
    for f in failed {
        m += &format!("  <{}>: {}\r\n", f.address, f.diagnostic);
    }
    m += &format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n");
    m += &format!("Reporting-MTA: dns; {host}\r\n");
    m += &format!("Arrival-Date: {}\r\n", rfc5322_date(arrival));
    for f in failed {
        let action = "failed";
        m += &format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {}\r\n",
            f.address,
            f.status,
            f.diagnostic.replace(['\r', '\n'], " "),
            rfc5322_date(now)
        );
    }
    m += &format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    for f in &fields {
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onion() -> OnionAddress {
        OnionAddress::from_public_key([9; 32])
    }

    #[test]
    fn splits_folded_headers() {
        let msg = b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n";
        let (f, body) = split_header(msg);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].value(), "a b");
        assert_eq!(body, b"body\r\n");
        assert_eq!(header_value(msg, "from").as_deref(), Some("x"));
    }

    #[test]
    fn submission_strips_client_headers_and_uses_utc() {
        let addr = format!("alice@{}", onion().hostname());
        let msg = format!(
            "From: Alice <{addr}>\r\nUser-Agent: Mutt/2.2\r\nX-Mailer: x\r\nReceived: from laptop.home\r\n\
             X-Originating-IP: 10.1.2.3\r\nDate: Tue, 24 Nov 2026 17:00:00 +0200\r\n\
             Message-ID: <123@laptop.home>\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        let out = sanitize_submission(msg.as_bytes(), &addr, &onion(), Utc::now()).unwrap();
        let text = String::from_utf8(out).unwrap();
        for bad in ["User-Agent", "X-Mailer", "Received", "10.1.2.3", "laptop"] {
            assert!(!text.contains(bad), "{bad} leaked: {text}");
        }
        assert!(
            text.contains("Date: Tue, 24 Nov 2026 15:00:00 +0000\r\n"),
            "{text}"
        );
        let mid = message_id(text.as_bytes()).unwrap();
        assert!(mid.ends_with(&format!("@{}>", onion().hostname())), "{mid}");
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"));
        let forged = format!("From: bob@{}\r\n\r\nx", onion().hostname());
        assert!(sanitize_submission(forged.as_bytes(), &addr, &onion(), Utc::now()).is_err());
    }

    #[test]
    fn dsn_is_a_delivery_status_report() {
        let dsn = build_dsn(
            &onion(),
            "alice@x.onion",
            b"Subject: hello\r\n\r\nbody",
            &[FailedRecipient {
                address: "bob@y.onion".into(),
                status: "4.4.7".into(),
                diagnostic: "retry window expired".into(),
            }],
            0,
            Utc::now(),
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(
            text.contains(
                "Final-Recipient: rfc822; bob@y.onion\r\nAction: failed\r\nStatus: 4.4.7"
            )
        );
        assert!(text.contains("Subject: hello"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
    }
}
