//! SMTP: the sans-I/O server [`session`], its tokio edge [`server`], and the outbound
//! [`client`].

pub mod client;
pub mod server;
pub mod session;
