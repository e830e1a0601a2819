//! The onionpost mail node: identities, SMTP in and out, a durable outbound queue, a Maildir
//! store per identity, and IMAP and submission servers for ordinary mail clients.
//!
//! Protocol sessions ([`smtp::session`], [`imap::session`]) are sans-I/O state machines; the
//! modules named `server` are thin tokio adapters around them.

pub mod config;
pub mod delivery;
pub mod fsutil;
pub mod identity;
pub mod imap;
pub mod maildir;
pub mod message;
pub mod node;
pub mod onion;
pub mod smtp;
pub mod spool;
pub mod transport;
