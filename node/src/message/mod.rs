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
