//! SMTP: the sans-I/O server [`session`] with its [`data`] reader, typed [`reply`] values,
//! the tokio edge [`server`], and the outbound [`client`].

pub mod client;
pub mod data;
pub mod reply;
pub mod server;
pub mod session;
