//! What a participant's message looks like when it leaves for the internet, and what an
//! internet message looks like when it reaches a participant. Pure.
//!
//! Outbound, the gateway trusts nothing the participant's node wrote (a node is expected to
//! have applied its own allow-list, `message::sanitize`, but a modified or buggy one might
//! not): it keeps only the fields of [`ALLOWED`], in that order, and rewrites those that can
//! name an onion:
//!
//! * `From` must name exactly the envelope sender (the identity whose signature was
//!   verified) and becomes its public address, display name kept;
//! * `To`, `Cc`, `Reply-To` keep only ordinary addresses: the identity's own onion address
//!   becomes its public one, any other onion address (another participant, or another
//!   identity of the same person) is dropped; an emptied `To` becomes
//!   `undisclosed-recipients:;`;
//! * `Message-ID`, `In-Reply-To`, `References`: an id in an onion domain moves to the
//!   gateway's domain (same local part, so replies still thread on the way back);
//! * everything else (`Received`, `User-Agent`, `X-*`, `Autocrypt`, `Onionpost-*`, any
//!   `DKIM-Signature` or `Authentication-Results`) is dropped.
//!
//! The body is not touched: what the participant wrote in it is theirs.

use mail_parser::{Addr, MessageParser};

use crate::message::sanitize::{ALLOWED, fold, from_is_only, unfold};
use crate::message::split_header;

/// Why an outbound message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrubError {
    /// The header From is not exactly the envelope sender.
    #[error("the header From must be exactly the envelope sender {0}, and only once")]
    FromMismatch(String),
}

/// Who the message is from, inside and outside.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// The identity's onion address (`name@<onion>`), the verified envelope sender.
    pub onion_address: &'a str,
    /// Its public address at the gateway (`name@gateway-domain`).
    pub public_address: &'a str,
    /// The gateway's mail domain.
    pub domain: &'a str,
}

fn is_onion_domain(address: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(_, d)| {
        d.trim_end_matches('.')
            .to_ascii_lowercase()
            .ends_with(".onion")
    })
}

/// A mailbox as written in a header: `"name" <addr>` or `<addr>`.
fn mailbox(name: Option<&str>, address: &str) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n)
            if n.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
        {
            format!("\"{n}\" <{address}>")
        }
        _ => format!("<{address}>"),
    }
}

