//! Delivery status notifications (RFC 3464) for mail that could not be delivered.

use chrono::{DateTime, TimeZone, Utc};
use onionpost_proto::onion::OnionAddress;

use super::header::{HeaderField, rfc5322_date, split_header};
use super::new_message_id;
use crate::smtp::reply::EnhancedCode;

/// One recipient that could not be reached, for a DSN.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub address: String,
    /// Enhanced status code, e.g. `5.1.1` or `4.4.7`.
    pub status: EnhancedCode,
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
    let from = format!("Mail Delivery System <MAILER-DAEMON@{}>", onion.hostname());
    build_dsn_from(&from, onion, sender, original, failed, arrival_unix, now)
}

/// Like [`build_dsn`], with `from` as its From field: a DSN that leaves the node (a mailbox
/// host's, for held mail that expired) comes from the reporting identity's own address, so
/// that it is signed by that identity's key.
pub fn build_dsn_from(
    from: &str,
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
    m += &format!("From: {from}\r\n");
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

    #[test]
    fn dsn_is_a_delivery_status_report() {
        let dsn = build_dsn(
            &OnionAddress::from_public_key([9; 32]),
            "alice@x.onion",
            b"Subject: hello\r\n\r\nbody",
            &[FailedRecipient {
                address: "bob@y.onion".into(),
                status: EnhancedCode([4, 4, 7]),
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
            ),
            "{text}"
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
