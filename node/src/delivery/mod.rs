//! Delivery as explicit stages between the protocol edges and the seams.
//!
//! * [`inbound`]: session -> classify -> verify -> authenticate (end to end) -> dedupe ->
//!   store.
//! * [`outbound`]: submission -> sanitize -> expand (lists) -> queue; then, for each attempt,
//!   [`route`] -> protect (sign/encrypt, per copy, so that a key the ledger cannot vouch for
//!   now is a temporary failure of that attempt) -> transport (the [`crate::queue`] runner).
//!
//! Each stage is a pure decision function with unit tests. The stages reach the world only
//! through narrow seams: [`crate::store::MailStore`] (mailboxes),
//! [`crate::transport::Transport`] (streams to onions), [`onionpost_ledger_client::Ledger`] (verified
//! ledger reads) and [`crate::clock::Clock`].

pub mod inbound;
pub mod outbound;
pub mod route;
