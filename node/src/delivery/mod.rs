//! Delivery as explicit stages between the protocol edges and the seams.
//!
//! * [`inbound`]: session -> classify -> verify -> dedupe -> store.
//! * [`outbound`]: submission -> sanitize -> protect (sign/encrypt) -> expand (lists) ->
//!   queue; then, for each attempt, [`route`] -> transport (the [`crate::queue`] runner).
//!
//! Each stage is a pure decision function with unit tests. The stages reach the world only
//! through narrow seams: [`crate::store::MailStore`] (mailboxes),
//! [`crate::transport::Transport`] (streams to onions), [`onionpost_ledger_client::Ledger`] (verified
//! ledger reads) and [`crate::clock::Clock`].

pub mod inbound;
pub mod outbound;
pub mod route;
