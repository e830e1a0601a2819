//! Message text: header parsing ([`header`]), the allow-list that outgoing mail passes
//! ([`sanitize`]), and delivery status notifications ([`dsn`]).

pub mod dsn;
pub mod header;
pub mod sanitize;

use onionpost_proto::onion::OnionAddress;

pub use dsn::{FailedRecipient, build_dsn, build_dsn_from};
pub use header::{HeaderField, header_value, message_id, rfc5322_date, split_header};
pub use sanitize::{SubmitError, sanitize_submission};

/// A fresh random Message-ID in the identity's own onion domain.
pub fn new_message_id(onion: &OnionAddress) -> String {
    format!(
        "<{}@{}>",
        hex::encode(rand::random::<[u8; 16]>()),
        onion.hostname()
    )
}

/// A message as SMTP delivers it: every line end CRLF, ending with one (what the gateway and
/// held-mail signatures cover). Pure.
pub fn as_delivered(copy: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(copy.len() + 16);
    let mut prev = 0u8;
    for &b in copy {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