/// The mailboxes of an address field's `value` (groups flattened).
fn addresses(name: &str, value: &[u8]) -> Vec<(Option<String>, String)> {
    let mut raw = format!("{name}: ").into_bytes();
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n\r\n");
    let Some(parsed) = MessageParser::default().parse_headers(&raw[..]) else {
        return Vec::new();
    };
    let field = match name {
        "To" => parsed.to(),
        "Cc" => parsed.cc(),
        "Reply-To" => parsed.reply_to(),
        _ => parsed.from(),
    };
    field
        .map(|a| {
            a.iter()
                .filter_map(|a: &Addr| {
                    let addr = a.address()?.trim().to_string();
                    Some((a.name().map(str::to_string), addr))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Moves ids (`<local@host>`) whose host is an onion to `domain`.
fn move_ids(value: &[u8], domain: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let mut out = String::with_capacity(text.len());
    let mut rest = &text[..];
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let id = &rest[open + 1..open + close];
        match id.rsplit_once('@') {
            Some((local, host)) if host.to_ascii_lowercase().ends_with(".onion") => {
                out.push_str(&format!("<{local}@{domain}>"));
            }
            _ => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// The message as it leaves for the internet (see the module documentation), without the
/// DKIM signature the gateway adds next.
pub fn outbound(copy: &[u8], names: &Names<'_>) -> Result<Vec<u8>, ScrubError> {
    let (fields, body) = split_header(copy);
    let mismatch = || ScrubError::FromMismatch(names.onion_address.to_string());
    let froms: Vec<_> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("from"))
        .collect();
    if froms.len() != 1 || !from_is_only(&unfold(froms[0].raw), names.onion_address) {
        return Err(mismatch());
    }
    let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut have_mid = false;
    for f in &fields {
        let Some(idx) = ALLOWED.iter().position(|a| a.eq_ignore_ascii_case(f.name)) else {
            continue;
        };
        let value = unfold(f.raw);
        let name = ALLOWED[idx];
        let value = match name {
            "From" => {
                let display = addresses("From", &value)
                    .into_iter()
                    .next()
                    .and_then(|a| a.0);
                mailbox(display.as_deref(), names.public_address).into_bytes()
            }
            "To" | "Cc" | "Reply-To" => {
                let list: Vec<String> = addresses(name, &value)
                    .into_iter()
                    .filter_map(|(n, a)| {
                        if a.eq_ignore_ascii_case(names.onion_address) {
                            Some(mailbox(n.as_deref(), names.public_address))
                        } else if is_onion_domain(&a) {
                            None
                        } else {
                            Some(mailbox(n.as_deref(), &a))
                        }
                    })
                    .collect();
                match (list.is_empty(), name) {
                    (true, "To") => b"undisclosed-recipients:;".to_vec(),
                    (true, _) => continue,
                    (false, _) => list.join(", ").into_bytes(),
                }
            }
            "Message-ID" => {
                if have_mid {
                    continue;
                }
                have_mid = true;
                move_ids(&value, names.domain)
            }
            "In-Reply-To" | "References" => move_ids(&value, names.domain),
            _ => value,
        };
        kept.push((idx, value));
    }
    let position = |name: &str| ALLOWED.iter().position(|a| *a == name).expect("listed");
    if !have_mid {
        let id = format!(
            "<{}@{}>",
            hex::encode(rand::random::<[u8; 16]>()),
            names.domain
        );
        kept.push((position("Message-ID"), id.into_bytes()));
    }
    if !kept.iter().any(|(i, _)| *i == position("Date")) {
        let date = crate::message::rfc5322_date(chrono::Utc::now());
        kept.push((position("Date"), date.into_bytes()));
    }
    kept.sort_by_key(|(idx, _)| *idx);
    let mut out = Vec::with_capacity(copy.len() + 128);
    for (idx, value) in &kept {
        fold(ALLOWED[*idx], value, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

/// Header fields an internet message loses before it reaches a participant: results of
/// checks the gateway did not make (anyone can write them), and onionpost's own fields
/// (which only participants' nodes may write).
fn dropped_inbound(name: &str) -> bool {
    name.eq_ignore_ascii_case("Authentication-Results")
        || name.len() >= 10 && name[..10].eq_ignore_ascii_case("Onionpost-")
}

/// The message as it goes on to the participant: `results` (an `Authentication-Results`
/// field, CRLF-terminated) first, then the message without the fields it may not carry.
pub fn inbound(message: &[u8], results: &str) -> Vec<u8> {
    let (fields, body) = split_header(message);
    let mut out = Vec::with_capacity(message.len() + results.len());
    out.extend_from_slice(results.as_bytes());
    for f in fields.iter().filter(|f| !dropped_inbound(f.name)) {
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "alice@aaaa.onion";

    fn names() -> Names<'static> {
        Names {
            onion_address: ME,
            public_address: "alice@gw.example",
            domain: "gw.example",
        }
    }

    #[test]
    fn outbound_copy_names_no_onion_and_keeps_the_body() {
        let copy = b"Received: from laptop.local by aaaa.onion\r\n\
            From: Alice <alice@aaaa.onion>\r\n\
            To: Bob <bob@example.com>, carol@bbbb.onion\r\n\
            Cc: alice@aaaa.onion\r\n\
            Reply-To: other@cccc.onion\r\n\
            Subject: hi\r\n\
            Date: Tue, 01 Dec 2026 20:00:00 +0000\r\n\
            Message-ID: <0123@aaaa.onion>\r\n\
            References: <x@bbbb.onion> <y@example.com>\r\n\
            User-Agent: LeakyClient/1.0\r\n\
            X-Originating-IP: 192.0.2.7\r\n\
            Autocrypt: addr=alice@aaaa.onion; keydata=AAAA\r\n\
            Onionpost-Gateway: t=1; s=00\r\n\
            \r\n\
            body with alice@aaaa.onion typed by the user\r\n";
        let out = String::from_utf8(outbound(copy, &names()).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            "From: \"Alice\" <alice@gw.example>\r\n\
             To: \"Bob\" <bob@example.com>\r\n\
             Cc: <alice@gw.example>\r\n\
             Subject: hi\r\n\
             Date: Tue, 01 Dec 2026 20:00:00 +0000\r\n\
             Message-ID: <0123@gw.example>\r\n\
             References: <x@gw.example> <y@example.com>"
        );
        assert_eq!(body, "body with alice@aaaa.onion typed by the user\r\n");
        let only_onions = b"From: alice@aaaa.onion\r\nTo: bob@bbbb.onion\r\n\r\nx\r\n";
        let out = String::from_utf8(outbound(only_onions, &names()).unwrap()).unwrap();
        assert!(out.contains("To: undisclosed-recipients:;\r\n"), "{out}");
        assert!(out.contains("Message-ID: <") && out.contains("@gw.example>\r\n"));
        assert!(out.contains("Date: "));
        assert!(!out.contains(".onion\r\n") && !out.contains("bbbb"));
    }

    #[test]
    fn outbound_from_must_be_the_verified_sender_alone() {
        for bad in [
            &b"From: mallory@aaaa.onion\r\n\r\nx\r\n"[..],
            b"From: alice@aaaa.onion, bob@example.com\r\n\r\nx\r\n",
            b"From: alice@aaaa.onion\r\nFrom: alice@aaaa.onion\r\n\r\nx\r\n",
            b"To: bob@example.com\r\n\r\nx\r\n",
        ] {
            assert_eq!(
                outbound(bad, &names()),
                Err(ScrubError::FromMismatch(ME.into())),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn inbound_results_come_first_and_forged_ones_go() {
        let m = b"Authentication-Results: gw.example; dkim=pass\r\n\
            Onionpost-Hold: 00\r\nFrom: x@example.com\r\n\r\nbody\r\n";
        let out = inbound(m, "Authentication-Results: gw.example; spf=fail\r\n");
        assert_eq!(
            out,
            b"Authentication-Results: gw.example; spf=fail\r\nFrom: x@example.com\r\n\r\nbody\r\n"
        );
    }
}
