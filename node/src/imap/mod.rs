//! IMAP4rev1 for local mail clients: the sans-I/O [`session`] and its tokio edge [`server`].

pub mod fetch;
pub mod search;
pub mod server;
pub mod session;
