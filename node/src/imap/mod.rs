//! IMAP4rev1 for local mail clients: the sans-I/O [`session`] and its tokio edge [`server`].
//! The session's commands are split by what they act on: [`mailboxes`] (the identity's
//! mailboxes), [`transfer`] (COPY, MOVE), the FETCH command (`fetch_command`, rendering in
//! [`fetch`]) and [`search`] (messages of the selected mailbox); [`utf7`] encodes mailbox
//! names.

pub mod fetch;
mod fetch_command;
pub mod mailboxes;
pub mod search;
pub mod server;
pub mod session;
pub mod transfer;
pub mod utf7;
